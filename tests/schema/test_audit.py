"""The audit log through the real HTTP app, on SQLite and PostgreSQL: what each event records
(C-094 to C-097), `auditLogs` (filters, pages, tenancy, bad inputs) and `verifyAuditChain`."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from gateway.app import create_app
from store.db import is_sqlite
from tests.audit_view import readable_rows
from tests.conftest import (
    CLIENT_IP,
    LOGIN,
    Tenant,
    error_codes,
    gql,
    login,
    make_settings,
    make_tenant,
    running,
    sql,
)
from tests.invitations import join
from tests.store.test_audit import as_owner

COLUMNS = (
    "chain, sequence, organization_id, at, actor_type, actor_id, action, resource_type, resource_id, "
    "result, request_id, ip, user_agent, details"
)
CREATE_KEY = """mutation($input: CreateApiKeyInput!) { createApiKey(input: $input) { secret apiKey { id } } }"""
REVOKE_KEY = "mutation($id: ID!) { revokeApiKey(id: $id) { id } }"
SET_ROLE = "mutation($id: ID!, $r: String!) { updateMemberRole(membershipId: $id, role: $r) { role } }"
REMOVE = "mutation($id: ID!) { removeMember(membershipId: $id) }"
REFRESH = "mutation($t: String) { refreshToken(refreshToken: $t) { refreshToken } }"
CREATE_ROLE = "mutation($i: RoleInput!) { createRole(input: $i) { name } }"
LOGS = """query($f: AuditLogFilter, $first: Int, $after: String) {
  auditLogs(filter: $f, first: $first, after: $after) {
    edges { cursor node { id sequence at actorType actorId action resourceType resourceId result requestId ip
                          details hash previousHash } }
    pageInfo { hasNextPage endCursor }
  }
}"""
VERIFY = (
    "query($from: DateTime, $to: DateTime) "
    "{ verifyAuditChain(from: $from, to: $to) { ok checked firstBrokenSequence } }"
)


def rows(url: str, where: str = "1 = 1", **params: Any) -> list[dict[str, Any]]:
    """The entries as readers see them (their personal fields opened: tests/audit_view.py)."""
    out = []
    for entry in readable_rows(url, where, **params):
        row = {c.strip(): getattr(entry, c.strip()) for c in COLUMNS.split(",")}
        row["details"] = dict(row["details"])
        # the trace of the request that wrote it, apart from what the entry is about (docs/observability.md)
        row["trace_id"] = row["details"].pop("traceId", None)
        out.append(row)
    return out


def actions(url: str, chain: str) -> list[str]:
    return [r["action"] for r in rows(url, "chain = :c", c=chain)]


async def logs(client: httpx.AsyncClient, token: str, **variables: Any) -> dict[str, Any]:
    return (await gql(client, LOGS, variables, token=token)).json()  # type: ignore[no-any-return]


async def verified(client: httpx.AsyncClient, token: str) -> dict[str, Any]:
    body = (await gql(client, VERIFY, {}, token=token)).json()
    assert body.get("data"), body
    return body["data"]["verifyAuditChain"]  # type: ignore[no-any-return]


async def member(client: httpx.AsyncClient, database_url: str, owner: str, email: str, role: str) -> tuple[str, str]:
    """A member with `role`, invited and accepted: (membership id, access token)."""
    joined = await join(client, database_url, owner, email, role, "another long passphrase 42")
    return joined.membership_id, joined.access_token


# --- what is recorded ---------------------------------------------------------------------------


async def test_c096_login_success_carries_who_where_and_the_request(client, tenant: Tenant, database_url: str) -> None:
    r = await gql(
        client,
        LOGIN,
        {"email": tenant.email, "password": tenant.password},
        headers={"User-Agent": "audit-test/1.0", "X-Request-ID": "req-login-0001"},
    )
    assert r.json()["data"]["login"]
    [entry] = rows(database_url, "action = 'authn_login_success'")
    assert entry["chain"] == entry["organization_id"] == tenant.org_id
    assert (entry["actor_type"], entry["actor_id"], entry["result"]) == ("anonymous", tenant.user_id, "success")
    assert (entry["ip"], entry["request_id"], entry["user_agent"]) == (CLIENT_IP, "req-login-0001", "audit-test/1.0")
    assert entry["resource_type"] == "session"
    assert abs(entry["at"] - datetime.now(UTC)) < timedelta(minutes=1)
    assert r.headers["x-request-id"] == "req-login-0001"


async def test_c096_login_failure_and_lockout_one_row_each(client, tenant: Tenant, database_url: str) -> None:
    for _ in range(5):
        r = await gql(client, LOGIN, {"email": tenant.email, "password": "wrong password, long enough"})
        assert error_codes(r.json()) == ["UNAUTHENTICATED"]
    got = actions(database_url, tenant.org_id)
    assert got.count("authn_login_fail") == 5
    assert got.count("authn_login_lock") == 1
    lock = rows(database_url, "action = 'authn_login_lock'")[0]
    assert (lock["actor_id"], lock["result"], lock["ip"]) == (tenant.user_id, "denied", CLIENT_IP)
    # an unknown email has no tenant: the platform chain
    await gql(client, LOGIN, {"email": "nobody@nowhere.test", "password": "whatever it is, long"})
    [unknown] = rows(database_url, "chain = 'platform'")
    assert unknown["action"] == "authn_login_fail"
    assert unknown["organization_id"] is None
    assert unknown["details"]["reason"] == "unknown_user"


async def test_c096_refresh_and_refresh_reuse(client, tenant: Tenant, database_url: str) -> None:
    first = await login(client, tenant)
    body = (await gql(client, REFRESH, {"t": first["refreshToken"]})).json()
    assert body["data"]["refreshToken"]
    assert error_codes((await gql(client, REFRESH, {"t": first["refreshToken"]})).json()) == ["UNAUTHENTICATED"]
    got = actions(database_url, tenant.org_id)
    assert got.count("authn_token_refresh") == 1
    assert got.count("authn_token_reuse") == 1
    reuse = rows(database_url, "action = 'authn_token_reuse'")[0]
    assert (reuse["actor_id"], reuse["result"], reuse["resource_type"]) == (tenant.user_id, "denied", "session")


async def test_logout_is_recorded_with_its_commit(client, tenant: Tenant, database_url: str) -> None:
    token = (await login(client, tenant))["accessToken"]
    assert (await gql(client, "mutation { logout }", token=token)).json()["data"]["logout"] is True
    assert actions(database_url, tenant.org_id).count("authn_logout") == 1


async def test_c096_api_key_created_revoked_and_use_denied(app, tenant: Tenant, database_url: str) -> None:
    async with running(app, client_ip="203.0.113.7") as outside:
        token = (await login(outside, tenant))["accessToken"]
        body = (
            await gql(
                outside,
                CREATE_KEY,
                {"input": {"name": "ci", "scopes": ["organization:read"], "allowedIps": ["198.51.100.0/24"]}},
                token=token,
            )
        ).json()
        key_id, secret = body["data"]["createApiKey"]["apiKey"]["id"], body["data"]["createApiKey"]["secret"]
        r = await gql(outside, "{ organization { slug } }", headers={"X-API-Key": secret})
        assert r.status_code == 403
        assert (await gql(outside, REVOKE_KEY, {"id": key_id}, token=token)).json()["data"]
    got = actions(database_url, tenant.org_id)
    assert [got.count(a) for a in ("apikey_created", "apikey_use_denied", "apikey_revoked")] == [1, 1, 1]
    created, denied = (rows(database_url, "action = :a", a=a)[0] for a in ("apikey_created", "apikey_use_denied"))
    assert (created["resource_type"], created["resource_id"]) == ("api_key", key_id)
    assert created["details"]["scopes"] == ["organization:read"]
    assert (denied["actor_type"], denied["actor_id"], denied["result"], denied["ip"]) == (
        "api_key",
        key_id,
        "denied",
        "203.0.113.7",
    )
    assert secret not in json.dumps(rows(database_url), default=str)


async def test_c096_role_change_records_old_and_new(client, tenant: Tenant, database_url: str) -> None:
    owner = (await login(client, tenant))["accessToken"]
    membership_id, _ = await member(client, database_url, owner, "m@acme.test", "viewer")
    assert (await gql(client, SET_ROLE, {"id": membership_id, "r": "analyst"}, token=owner)).json()["data"]
    [change] = rows(database_url, "action = 'authz_change'")
    assert (change["actor_id"], change["resource_id"]) == (tenant.user_id, membership_id)
    assert change["details"]["changes"] == {"role": {"old": "viewer", "new": "analyst"}}
    added = rows(database_url, "action = 'member_added'")
    assert [a["details"]["role"] for a in added] == ["viewer"]


async def test_c096_cross_tenant_id_is_recorded_and_answered_like_a_missing_one(
    client, tenant: Tenant, database_url: str
) -> None:
    other = await make_tenant(database_url, slug="other", email="owner@other.test")
    owner, other_owner = (await login(client, tenant))["accessToken"], (await login(client, other))["accessToken"]
    theirs, _ = await member(client, database_url, other_owner, "x@other.test", "viewer")
    before_other = actions(database_url, other.org_id)
    foreign = (await gql(client, REMOVE, {"id": theirs}, token=owner)).json()
    missing = (await gql(client, REMOVE, {"id": "00000000-0000-4000-8000-000000000000"}, token=owner)).json()
    # identical answers, but for the cost budget each request spends
    assert foreign.pop("extensions")["cost"]["requested"] == missing.pop("extensions")["cost"]["requested"]
    assert foreign == missing
    assert error_codes(foreign) == ["NOT_FOUND"]
    [probe] = rows(database_url, "action = 'authz_cross_tenant'")
    assert (probe["chain"], probe["actor_id"], probe["resource_id"], probe["result"]) == (
        tenant.org_id,
        tenant.user_id,
        theirs,
        "denied",
    )
    # the missing id is a plain denied removal; the other tenant's chain did not move
    assert [r["result"] for r in rows(database_url, "action = 'member_removed'")] == ["denied"]
    assert actions(database_url, other.org_id) == before_other


async def test_permission_denied_is_authz_fail(client, tenant: Tenant, database_url: str) -> None:
    owner = (await login(client, tenant))["accessToken"]
    _, viewer = await member(client, database_url, owner, "v@acme.test", "viewer")
    body = (
        await gql(client, CREATE_KEY, {"input": {"name": "x", "scopes": ["organization:read"]}}, token=viewer)
    ).json()
    assert error_codes(body) == ["FORBIDDEN"]
    [denied] = rows(database_url, "action = 'authz_fail'")
    assert denied["result"] == "denied"
    assert denied["details"]["paths"] == ["createApiKey"]
    assert "apikeys:manage" in denied["details"]["requiredScopes"][0]
    assert actions(database_url, tenant.org_id).count("apikey_created") == 0


CHANGE_PASSWORD = "mutation($c: String!, $n: String!) { changePassword(currentPassword: $c, newPassword: $n) }"


async def test_a_mutation_records_its_own_action(client, tenant: Tenant, database_url: str) -> None:
    token = (await login(client, tenant))["accessToken"]
    body = (
        await gql(client, CHANGE_PASSWORD, {"c": tenant.password, "n": "a brand new passphrase 77"}, token=token)
    ).json()
    assert body["data"]["changePassword"] is True
    [entry] = rows(database_url, "action = 'authn_password_change'")
    assert (entry["result"], entry["actor_id"], entry["resource_id"], entry["details"]) == (
        "success",
        tenant.user_id,
        tenant.user_id,
        {"sessionsEnded": 0},
    )


async def test_a_service_that_records_nothing_still_leaves_an_entry(
    client,
    tenant: Tenant,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    missing_audit_entries: list[logging.LogRecord],
) -> None:
    """The safety net: a plain entry naming the field, and `audit_entry_missing` logged for the service."""
    import resolvers.auth

    async def silent(*_: Any) -> bool:
        return True

    monkeypatch.setattr(resolvers.auth, "change_password", silent)
    token = (await login(client, tenant))["accessToken"]
    body = (await gql(client, CHANGE_PASSWORD, {"c": "x", "n": "y"}, token=token)).json()
    assert body["data"]["changePassword"] is True
    [entry] = rows(database_url, "action = 'authn_password_change'")
    assert (entry["result"], entry["actor_id"], entry["details"]) == (
        "success",
        tenant.user_id,
        {"field": "changePassword"},
    )
    assert [r.field for r in missing_audit_entries] == ["changePassword"]  # type: ignore[attr-defined]
    missing_audit_entries.clear()


def test_every_mutation_names_its_action_in_the_vocabulary() -> None:
    """Each mutation root field has its action (what its service records, and the entry of a failure)."""
    from graphql import build_schema as parse_sdl

    from schema import export_sdl
    from schema.audit import FIELD_ACTIONS
    from store.audit import ACTIONS, AuditAction

    mutation = parse_sdl(export_sdl()).mutation_type
    assert mutation is not None
    assert set(mutation.fields) - set(FIELD_ACTIONS) == set()
    assert {action for action, _, _ in FIELD_ACTIONS.values()} <= ACTIONS - {AuditAction.MUTATION}


async def test_a_failed_mutation_is_recorded_and_its_change_is_not(client, tenant: Tenant, database_url: str) -> None:
    token = (await login(client, tenant))["accessToken"]
    spec = {"name": "auditor", "permissions": ["audit:read"], "inherits": ["viewer"]}
    assert (await gql(client, CREATE_ROLE, {"i": spec}, token=token)).json()["data"]
    assert error_codes((await gql(client, CREATE_ROLE, {"i": spec}, token=token)).json()) == ["CONFLICT"]
    entries = rows(database_url, "action = 'privilege_role_created'")
    assert [(e["result"], e["details"].get("errorCode")) for e in entries] == [("success", None), ("error", "CONFLICT")]
    assert sql(database_url, "SELECT count(*) FROM roles")[0][0] == 1


async def test_c097_a_mutation_whose_entry_cannot_be_written_is_rolled_back(
    client, tenant: Tenant, database_url: str
) -> None:
    token = (await login(client, tenant))["accessToken"]
    if is_sqlite(database_url):
        sql(
            database_url,
            "CREATE TRIGGER audit_sink_down BEFORE INSERT ON audit_log "
            "WHEN NEW.action = 'apikey_created' BEGIN SELECT RAISE(ABORT, 'audit sink down'); END",
        )
    else:
        sql(
            database_url,
            "CREATE FUNCTION audit_sink_down() RETURNS trigger LANGUAGE plpgsql AS "
            "$$BEGIN IF NEW.action = 'apikey_created' THEN RAISE EXCEPTION 'audit sink down'; END IF; "
            "RETURN NEW; END$$",
        )
        sql(
            database_url,
            "CREATE TRIGGER audit_sink_down BEFORE INSERT ON audit_log FOR EACH ROW EXECUTE FUNCTION audit_sink_down()",
        )
    try:
        r = await gql(client, CREATE_KEY, {"input": {"name": "ci", "scopes": ["organization:read"]}}, token=token)
    finally:
        sql(database_url, "DROP TRIGGER audit_sink_down" + ("" if is_sqlite(database_url) else " ON audit_log"))
        if not is_sqlite(database_url):
            sql(database_url, "DROP FUNCTION audit_sink_down()")
    assert r.status_code == 500
    body = r.json()
    assert error_codes(body) == ["INTERNAL"]
    assert "sink" not in r.text
    assert sql(database_url, "SELECT count(*) FROM api_keys")[0][0] == 0
    assert (await verified(client, token))["ok"] is True


async def test_c094_injection_through_login_is_stored_escaped(client, tenant: Tenant, database_url: str) -> None:
    forged = "alice\n2026-01-01 INFO authn_login_success admin@acme.test"
    await gql(
        client,
        LOGIN,
        {"email": forged, "password": "irrelevant but long"},
        headers={"User-Agent": "\x1b[2J" + "A" * 10_000},
    )
    [entry] = rows(database_url, "chain = 'platform'")
    assert "\n" not in entry["details"]["email"]
    assert entry["details"]["email"].startswith("alice\\x0a2026")
    assert len(entry["user_agent"]) <= 256
    assert "\x1b" not in entry["user_agent"]
    owner = (await login(client, tenant))["accessToken"]
    assert (await verified(client, owner))["ok"] is True


async def test_c095_no_secret_reaches_the_audit_log_or_the_logs(
    client, tenant: Tenant, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    canary = "P@ss-123-canary"
    await gql(client, LOGIN, {"email": tenant.email, "password": canary})
    session = await login(client, tenant)
    body = (
        await gql(
            client, CREATE_KEY, {"input": {"name": "ci", "scopes": ["organization:read"]}}, token=session["accessToken"]
        )
    ).json()
    secret = body["data"]["createApiKey"]["secret"]
    await gql(client, "{ organization { slug } }", headers={"X-API-Key": secret + "x"})
    await gql(client, REFRESH, {"t": session["refreshToken"]})
    stored = json.dumps(rows(database_url), default=str)
    for value in (canary, secret, session["accessToken"], session["refreshToken"], secret.rsplit("_", 1)[-1]):
        assert value not in stored
        assert value not in caplog.text
    assert {"authn_login_fail", "authn_login_success", "apikey_created", "authn_token_refresh"} <= set(
        actions(database_url, tenant.org_id)
    )


async def test_rate_limit_refusals_are_one_row_per_key_and_minute(app, tenant: Tenant, database_url: str) -> None:
    async with running(app) as client:
        token = (await login(client, tenant))["accessToken"]
        body = (
            await gql(
                client,
                CREATE_KEY,
                {"input": {"name": "ci", "scopes": ["organization:read"], "rateLimitPerMinute": 2}},
                token=token,
            )
        ).json()
        key_id, secret = body["data"]["createApiKey"]["apiKey"]["id"], body["data"]["createApiKey"]["secret"]
        statuses = [
            (await gql(client, "{ organization { slug } }", headers={"X-API-Key": secret})).status_code
            for _ in range(6)
        ]
        assert statuses == [200, 200, 429, 429, 429, 429]
        assert rows(database_url, "action = 'excess_rate_limit_exceeded'") == []
        await app.state.rate_limit_audit.flush(everything=True)
    [entry] = rows(database_url, "action = 'excess_rate_limit_exceeded'")
    assert (entry["chain"], entry["actor_id"], entry["result"]) == (tenant.org_id, key_id, "denied")
    assert (entry["details"]["refused"], entry["details"]["key"]) == (4, f"k:{key_id}")
    assert entry["details"]["limit"] == "api-key"


# --- reading ------------------------------------------------------------------------------------


async def test_audit_logs_newest_first_in_stable_pages(client, tenant: Tenant, database_url: str) -> None:
    token = (await login(client, tenant))["accessToken"]
    for i in range(5):
        spec = {"name": f"role-{i}", "permissions": ["audit:read"], "inherits": []}
        assert (await gql(client, CREATE_ROLE, {"i": spec}, token=token)).json()["data"]
    seen: list[int] = []
    after = None
    while True:
        body = await logs(client, token, first=2, after=after)
        page = body["data"]["auditLogs"]
        seen += [e["node"]["sequence"] for e in page["edges"]]
        if not page["pageInfo"]["hasNextPage"]:
            break
        after = page["pageInfo"]["endCursor"]
    total = len(rows(database_url, "chain = :c", c=tenant.org_id))
    assert seen == list(range(total, 0, -1))
    newest = (await logs(client, token, first=1))["data"]["auditLogs"]["edges"][0]["node"]
    assert newest["at"].endswith("+00:00")
    assert len(newest["hash"]) == 64


async def test_audit_log_filters(client, tenant: Tenant, database_url: str) -> None:
    token = (await login(client, tenant))["accessToken"]
    membership_id, _ = await member(client, database_url, token, "m@acme.test", "viewer")
    await gql(client, SET_ROLE, {"id": membership_id, "r": "analyst"}, token=token)
    r = await gql(
        client,
        SET_ROLE,
        {"id": membership_id, "r": "nonexistent-role"},
        token=token,
        headers={"X-Request-ID": "req-filter-0042"},
    )
    assert error_codes(r.json())

    async def found(**f: Any) -> list[str]:
        body = await logs(client, token, f=f)
        assert body.get("data"), body
        return [e["node"]["action"] for e in body["data"]["auditLogs"]["edges"]]

    assert await found(action="authz_change") == ["authz_change", "authz_change"]
    assert await found(action="authz_change", result="error") == ["authz_change"]
    assert await found(action="authz_change", result="denied") == []
    assert await found(requestId="req-filter-0042") == ["authz_change"]
    assert set(await found(resourceType="membership", resourceId=membership_id)) == {"member_added", "authz_change"}
    assert "authn_invitation_accepted" in await found(
        actorId=rows(database_url, "action = 'authn_invitation_accepted'")[0]["actor_id"]
    )
    now = datetime.now(UTC)
    assert await found(**{"from": (now - timedelta(hours=1)).isoformat(), "action": "member_added"}) == ["member_added"]
    assert await found(**{"to": (now - timedelta(hours=1)).isoformat()}) == []


async def test_each_tenant_reads_its_own_log_only(client, tenant: Tenant, database_url: str) -> None:
    other = await make_tenant(database_url, slug="other", email="owner@other.test")
    mine, theirs = (await login(client, tenant))["accessToken"], (await login(client, other))["accessToken"]
    ids = {e["node"]["actorId"] for e in (await logs(client, mine))["data"]["auditLogs"]["edges"]}
    assert ids == {tenant.user_id}
    ids = {e["node"]["actorId"] for e in (await logs(client, theirs))["data"]["auditLogs"]["edges"]}
    assert ids == {other.user_id}


async def test_analyst_reads_viewer_does_not_and_verify_needs_audit_verify(
    client, database_url, tenant: Tenant
) -> None:
    owner = (await login(client, tenant))["accessToken"]
    _, analyst = await member(client, database_url, owner, "a@acme.test", "analyst")
    _, viewer = await member(client, database_url, owner, "v@acme.test", "viewer")
    assert (await logs(client, analyst))["data"]["auditLogs"]["edges"]
    assert error_codes(await logs(client, viewer)) == ["FORBIDDEN"]
    assert error_codes((await gql(client, VERIFY, {}, token=analyst)).json()) == ["FORBIDDEN"]


async def test_the_platform_operator_reads_every_tenant(client, tenant: Tenant, database_url: str) -> None:
    ops = await make_tenant(database_url, slug="ops", email="ops@ops.test", role="platform")
    other = await make_tenant(database_url, slug="other", email="owner@other.test")
    await login(client, other)
    token = (await login(client, ops))["accessToken"]
    await login(client, tenant)
    body = await logs(client, token, f={"action": "authn_login_success"})
    actors = {e["node"]["actorId"] for e in body["data"]["auditLogs"]["edges"]}
    assert actors == {tenant.user_id, other.user_id, ops.user_id}
    assert (await verified(client, token))["checked"] >= 3


@pytest.mark.parametrize(
    ("variables", "field"),
    [
        ({"f": {"action": "no_such_action"}}, "filter.action"),
        ({"f": {"result": "maybe"}}, "filter.result"),
        ({"f": {"actorId": "x" * 65}}, "filter.actorId"),
        ({"f": {"requestId": "a\x00b"}}, "f.requestId"),  # C-133: refused before the operation runs
        ({"f": {"from": "2026-01-02T00:00:00Z", "to": "2026-01-01T00:00:00Z"}}, "filter.from"),
        ({"first": -1}, "first"),
        ({"first": 0}, "first"),
        ({"first": 201}, "first"),
        ({"after": "not-a-cursor"}, "after"),
        ({"after": "MjAyNi0wMS0wMVQwMDowMDowMC4wMDAwMDBafA"}, "after"),
        ({"after": "x" * 500}, "after"),
    ],
)
async def test_bad_audit_log_inputs(client, tenant: Tenant, variables: dict[str, Any], field: str) -> None:
    token = (await login(client, tenant))["accessToken"]
    body = await logs(client, token, **variables)
    assert error_codes(body) == ["BAD_USER_INPUT"], body
    extensions = body["errors"][0]["extensions"]
    assert extensions.get("field", extensions.get("variable")) == field


# --- verifying ----------------------------------------------------------------------------------


async def test_verify_audit_chain_names_the_first_broken_sequence(client, tenant: Tenant, database_url: str) -> None:
    token = (await login(client, tenant))["accessToken"]
    for i in range(4):
        spec = {"name": f"r{i}", "permissions": ["audit:read"], "inherits": []}
        assert (await gql(client, CREATE_ROLE, {"i": spec}, token=token)).json()["data"]
    report = await verified(client, token)
    assert report == {"ok": True, "checked": report["checked"], "firstBrokenSequence": None}
    assert report["checked"] >= 5
    as_owner(
        database_url, "UPDATE audit_log SET resource_id = 'forged' WHERE chain = :c AND sequence = 3", c=tenant.org_id
    )
    report = await verified(client, token)
    assert (report["ok"], report["firstBrokenSequence"]) == (False, 3)
    window = (
        await gql(client, VERIFY, {"from": (datetime.now(UTC) - timedelta(hours=1)).isoformat()}, token=token)
    ).json()["data"]["verifyAuditChain"]
    assert window["firstBrokenSequence"] == 3


async def test_verify_refuses_a_reversed_range(client, tenant: Tenant) -> None:
    token = (await login(client, tenant))["accessToken"]
    body = (
        await gql(client, VERIFY, {"from": "2026-01-02T00:00:00Z", "to": "2026-01-01T00:00:00Z"}, token=token)
    ).json()
    assert error_codes(body) == ["BAD_USER_INPUT"]


async def test_rate_limit_audit_in_shared_mode_counts_across_processes(
    database_url: str, signing_key: str, redis_url: str, tenant: Tenant
) -> None:
    """Two apps (two processes' worth of state) on one Redis: one entry for the minute, all refusals counted."""
    from store.audit import AuditEvent

    settings = make_settings(database_url, signing_key, redis_url=redis_url)
    first, second = create_app(settings), create_app(settings)
    clock = [1_800_000_000.0]
    async with running(first), running(second):
        auditors = [first.state.rate_limit_audit, second.state.rate_limit_audit]
        for a in auditors:
            a.clock = lambda: clock[0]
        for i in range(7):
            event = AuditEvent(
                action="x",
                organization_id=tenant.org_id,
                actor_type="api_key",
                actor_id="k1",
                request_id=f"req-{i}",
                ip=CLIENT_IP,
            )
            await auditors[i % 2].refused(event, key="api_key:k1")
        assert [await a.flush() for a in auditors] == [0, 0]  # the minute is not over
        clock[0] += 60
        assert sum([await a.flush() for a in auditors]) == 1
    [entry] = rows(database_url, "action = 'excess_rate_limit_exceeded'")
    assert entry["details"]["refused"] == 7
    assert entry["request_id"] == "req-0"
