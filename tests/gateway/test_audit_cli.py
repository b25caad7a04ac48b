"""`portcullis audit verify|checkpoint` and `portcullis migrate` with a separate owner role (C-089 to C-092)."""

from __future__ import annotations

import asyncio
import json
import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway import cli
from gateway.app import create_app
from identity.tokens import generate_private_key_pem
from store.models import new_id
from tests.conftest import LOGIN, _fresh_postgres_database, gql, make_settings, make_tenant, running, sql
from tests.store.test_audit import as_owner, event, write


@dataclass(frozen=True)
class OwnedDatabase:
    owner: str
    app_role: str
    owner_url: str
    app_url: str


def owned_database(postgres_admin_url: str) -> OwnedDatabase:
    """A fresh PostgreSQL database owned by a new role, with a second role for the application (which
    migrations grant only what it may do): the deployment docs/deployment.md describes."""
    url = _fresh_postgres_database(postgres_admin_url)
    suffix = new_id()[:8]
    owner, app_role = f"owner_{suffix}", f"app_{suffix}"
    base, _, name = url.rpartition("/")
    host = base.split("@", 1)[1]
    for statement in (
        f'CREATE ROLE "{owner}" LOGIN',
        f'CREATE ROLE "{app_role}" LOGIN',
        f'ALTER DATABASE "{name}" OWNER TO "{owner}"',
        f'ALTER SCHEMA public OWNER TO "{owner}"',
    ):
        sql(url, statement)
    return OwnedDatabase(
        owner, app_role, f"postgresql+psycopg://{owner}@{host}/{name}", f"postgresql+psycopg://{app_role}@{host}/{name}"
    )


async def run(args: list[str]) -> int:
    """The command in a thread of its own, as from a shell: it runs its own event loop."""
    return await asyncio.to_thread(cli.main, args)


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, database_url: str) -> pytest.MonkeyPatch:
    for name in list(os.environ):
        if name.startswith("PORTCULLIS_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PORTCULLIS_DATABASE_URL", database_url)
    monkeypatch.setenv("PORTCULLIS_ENV", "dev")
    return monkeypatch


async def test_verify_passes_then_names_the_edited_entry(env, database_url: str, capsys) -> None:
    org = new_id()
    await write(database_url, *(event(org) for _ in range(5)), event(None, "authn_login_fail"))
    assert await run(["audit", "verify"]) == 0
    out = capsys.readouterr().out
    assert "ok: 6 entries in 2 chain(s)" in out
    as_owner(database_url, "UPDATE audit_log SET actor_id = 'someone-else' WHERE chain = :c AND sequence = 2", c=org)
    assert await run(["audit", "verify"]) == 1
    out = capsys.readouterr().out
    assert f"{org}: 5 entries, head 5: BROKEN at sequence 2" in out
    assert await run(["audit", "verify", "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert (report["ok"], report["firstBrokenSequence"]) == (False, 2)


async def test_c091_a_deleted_row_is_a_gap(env, database_url: str, capsys) -> None:
    org = new_id()
    await write(database_url, *(event(org) for _ in range(5)))
    as_owner(database_url, "DELETE FROM audit_log WHERE chain = :c AND sequence = 3", c=org)
    assert await run(["audit", "verify"]) == 1
    out = capsys.readouterr().out
    assert "BROKEN at sequence 3" in out
    assert "sequence gap: 3..3 missing before 4" in out
    assert "sequence 4: previous_hash does not match" in out


async def test_c092_truncation_is_found_against_a_checkpoint(env, database_url: str, tmp_path: Path, capsys) -> None:
    org = new_id()
    await write(database_url, *(event(org) for _ in range(15)))
    points = tmp_path / "checkpoints"
    points.mkdir()
    assert await run(["audit", "checkpoint", "--out", str(points)]) == 0
    written = sorted(points.glob("audit-checkpoint-*.json"))
    assert len(written) == 1
    assert json.loads(written[0].read_text())["heads"][0]["sequence"] == 15
    as_owner(database_url, "DELETE FROM audit_log WHERE chain = :c AND sequence > 5", c=org)
    head = sql(database_url, "SELECT hash FROM audit_log WHERE chain = :c AND sequence = 5", c=org)[0][0]
    as_owner(database_url, "UPDATE audit_chain_heads SET sequence = 5, hash = :h WHERE chain = :c", h=head, c=org)
    capsys.readouterr()
    # without a checkpoint, the shortened chain is consistent: nothing to see
    assert await run(["audit", "verify"]) == 0
    assert await run(["audit", "verify", "--checkpoint", str(points)]) == 1
    out = capsys.readouterr().out
    assert "chain ends at 5 but the checkpoint records sequence 15" in out
    assert "BROKEN at sequence 6" in out


async def test_a_checkpoint_directory_ending_in_a_slash_is_made_when_missing(
    env, database_url: str, tmp_path: Path
) -> None:
    """`--out dir/` never writes a file named `dir`: the directory is made and the checkpoint lands in it."""
    await write(database_url, event(new_id()))
    points = tmp_path / "not-yet" / "checkpoints"
    assert await run(["audit", "checkpoint", "--out", f"{points}/"]) == 0
    assert len(list(points.glob("audit-checkpoint-*.json"))) == 1
    assert await run(["audit", "verify", "--checkpoint", f"{points}/"]) == 0


async def test_a_forged_or_foreign_checkpoint_is_refused(env, database_url: str, tmp_path: Path, capsys) -> None:
    org = new_id()
    await write(database_url, *(event(org) for _ in range(3)))
    path = tmp_path / "cp.json"
    assert await run(["audit", "checkpoint", "--out", str(path)]) == 0
    document = json.loads(path.read_text())
    document["heads"][0]["sequence"] = 1  # the readable copy is not what counts
    path.write_text(json.dumps(document))
    assert await run(["audit", "verify", "--checkpoint", str(path)]) == 0
    document["signature"] = document["signature"][:-8] + "AAAAAAAA"
    path.write_text(json.dumps(document))
    assert await run(["audit", "verify", "--checkpoint", str(path)]) == 2
    assert "not a valid signed checkpoint" in capsys.readouterr().err
    env.setenv("PORTCULLIS_SIGNING_KEY", generate_private_key_pem())
    assert await run(["audit", "checkpoint", "--out", str(path)]) == 0
    env.delenv("PORTCULLIS_SIGNING_KEY")
    assert await run(["audit", "verify", "--checkpoint", str(path)]) == 2
    path.write_text("not json")
    assert await run(["audit", "verify", "--checkpoint", str(path)]) == 2


async def test_no_checkpoint_of_a_broken_chain(env, database_url: str, tmp_path: Path, capsys) -> None:
    org = new_id()
    await write(database_url, *(event(org) for _ in range(3)))
    as_owner(database_url, "UPDATE audit_log SET action = 'x' WHERE chain = :c AND sequence = 1", c=org)
    assert await run(["audit", "checkpoint", "--out", str(tmp_path / "cp.json")]) == 1
    assert "does not verify" in capsys.readouterr().err
    assert not (tmp_path / "cp.json").exists()


async def test_migrate_as_owner_and_run_as_the_app_role(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, postgres_admin_url: str, signing_key: str, capsys
) -> None:
    """The owner migrates; the application's role runs the gateway and cannot change the audit log (C-089)."""
    roles = owned_database(postgres_admin_url)
    owner, app_role, owner_url, app_url = roles.owner, roles.app_role, roles.owner_url, roles.app_url
    for var in list(os.environ):
        if var.startswith("PORTCULLIS_"):
            monkeypatch.delenv(var)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PORTCULLIS_DATABASE_URL", app_url)
    monkeypatch.setenv("PORTCULLIS_MIGRATION_DATABASE_URL", owner_url)
    assert await run(["migrate"]) == 0
    assert f"privileges granted to {app_role}" in capsys.readouterr().out
    tenant = await make_tenant(app_url, slug="roles")
    app = create_app(make_settings(app_url, signing_key))
    async with running(app) as client:
        body = (await gql(client, LOGIN, {"email": tenant.email, "password": tenant.password})).json()
        assert body["data"]["login"]["accessToken"]
    assert sql(app_url, "SELECT count(*) FROM audit_log WHERE action = 'authn_login_success'") == [(1,)]
    with pytest.raises(Exception) as caught:
        sql(app_url, "UPDATE audit_log SET action = 'x'")
    assert caught.value.orig.sqlstate == "42501"  # type: ignore[attr-defined]
    assert sql(owner_url, "SELECT tableowner FROM pg_tables WHERE tablename = 'audit_log'") == [(owner,)]
    monkeypatch.setenv("PORTCULLIS_DATABASE_URL", app_url)
    assert await run(["audit", "verify"]) == 0
