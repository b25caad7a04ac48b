"""The `portcullis` commands act through the service functions as the platform operator: every option they
take reaches the service, each change leaves one audit entry naming the operator (`details.source: cli`),
and a key revoked from the command line is refused by running gateway processes within a second, in
embedded mode (SQLite, no bus between processes) and in shared mode (Redis), its rotation's previous
secret too (C-118)."""

from __future__ import annotations

import asyncio
import getpass
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway import cli
from gateway.app import create_app
from tests.conftest import (
    Tenant,
    _truncate,
    gql,
    login,
    make_settings,
    make_tenant,
    refused_within,
    running,
    sql,
)
from tests.gateway import test_cli
from tests.gateway.test_shared_mode import gateway_env, gateway_processes
from tests.schema.test_api_keys import ORG, ROTATE, with_key

env = test_cli.env  # the command sees the test database and nothing from the surroundings


async def run(*args: str) -> int:
    return await asyncio.to_thread(cli.main, list(args))


def created_key(out: str) -> tuple[str, str]:
    """(id, secret) from what `portcullis api-key create` printed."""
    lines = out.strip().splitlines()
    return lines[0].split()[2], lines[1]


def entries(url: str, action: str) -> list[dict[str, Any]]:
    found = sql(
        url,
        "SELECT chain, actor_type, actor_id, resource_id, request_id, details FROM audit_log "
        "WHERE action = :a ORDER BY at, sequence",
        a=action,
    )
    keys = ("chain", "actor_type", "actor_id", "resource_id", "request_id", "details")
    out = [dict(zip(keys, row, strict=True)) for row in found]
    for entry in out:
        if isinstance(entry["details"], str):
            entry["details"] = json.loads(entry["details"])
    return out


# -- the options reach the service ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "scopes",
    [
        ["--scope", "organization:read", "--scope", "quotas:read"],
        ["--scope", "organization:read", "quotas:read"],
    ],
    ids=["repeated", "listed"],
)
async def test_every_scope_given_is_stored(env, database_url: str, capsys, scopes: list[str]) -> None:
    await make_tenant(database_url, slug="cli", email="owner@cli.test")
    assert await run("api-key", "create", "--org", "cli", "--name", "deploy", *scopes) == 0
    key_id, _ = created_key(capsys.readouterr().out)
    [(stored,)] = sql(database_url, "SELECT scopes FROM api_keys WHERE id = :k", k=key_id)
    assert sorted(json.loads(stored) if isinstance(stored, str) else stored) == ["organization:read", "quotas:read"]


async def test_bad_input_is_refused_by_the_service_and_nothing_is_written(env, database_url: str, capsys) -> None:
    await make_tenant(database_url, slug="cli", email="owner@cli.test")
    for argv, needle in [
        (["--scope", "nope:read"], "Unknown permission"),
        (["--scope", "platform:audit:read"], "cannot be granted"),
        (["--scope", "organization:read", "--allowed-ip", "not-an-ip"], "allowedIps"),
        (["--scope", "organization:read", "--expires-at", "2001-01-01T00:00:00"], "expiresAt"),
        (["--scope", "organization:read", "--expires-at", "tomorrow"], "ISO 8601"),
    ]:
        assert await run("api-key", "create", "--org", "cli", "--name", "x", *argv) == 2, argv
        captured = capsys.readouterr()
        assert needle in captured.err
        assert "Traceback" not in captured.err
    assert sql(database_url, "SELECT count(*) FROM api_keys") == [(0,)]
    assert sql(database_url, "SELECT count(*) FROM audit_log WHERE action = 'apikey_created'") == [(0,)]
    assert await run("api-key", "create", "--org", "nope", "--name", "x", "--scope", "organization:read") == 1
    assert "no organization 'nope'" in capsys.readouterr().err


# -- one entry per change, naming the operator ----------------------------------------------------------


async def test_c096_each_command_records_one_entry_with_the_operator_as_actor(env, database_url: str, capsys) -> None:
    tenant = await make_tenant(database_url, slug="cli", email="owner@cli.test")
    assert await run("api-key", "create", "--org", "cli", "--name", "deploy", "--scope", "organization:read") == 0
    key_id, _ = created_key(capsys.readouterr().out)
    assert await run("api-key", "list", "--org", "cli") == 0
    assert await run("api-key", "revoke", "--org", "cli", key_id) == 0
    assert await run("org", "limits", "cli") == 0
    assert await run("org", "limits", "cli", "--set", "MEMBERS=7") == 0
    assert await run("bootstrap", "--org", "new", "--name", "New", "--admin-email", "owner@new.test") == 0
    assert await run("domains", "assign", "cli.test", "--org", "cli") == 0
    capsys.readouterr()
    operator = getpass.getuser()
    new_org = sql(database_url, "SELECT id FROM organizations WHERE slug = 'new'")[0][0]
    expected = {
        "apikey_created": (tenant.org_id, key_id),
        "apikey_revoked": (tenant.org_id, key_id),
        "org_updated": (tenant.org_id, tenant.org_id),
        "org_created": (new_org, new_org),
        "domain_claimed": ("platform", "cli.test"),
    }
    for action, (chain, resource) in expected.items():
        [entry] = entries(database_url, action)
        assert (entry["chain"], entry["resource_id"]) == (chain, resource), action
        assert (entry["actor_type"], entry["actor_id"]) == ("system", operator), action
        assert entry["details"]["source"] == "cli", action
        assert entry["request_id"], action
    [limits] = entries(database_url, "org_updated")
    assert limits["details"]["changes"] == {"limitOverrides": {"old": {}, "new": {"MEMBERS": 7}}}
    # reading (the list, the limits shown) records nothing
    counted = sql(
        database_url, "SELECT action, count(*) FROM audit_log WHERE chain = :c GROUP BY action", c=tenant.org_id
    )
    assert sorted(counted) == [("apikey_created", 1), ("apikey_revoked", 1), ("org_updated", 1)]


async def test_c128_the_operator_changes_a_plan_within_the_parents_and_the_change_is_recorded(
    env, database_url: str, capsys
) -> None:
    parent = await make_tenant(database_url, slug="mom", email="owner@mom.test", plan="professional")
    child = await make_tenant(database_url, slug="kid", email="owner@kid.test", plan="free", parent_id=parent.org_id)

    def plans() -> dict[str, str]:
        return dict(sql(database_url, "SELECT slug, plan FROM organizations WHERE slug IN ('mom', 'kid')"))

    # above the parent's plan: refused, nothing written
    assert await run("org", "plan", "kid", "ENTERPRISE") == 2
    assert "parent" in capsys.readouterr().err
    assert plans() == {"mom": "professional", "kid": "free"}
    assert entries(database_url, "plan_changed") == []
    assert await run("org", "plan", "nobody", "free") == 1

    assert await run("org", "plan", "kid", "starter") == 0
    assert "plan starter" in capsys.readouterr().out
    [entry] = entries(database_url, "plan_changed")
    assert (entry["chain"], entry["resource_id"]) == (child.org_id, child.org_id)
    assert (entry["actor_type"], entry["actor_id"]) == ("system", getpass.getuser())
    assert entry["details"]["source"] == "cli"
    assert entry["details"]["changes"] == {"plan": {"old": "free", "new": "starter"}}

    # lowering the parent lowers the child that is above it
    assert await run("org", "plan", "mom", "free") == 0
    assert plans() == {"mom": "free", "kid": "free"}
    assert len(entries(database_url, "plan_changed")) == 3  # the parent's, and the child's as it was lowered


async def test_c118_a_revoke_from_the_command_line_ends_the_rotation_previous_secret_too(
    env, database_url: str, signing_key: str, capsys
) -> None:
    tenant = await make_tenant(database_url, slug="cli", email="owner@cli.test")
    assert await run("api-key", "create", "--org", "cli", "--name", "deploy", "--scope", "organization:read") == 0
    key_id, old = created_key(capsys.readouterr().out)
    app = create_app(make_settings(database_url, signing_key, env="dev"))
    async with running(app) as client:
        token = (await login(client, tenant))["accessToken"]
        rotated = (await gql(client, ROTATE, {"id": key_id, "g": 3600}, token=token)).json()
        new = rotated["data"]["rotateApiKey"]["secret"]
        for secret in (old, new):
            assert (await gql(client, ORG, headers=with_key(secret))).status_code == 200
        assert await run("api-key", "revoke", "--org", "cli", key_id) == 0
        await refused_within(lambda: both(client, new, old))
    assert sql(database_url, "SELECT previous_secret_hash, previous_expires_at FROM api_keys") == [(None, None)]


# -- refused by running gateway processes within a second -----------------------------------------------


@pytest.fixture(params=["embedded", pytest.param("shared", marks=[pytest.mark.postgres, pytest.mark.redis])])
def gateway_mode(
    request: pytest.FixtureRequest, signing_key: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Iterator[tuple[str, dict[str, str]]]:
    """A database (and, shared, Redis) for a gateway process and the commands: the database's URL and the
    gateway's environment; the commands see the same settings."""
    if request.param == "embedded":
        url: str = request.getfixturevalue("sqlite_url")
        gateway = gateway_env(url, "", signing_key)
        del gateway["PORTCULLIS_REDIS_URL"]
    else:
        url = request.getfixturevalue("postgresql_url")
        gateway = gateway_env(url, request.getfixturevalue("redis_url"), signing_key)
    for name in list(os.environ):
        if name.startswith("PORTCULLIS_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    for name, value in gateway.items():
        if name.startswith("PORTCULLIS_"):
            monkeypatch.setenv(name, value)
    try:
        yield url, gateway
    finally:
        _truncate(url)


@pytest.mark.slow
async def test_c118_a_key_revoked_from_the_command_line_is_refused_by_a_running_gateway_within_a_second(
    gateway_mode: tuple[str, dict[str, str]], tmp_path: Path, capsys
) -> None:
    """Embedded mode has no bus between the command and the gateway: the gateway reads a cached key again
    within half a second. Shared mode: the command announces the revocation on Redis, as a gateway does."""
    url, gateway = gateway_mode
    tenant: Tenant = await make_tenant(url, slug="ops", email="owner@ops.test")
    assert await run("api-key", "create", "--org", "ops", "--name", "deploy", "--scope", "organization:read") == 0
    key_id, old = created_key(capsys.readouterr().out)
    with gateway_processes(1, gateway, tmp_path) as [base]:
        async with httpx.AsyncClient(base_url=base) as client:
            token = (await login(client, tenant))["accessToken"]
            rotated = (await gql(client, ROTATE, {"id": key_id, "g": 3600}, token=token)).json()
            new = rotated["data"]["rotateApiKey"]["secret"]
            for secret in (old, new, old, new):  # the second answers come from the gateway's cache
                assert (await gql(client, ORG, headers=with_key(secret))).status_code == 200
            assert await run("api-key", "revoke", "--org", "ops", key_id) == 0
            # both secrets, polled together from the moment the command returned
            await refused_within(lambda: both(client, new, old))
    assert sql(url, "SELECT count(*) FROM audit_log WHERE action = 'apikey_revoked'") == [(1,)]


async def both(client: httpx.AsyncClient, *secrets: str) -> httpx.Response:
    """One answer for several keys: the first accepted one's, or (every key refused) the last 401."""
    answers = await asyncio.gather(*(gql(client, ORG, headers=with_key(s)) for s in secrets))
    return next((r for r in answers if r.status_code != 401), answers[-1])
