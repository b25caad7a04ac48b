"""A person's rights of access and erasure: `exportMyData`, `eraseAccount`, `portcullis data export|erase`
(docs/privacy.md), and the audit chain that keeps verifying after an erasure (C-144)."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlmodel import SQLModel

from gateway import cli
from gateway.app import create_app
from resolvers.personal_data import BY_TABLE, NOT_PERSONAL, REGISTRY
from tests.audit_view import readable_rows
from tests.conftest import Tenant, error_codes, gql, login, make_settings, running, sql
from tests.invitations import join
from tests.mail import last_mail, mails_to
from tests.schema.test_fresh_auth import signed_in_ago

EXPORT = "mutation { exportMyData { id url createdAt expiresAt digest } }"
ERASE = "mutation { eraseAccount }"
VERIFY = "{ verifyAuditChain { ok checked firstBrokenSequence } }"
ME = "{ me { user { id email } } }"
REFRESH = "mutation($r: String!) { refreshToken(refreshToken: $r) { accessToken } }"
CREATE_KEY = """mutation { createApiKey(input: {name: "erin's key", scopes: ["organization:read"]}) { secret } }"""
GENERATE = """mutation($kind: ReportKind!, $from: DateTime!, $to: DateTime!) {
  generateReport(kind: $kind, from: $from, to: $to) { id } }"""
LOGIN = "mutation($e: String!, $p: String!) { login(email: $e, password: $p) { accessToken } }"

ERIN = "Erin.Quill@Acme.test"
ERIN_NAME = "Erin Quillfeather"
ERIN_IP = "198.51.100.23"
ERIN_PASSWORD = "erin's own long passphrase"


def test_every_table_has_an_entry_in_the_registry() -> None:
    """A table added to the metadata without saying what it holds about a person fails here: export and
    erasure read the one registry (resolvers/personal_data.py)."""
    tables = set(SQLModel.metadata.tables)
    registered = set(BY_TABLE)
    assert len(registered) == len(REGISTRY), "a table is registered twice"
    assert not registered & set(NOT_PERSONAL), "a table is both personal and not"
    missing = tables - registered - set(NOT_PERSONAL)
    assert not missing, f"tables without an entry in resolvers/personal_data.py: {sorted(missing)}"
    assert not (registered | set(NOT_PERSONAL)) - tables, "the registry names a table that does not exist"
    for entry in REGISTRY:
        columns = set(SQLModel.metadata.tables[entry.table].columns.keys())
        assert set(entry.export) <= columns, entry.table
        assert not {c for c in entry.export if "hash" in c or "secret" in c or c == "key"}, entry.table


def person_client(app: Any, ip: str = ERIN_IP) -> httpx.AsyncClient:
    """A client at its own address, on the app already running (its lifespan is the fixture's)."""
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app, client=(ip, 40000)), base_url="http://testserver")


@pytest.fixture
async def erin(app: Any, client: httpx.AsyncClient) -> AsyncIterator[httpx.AsyncClient]:
    async with person_client(app) as c:
        yield c


async def join_as_erin(client: httpx.AsyncClient, erin: httpx.AsyncClient, database_url: str, tenant: Tenant) -> Any:
    owner = (await login(client, tenant))["accessToken"]
    joined = await join(erin, database_url, owner, ERIN, "admin", ERIN_PASSWORD)
    return owner, joined


async def test_export_is_a_download_for_that_person_only(
    app: Any, client: httpx.AsyncClient, erin: httpx.AsyncClient, database_url: str, tenant: Tenant
) -> None:
    """C-144 (right of access): the export holds the person's rows (never a secret), is mailed, audited, and
    downloadable only with the person's own credential until it expires: another person, no credential or
    an expired link are refused."""
    owner, joined = await join_as_erin(client, erin, database_url, tenant)
    body = (await gql(erin, EXPORT, token=joined.access_token)).json()
    export = body["data"]["exportMyData"]
    assert export["url"].endswith(f"/exports/{export['id']}.json")
    path = "/exports/" + export["url"].rpartition("/exports/")[2]
    mail = await last_mail(database_url, ERIN, "data_export_ready")
    assert path in mail.text
    r = await erin.get(path, headers={"Authorization": f"Bearer {joined.access_token}"})
    assert r.status_code == 200, r.text
    document = r.json()
    tables = document["tables"]
    assert tables["users"][0]["email"] == ERIN
    assert {m["role"] for m in tables["memberships"]} == {"admin"}
    assert any(s["client_ip"] == ERIN_IP for s in tables["auth_sessions"])
    assert any(e["action"] == "authn_invitation_accepted" for e in tables["audit_log"])
    assert "password_hash" not in r.text
    assert "token_hash" not in r.text
    assert sql(database_url, "SELECT count(*) FROM audit_log WHERE action = 'data_exported'") == [(1,)]
    # another person, no credential, a made-up id: refused alike
    assert (await client.get(path, headers={"Authorization": f"Bearer {owner}"})).status_code == 404
    assert (await erin.get(path)).status_code == 401
    assert (
        await erin.get("/exports/nope.json", headers={"Authorization": f"Bearer {joined.access_token}"})
    ).status_code == 404
    # expired: refused
    sql(database_url, "UPDATE data_exports SET expires_at = :t", t=datetime.now(UTC) - timedelta(seconds=1))
    assert (await erin.get(path, headers={"Authorization": f"Bearer {joined.access_token}"})).status_code == 404


async def test_an_export_twice_within_a_minute_is_rate_limited(
    client: httpx.AsyncClient, database_url: str, tenant: Tenant
) -> None:
    """C-144: one export a minute per person; the second is 429 RATE_LIMITED with retryAfter, nothing written."""
    token = (await login(client, tenant))["accessToken"]
    assert (await gql(client, EXPORT, token=token)).json()["data"]["exportMyData"]["id"]
    r = await gql(client, EXPORT, token=token)
    body = r.json()
    assert r.status_code == 429, body
    assert error_codes(body) == ["RATE_LIMITED"]
    assert 0 < body["errors"][0]["extensions"]["retryAfter"] <= 60
    assert int(r.headers["retry-after"]) > 0
    assert sql(database_url, "SELECT count(*) FROM data_exports") == [(1,)]
    assert len(await mails_to(database_url, tenant.email, "data_export_ready")) == 1


# what a refused request writes all the same: its audit entry (and the keys sealing it), the usage counters
NOT_COMPARED = ("audit_log", "audit_chain_heads", "subject_keys", "usage_daily")


def snapshot(url: str) -> dict[str, list[str]]:
    """Every row of every table but `NOT_COMPARED`, as text (sorted): what "nothing written" compares."""
    out = {}
    for table in sorted(SQLModel.metadata.tables):
        if table not in NOT_COMPARED:
            out[table] = sorted(repr(tuple(r)) for r in sql(url, f'SELECT * FROM "{table}"'))
    return out


async def test_the_last_owner_is_refused_with_the_way_out(
    client: httpx.AsyncClient, database_url: str, tenant: Tenant
) -> None:
    """C-144: the only owner of an organization cannot erase the account: CONFLICT naming the organizations and
    the way out (transfer ownership or delete the organization), and nothing written."""
    token = (await login(client, tenant))["accessToken"]
    before = snapshot(database_url)
    body = (await gql(client, ERASE, token=token)).json()
    assert error_codes(body) == ["CONFLICT"], body
    error = body["errors"][0]
    assert "transfer ownership" in error["message"]
    assert error["extensions"]["organizations"] == [{"id": tenant.org_id, "slug": "acme", "name": "Acme"}]
    assert "delete the organization" in error["extensions"]["resolution"]
    assert snapshot(database_url) == before
    assert sql(database_url, "SELECT count(*) FROM audit_log WHERE action = 'account_erased'") == [(0,)]
    # the refusal itself is recorded
    assert sql(database_url, "SELECT count(*) FROM audit_log WHERE action = 'account_erasure_refused'") == [(1,)]
    assert (await gql(client, ME, token=token)).json()["data"]["me"]["user"]["email"] == tenant.email


async def test_erasure_without_a_fresh_sign_in_writes_nothing(
    database_url: str, signing_key: str, tenant: Tenant
) -> None:
    """C-142 and C-144 for `eraseAccount`: fresh authentication is required even where the policy sets no window
    (access tokens that live an hour, so that one signed in 20 minutes ago is still valid)."""
    app = create_app(make_settings(database_url, signing_key, access_token_ttl_seconds=3600))
    async with running(app) as client, person_client(app) as erin:
        owner = (await login(client, tenant))["accessToken"]
        await join(erin, database_url, owner, ERIN, "viewer", ERIN_PASSWORD)
        with signed_in_ago(app, 20 * 60):
            old = (await gql(erin, LOGIN, {"e": ERIN, "p": ERIN_PASSWORD})).json()["data"]["login"]["accessToken"]
        before = snapshot(database_url)
        r = await gql(erin, ERASE, token=old)
    assert r.status_code == 403
    assert error_codes(r.json()) == ["FRESH_AUTH_REQUIRED"]
    assert r.json()["errors"][0]["extensions"]["maxAgeMinutes"] == 15
    assert snapshot(database_url) == before


async def run_cli(args: list[str]) -> int:
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


def found_anywhere(url: str, needles: list[str]) -> list[tuple[str, str]]:
    """(table, needle) for every table whose rows hold a needle anywhere, in any column, case-insensitively."""
    hits = []
    for table in sorted(SQLModel.metadata.tables):
        text = "\n".join(repr(tuple(r)) for r in sql(url, f'SELECT * FROM "{table}"')).casefold()
        hits += [(table, n) for n in needles if n.casefold() in text]
    return hits


async def test_c144_after_erasure_no_table_holds_the_person_and_the_chain_verifies(
    app: Any,
    client: httpx.AsyncClient,
    erin: httpx.AsyncClient,
    database_url: str,
    tenant: Tenant,
    env: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    owner, joined = await join_as_erin(client, erin, database_url, tenant)
    sql(database_url, "UPDATE users SET name = :n WHERE id = :u", n=ERIN_NAME, u=joined.user_id)
    bad = await gql(erin, LOGIN, {"e": ERIN.lower(), "p": "not erin's password at all"})
    assert error_codes(bad.json()) == ["UNAUTHENTICATED"]
    token = (await gql(erin, LOGIN, {"e": ERIN, "p": ERIN_PASSWORD})).json()["data"]["login"]["accessToken"]
    key = (await gql(erin, CREATE_KEY, token=token)).json()["data"]["createApiKey"]["secret"]
    assert (await gql(erin, EXPORT, token=token)).json()["data"]["exportMyData"]
    now = datetime.now(UTC)
    span = {"from": (now - timedelta(days=1)).isoformat(), "to": (now + timedelta(minutes=1)).isoformat()}
    for kind in ("ACCESS", "SECURITY"):
        assert (await gql(client, GENERATE, {"kind": kind, **span}, token=owner)).json()["data"], kind
    needles = [ERIN, ERIN_NAME, ERIN_IP]
    assert {n for _, n in found_anywhere(database_url, needles)} == set(needles)  # the scan finds them before
    # readers see the sealed fields while the person's keys exist
    mine = [e for e in readable_rows(database_url) if e.actor_id == joined.user_id]
    assert any(e.ip == ERIN_IP for e in mine)
    checkpoint = tmp_path / "checkpoint.json"
    assert await run_cli(["audit", "checkpoint", "--out", str(checkpoint)]) == 0

    r = await gql(erin, ERASE, token=token)
    assert r.json()["data"] == {"eraseAccount": True}, r.json()

    assert found_anywhere(database_url, needles) == []
    # the chain and the signed checkpoint still verify
    verified = (await gql(client, VERIFY, token=owner)).json()["data"]["verifyAuditChain"]
    assert verified["ok"], verified
    assert verified["firstBrokenSequence"] is None
    assert await run_cli(["audit", "verify", "--checkpoint", str(checkpoint)]) == 0
    # the person's entries read as erased
    mine = [e for e in readable_rows(database_url) if e.actor_id == joined.user_id]
    assert mine
    assert all(e.ip is None for e in mine)
    assert any(e.erased for e in mine)
    # the old credentials are refused: access token, refresh token, API key
    assert (await gql(erin, ME, token=token)).status_code == 401
    assert error_codes((await gql(erin, REFRESH, {"r": joined.refresh_token})).json()) == ["UNAUTHENTICATED"]
    assert (
        await erin.post("/graphql", json={"query": "{ permissions }"}, headers={"X-API-Key": key})
    ).status_code == 401
    assert error_codes((await gql(erin, LOGIN, {"e": ERIN, "p": ERIN_PASSWORD})).json()) == ["UNAUTHENTICATED"]
    assert sql(database_url, "SELECT count(*) FROM audit_log WHERE action = 'account_erased'") == [(1,)]


async def test_the_operator_exports_and_erases_by_email(
    client: httpx.AsyncClient,
    erin: httpx.AsyncClient,
    database_url: str,
    tenant: Tenant,
    env: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    await join_as_erin(client, erin, database_url, tenant)
    out = tmp_path / "sar.json"
    assert await run_cli(["data", "export", "--email", ERIN.upper(), "--out", str(out)]) == 0
    assert json.loads(out.read_text())["tables"]["users"][0]["email"] == ERIN
    assert oct(out.stat().st_mode & 0o777) == "0o600"
    # the only owner is refused, with the way out
    assert await run_cli(["data", "erase", "--email", tenant.email]) == 1
    assert await run_cli(["data", "erase", "--email", ERIN]) == 0
    assert found_anywhere(database_url, [ERIN]) == []
    assert await run_cli(["data", "erase", "--email", ERIN]) == 1  # nothing left to erase
    actors = sql(database_url, "SELECT actor_type, details FROM audit_log WHERE action = 'account_erased'")
    assert [a for a, _ in actors] == ["system"]
