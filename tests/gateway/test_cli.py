"""The `portcullis` command, run in-process against the test databases."""

from __future__ import annotations

import asyncio
import getpass
import json
import os
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, func, select, text

from gateway import cli
from gateway.app import create_app
from store.db import install_sqlite_pragmas, is_sqlite, sync_url
from store.models import Membership, Organization, User
from tests.conftest import FAST_HASH, LOGIN, error_codes, gql, make_settings, refused_within, running
from tests.invitations import accept
from tests.mail import last_mail, token_in

LOGIN_ORG = (
    "mutation($e: String!, $p: String!, $o: String) "
    "{ login(email: $e, password: $p, organization: $o) { accessToken } }"
)


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, database_url: str) -> pytest.MonkeyPatch:
    """The command sees the test database, cheap password hashing, and nothing from the surroundings."""
    for name in list(os.environ):
        if name.startswith("PORTCULLIS_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PORTCULLIS_DATABASE_URL", database_url)
    monkeypatch.setenv("PORTCULLIS_ENV", "dev")
    monkeypatch.setenv("PORTCULLIS_PASSWORD_HASH_MEMORY_KIB", str(FAST_HASH.memory_kib))
    monkeypatch.setenv("PORTCULLIS_PASSWORD_HASH_TIME_COST", str(FAST_HASH.time_cost))
    return monkeypatch


def rows(url: str, statement: Any) -> list[Any]:
    engine = create_engine(sync_url(url))
    if is_sqlite(url):
        install_sqlite_pragmas(engine)
    try:
        with engine.connect() as conn:
            return list(conn.execute(statement).all())
    finally:
        engine.dispose()


def counts(url: str) -> tuple[int, int, int]:
    return tuple(  # type: ignore[return-value]
        rows(url, select(func.count()).select_from(m))[0][0] for m in (Organization, User, Membership)
    )


BOOTSTRAP = ["bootstrap", "--org", "x", "--name", "X", "--plan", "starter", "--admin-email", "a@x.test"]


# -- seed-demo ----------------------------------------------------------------------------------------


def test_seed_demo_is_idempotent(env, database_url: str, capsys) -> None:
    assert cli.main(["seed-demo"]) == 0
    first = capsys.readouterr().out
    assert "demo tenant acme created" in first
    assert counts(database_url) == (1, 1, 1)
    assert cli.main(["seed-demo"]) == 0
    assert "already exists" in capsys.readouterr().out
    assert counts(database_url) == (1, 1, 1)
    [(slug, plan)] = rows(database_url, select(Organization.slug, Organization.plan))
    assert (slug, plan) == ("acme", "professional")
    [(role,)] = rows(database_url, select(Membership.role))
    assert role == "owner"


@pytest.mark.parametrize("environment", ["test", "prod"])
def test_seed_demo_refused_outside_dev(env, database_url: str, capsys, environment: str, signing_key: str) -> None:
    env.setenv("PORTCULLIS_ENV", environment)
    if environment == "prod":
        env.setenv("PORTCULLIS_SIGNING_KEY", signing_key)
        env.setenv("PORTCULLIS_API_KEY_PEPPER", "p" * 40)
        env.setenv("PORTCULLIS_COOKIE_SECRET", "c" * 40)
        env.setenv("PORTCULLIS_DATA_ENCRYPTION_KEY", "d" * 40)
    assert cli.main(["seed-demo"]) != 0
    assert "PORTCULLIS_ENV=dev" in capsys.readouterr().err
    assert counts(database_url) == (0, 0, 0)


async def test_seeded_demo_owner_signs_in(env, database_url: str, signing_key: str, capsys) -> None:
    assert await asyncio.to_thread(cli.main, ["seed-demo"]) == 0
    async with running(create_app(make_settings(database_url, signing_key))) as client:
        r = await gql(client, LOGIN, {"email": cli.DEMO_OWNER, "password": cli.DEMO_PASSWORD})
    assert r.json()["data"]["login"]["organization"]["slug"] == "acme"


# -- bootstrap ----------------------------------------------------------------------------------------


async def test_bootstrap_prints_a_one_time_password(env, database_url: str, signing_key: str, capsys) -> None:
    # the command runs its own event loop, so it runs beside the test's
    assert await asyncio.to_thread(cli.main, BOOTSTRAP) == 0
    out = capsys.readouterr().out
    assert "organization x created (plan starter)" in out
    password = out.strip().splitlines()[-1]
    assert len(password) >= 20
    assert " " not in password

    [(stored,)] = rows(database_url, select(User.password_hash))
    assert stored.startswith("$argon2id$")
    assert password not in stored
    # the clear password is nowhere in the database
    for table in ("organizations", "users", "memberships"):
        for row in rows(database_url, text(f'SELECT * FROM "{table}"')):
            assert password not in " ".join(map(str, row)), table

    async with running(create_app(make_settings(database_url, signing_key))) as client:
        r = await gql(client, LOGIN, {"email": "a@x.test", "password": password})
        auth = r.json()["data"]["login"]
        assert auth["organization"]["slug"] == "x"
        me = await gql(client, "{ me { role organization { plan } } }", token=auth["accessToken"])
        assert me.json()["data"]["me"] == {"role": "owner", "organization": {"plan": "STARTER"}}
        wrong = await gql(client, LOGIN, {"email": "a@x.test", "password": password + "x"})
        assert error_codes(wrong.json()) == ["UNAUTHENTICATED"]


def test_bootstrap_passwords_differ(env, database_url: str, capsys) -> None:
    assert cli.main(BOOTSTRAP) == 0
    first = capsys.readouterr().out.strip().splitlines()[-1]
    assert cli.main(["bootstrap", "--org", "y", "--name", "Y", "--admin-email", "b@y.test"]) == 0
    second = capsys.readouterr().out.strip().splitlines()[-1]
    assert first != second


def test_bootstrap_of_an_existing_slug_fails_cleanly(env, database_url: str, capsys) -> None:
    assert cli.main(BOOTSTRAP) == 0
    capsys.readouterr()
    before = counts(database_url)
    code = cli.main(["bootstrap", "--org", "x", "--name", "Other", "--plan", "free", "--admin-email", "other@x.test"])
    assert code != 0
    captured = capsys.readouterr()
    assert "already exists" in captured.err
    assert "Traceback" not in captured.err
    assert captured.out == ""
    assert counts(database_url) == before


async def test_c124_bootstrap_for_an_existing_account_only_invites_it(
    env, database_url: str, signing_key: str, capsys
) -> None:
    """The account is invited as the owner and becomes it only when its holder accepts; the command prints
    the invitation link, never a password, and whoever ran an earlier tenant gains nothing."""
    assert await asyncio.to_thread(cli.main, BOOTSTRAP) == 0
    holder_password = capsys.readouterr().out.strip().splitlines()[-1]
    [(before,)] = rows(database_url, select(User.password_hash))
    assert (
        await asyncio.to_thread(
            cli.main, ["bootstrap", "--org", "second", "--name", "Second", "--admin-email", "A@X.test"]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "invited as the owner" in out
    link = out.strip().splitlines()[-1]
    assert "/invitations/accept#token=pti_" in link
    [(after,)] = rows(database_url, select(User.password_hash))
    assert after == before
    # the second organization exists, with no member yet
    assert counts(database_url) == (2, 1, 1)
    mail = await last_mail(database_url, "a@x.test", "invitation")
    assert token_in(mail) == link.rsplit("#token=", 1)[1]
    async with running(create_app(make_settings(database_url, signing_key))) as client:
        body = (await gql(client, LOGIN_ORG, {"e": "a@x.test", "p": holder_password, "o": "second"})).json()
        assert error_codes(body) == ["UNAUTHENTICATED"]
        joined = (await accept(client, token_in(mail), holder_password)).json()["data"]["acceptInvitation"]
        assert joined["organization"]["slug"] == "second"
        me = await gql(client, "{ me { role } }", token=joined["accessToken"])
        assert me.json()["data"]["me"]["role"] == "owner"
    entries = rows(database_url, text("SELECT action, actor_type FROM audit_log ORDER BY at, sequence"))
    assert ("member_invited", "system") in [tuple(e) for e in entries]


def test_bootstrap_writes_audit_entries(env, database_url: str, capsys) -> None:
    """The operator who ran the command is their actor, `details.source` says where it ran."""
    assert cli.main(BOOTSTRAP) == 0
    entries = rows(database_url, text("SELECT action, actor_type, actor_id, details FROM audit_log"))
    operator = getpass.getuser()
    assert sorted((a, t, i) for a, t, i, _ in entries) == [
        ("member_added", "system", operator),
        ("org_created", "system", operator),
        ("user_created", "system", operator),
    ]
    assert {(json.loads(d) if isinstance(d, str) else d)["source"] for *_, d in entries} == {"cli"}


async def test_domains_are_reassigned_by_the_operator(env, database_url: str, capsys) -> None:
    assert await asyncio.to_thread(cli.main, BOOTSTRAP) == 0
    assert (
        await asyncio.to_thread(cli.main, ["bootstrap", "--org", "y", "--name", "Y", "--admin-email", "b@y.test"]) == 0
    )
    capsys.readouterr()
    assert await asyncio.to_thread(cli.main, ["domains", "assign", "Example.COM", "--org", "x"]) == 0
    assert await asyncio.to_thread(cli.main, ["domains", "assign", "example.com", "--org", "y"]) == 0
    capsys.readouterr()
    assert await asyncio.to_thread(cli.main, ["domains", "list"]) == 0
    assert capsys.readouterr().out.split() == ["example.com", "y"]
    assert await asyncio.to_thread(cli.main, ["domains", "release", "example.com"]) == 0
    capsys.readouterr()
    assert await asyncio.to_thread(cli.main, ["domains", "list"]) == 0
    assert capsys.readouterr().out == ""
    assert await asyncio.to_thread(cli.main, ["domains", "assign", "gmail.com", "--org", "x"]) == 2
    assert await asyncio.to_thread(cli.main, ["domains", "assign", "x.test", "--org", "nope"]) == 2
    assert await asyncio.to_thread(cli.main, ["domains", "assign", "not a domain", "--org", "x"]) == 2


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--org", "Bad Slug", "--admin-email", "a@x.test"], "slug"),
        (["--org=-x", "--admin-email", "a@x.test"], "slug"),
        (["--org", "x" * 64, "--admin-email", "a@x.test"], "slug"),
        (["--org", "x", "--admin-email", "not-an-email"], "email"),
        (["--org", "x", "--admin-email", "a@b@c"], "email"),
        (["--org", "x", "--admin-email", "a b@x.test"], "email"),
    ],
)
def test_bootstrap_refuses_bad_input(env, database_url: str, capsys, args: list[str], needle: str) -> None:
    code = cli.main(["bootstrap", "--name", "X", *args])
    assert code != 0
    captured = capsys.readouterr()
    assert needle in captured.err
    assert "Traceback" not in captured.err
    assert captured.out == ""
    assert counts(database_url) == (0, 0, 0)


def test_bootstrap_refuses_an_unknown_plan(env, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["bootstrap", "--org", "x", "--name", "X", "--plan", "gold", "--admin-email", "a@x.test"])
    assert exc.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_bootstrap_refuses_insecure_prod(env, database_url: str) -> None:
    env.setenv("PORTCULLIS_ENV", "prod")
    with pytest.raises(SystemExit) as exc:
        cli.main(BOOTSTRAP)
    assert "refusing to start in prod" in str(exc.value.code)
    assert counts(database_url) == (0, 0, 0)


# -- other commands -----------------------------------------------------------------------------------


def test_schema_command(capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    from schema import export_sdl

    assert cli.main(["schema"]) == 0
    out = capsys.readouterr().out
    assert out == export_sdl()
    assert "type Query" in out
    assert "directive @authenticated" in out


def test_keys_generate(capsys) -> None:
    from identity.tokens import KeyRing

    assert cli.main(["keys", "generate"]) == 0
    pem = capsys.readouterr().out
    assert pem.startswith("-----BEGIN PRIVATE KEY-----")
    assert KeyRing(pem).current.signer is not None


def test_unknown_command(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["frobnicate"])
    assert exc.value.code == 2


async def test_api_key_create_list_revoke(env, database_url: str, signing_key: str, capsys) -> None:
    from tests.conftest import make_tenant

    await make_tenant(database_url, slug="cli", email="owner@cli.test")
    created = [
        "api-key",
        "create",
        "--org",
        "cli",
        "--name",
        "deploy",
        "--scope",
        "organization:read",
        "--allowed-ip",
        "127.0.0.1/32",
    ]
    assert await asyncio.to_thread(cli.main, created) == 0
    lines = capsys.readouterr().out.splitlines()
    key_id, secret = lines[0].split()[2], lines[1]
    assert secret.startswith("ptc_dev_")
    assert await asyncio.to_thread(cli.main, ["api-key", "list", "--org", "cli"]) == 0
    listed = capsys.readouterr().out
    assert key_id in listed
    assert "active" in listed
    assert secret not in listed
    app = create_app(make_settings(database_url, signing_key, env="dev"))
    async with running(app, client_ip="127.0.0.1") as client:
        assert (await gql(client, "{ organization { slug } }", headers={"X-API-Key": secret})).status_code == 200
        assert await asyncio.to_thread(cli.main, ["api-key", "revoke", "--org", "cli", key_id]) == 0
        # no bus reaches the app from the command's services: its cache reads the key again within a second
        await refused_within(lambda: gql(client, "{ organization { slug } }", headers={"X-API-Key": secret}))
    unknown = ["api-key", "create", "--org", "cli", "--name", "x", "--scope", "nope:read"]
    assert await asyncio.to_thread(cli.main, unknown) == 2
