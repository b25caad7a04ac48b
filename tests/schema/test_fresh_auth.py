"""Fresh authentication (C-142): under `freshAuthMinutes`, a sensitive mutation with a sign-in older than the
window answers FRESH_AUTH_REQUIRED (403) and writes nothing; a fresh sign-in or `reauthenticate` passes; a
refresh keeps the original `auth_time`; cookie sessions and API keys."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from strawberry.utils.str_converters import to_camel_case

from identity.browser_sessions import CSRF_HEADER, SESSION_COOKIE
from identity.sessions import create_browser_session
from schema import Mutation
from schema.fresh_auth import SENSITIVE_MUTATIONS
from store.db import Database
from tests.conftest import Tenant, error_codes, gql, login, make_tenant, sql
from tests.invitations import accept, invitation_token, invite
from tests.policy_rows import set_policy

CREATE_KEY = """mutation($n: String!, $s: [String!]!) {
  createApiKey(input: {name: $n, scopes: $s}) { secret apiKey { id } }
}"""
CREATE_ROLE = 'mutation { createRole(input: {name: "auditor", permissions: ["audit:read"]}) { name } }'
REFRESH = "mutation($r: String!) { refreshToken(refreshToken: $r) { accessToken refreshToken } }"
REAUTH = "mutation($p: String!) { reauthenticate(password: $p) { accessToken expiresAt authTime } }"
UPDATE_ORG = 'mutation { updateOrganization(input: {name: "Acme Renamed"}) { name } }'


def count(database_url: str, table: str) -> int:
    [(n,)] = sql(database_url, f"SELECT count(*) FROM {table}")
    return int(n)


@contextmanager
def signed_in_ago(app: Any, seconds: float) -> Iterator[None]:
    """Sign-ins inside the block happened `seconds` ago: their sessions and tokens say so (the tokens expire
    that much sooner)."""
    services = app.state.services
    services.clock = services.tokens.clock = lambda: time.time() - seconds
    try:
        yield
    finally:
        services.clock = services.tokens.clock = time.time


def fresh_auth_refusal(r: httpx.Response, minutes: int) -> None:
    body = r.json()
    assert r.status_code == 403, body
    assert error_codes(body) == ["FRESH_AUTH_REQUIRED"], body
    assert body["errors"][0]["extensions"]["maxAgeMinutes"] == minutes
    assert body["data"] is None


async def create_key(client: httpx.AsyncClient, token: str | None = None, **kw: Any) -> httpx.Response:
    return await gql(client, CREATE_KEY, {"n": "ci", "s": ["organization:read"]}, token=token, **kw)


def test_the_sensitive_mutations_are_named_by_their_fields() -> None:
    names = {f.graphql_name or to_camel_case(f.python_name) for f in Mutation.__strawberry_definition__.fields}
    # the policy's own mutation and an SSO connection's deletion are named before they exist here
    assert SENSITIVE_MUTATIONS - names <= {"updateSecurityPolicy", "deleteSsoConnection"}
    assert {"createApiKey", "updateMemberRole", "removeMember", "addMember", "disableTotp", "configureOidc"} <= (
        SENSITIVE_MUTATIONS
    )


async def test_c142_an_old_sign_in_writes_nothing(
    app: Any, client: httpx.AsyncClient, database_url: str, tenant: Tenant
) -> None:
    await set_policy(database_url, tenant.org_id, fresh_auth_minutes=5)
    with signed_in_ago(app, 6 * 60):
        old = (await login(client, tenant))["accessToken"]
    fresh_auth_refusal(await create_key(client, old), 5)
    fresh_auth_refusal(await gql(client, CREATE_ROLE, token=old), 5)
    # an alias inside a fragment is the same field
    aliased = 'mutation { ...F } fragment F on Mutation { k: createApiKey(input: {name: "x", scopes: []}) { secret } }'
    fresh_auth_refusal(await gql(client, aliased, token=old), 5)
    assert count(database_url, "api_keys") == 0
    assert count(database_url, "roles") == 0
    # what is not sensitive goes on as before
    assert (await gql(client, UPDATE_ORG, token=old)).json()["data"]["updateOrganization"]["name"] == "Acme Renamed"
    assert (await gql(client, "{ organization { slug } }", token=old)).json()["data"]["organization"]["slug"] == "acme"


async def test_a_fresh_sign_in_passes(app: Any, client: httpx.AsyncClient, database_url: str, tenant: Tenant) -> None:
    await set_policy(database_url, tenant.org_id, fresh_auth_minutes=5)
    with signed_in_ago(app, 4 * 60):
        recent = (await login(client, tenant))["accessToken"]
    assert (await create_key(client, recent)).json()["data"]["createApiKey"]["secret"]
    fresh = (await login(client, tenant))["accessToken"]
    assert (await gql(client, CREATE_ROLE, token=fresh)).json()["data"]["createRole"]["name"] == "auditor"


async def test_without_a_rule_an_old_sign_in_is_enough(app: Any, client: httpx.AsyncClient, tenant: Tenant) -> None:
    with signed_in_ago(app, 14 * 60):
        old = (await login(client, tenant))["accessToken"]
    assert (await create_key(client, old)).json()["data"]["createApiKey"]["secret"]


async def test_a_refresh_keeps_the_sign_in_time(
    app: Any, client: httpx.AsyncClient, database_url: str, tenant: Tenant
) -> None:
    await set_policy(database_url, tenant.org_id, fresh_auth_minutes=5)
    signed_in = await login(client, tenant)
    claims = app.state.services.tokens.verify(signed_in["accessToken"])
    assert abs(claims.auth_time - time.time()) < 5
    # the session was signed in to ten minutes ago; refreshing it does not make that recent
    ago = datetime.now(UTC) - timedelta(minutes=10)
    sql(database_url, "UPDATE auth_sessions SET created_at = :t WHERE id = :s", t=ago, s=claims.session_id)
    body = (await gql(client, REFRESH, {"r": signed_in["refreshToken"]})).json()
    refreshed = body["data"]["refreshToken"]
    again = app.state.services.tokens.verify(refreshed["accessToken"])
    assert again.auth_time == int(ago.timestamp())
    assert again.issued_at > again.auth_time
    fresh_auth_refusal(await create_key(client, refreshed["accessToken"]), 5)
    assert count(database_url, "api_keys") == 0


async def test_reauthenticate_makes_the_session_fresh(
    app: Any, client: httpx.AsyncClient, database_url: str, tenant: Tenant
) -> None:
    await set_policy(database_url, tenant.org_id, fresh_auth_minutes=5)
    with signed_in_ago(app, 6 * 60):
        old = await login(client, tenant)
    fresh_auth_refusal(await create_key(client, old["accessToken"]), 5)
    wrong = (await gql(client, REAUTH, {"p": "not the password at all"}, token=old["accessToken"])).json()
    assert error_codes(wrong) == ["UNAUTHENTICATED"]
    body = (await gql(client, REAUTH, {"p": tenant.password}, token=old["accessToken"])).json()
    renewed = body["data"]["reauthenticate"]
    assert (await create_key(client, renewed["accessToken"])).json()["data"]["createApiKey"]["secret"]
    # the session's refresh token now refreshes to the new sign-in time
    refreshed = (await gql(client, REFRESH, {"r": old["refreshToken"]})).json()["data"]["refreshToken"]
    assert (await create_key(client, refreshed["accessToken"])).json()["data"]["createApiKey"]["secret"]
    [(action,)] = sql(
        database_url, "SELECT count(*) FROM audit_log WHERE action = 'authn_reauthenticated' AND result = 'success'"
    )
    assert action == 1


async def _cookie_session(app: Any, database_url: str, tenant: Tenant, signed_in: datetime) -> dict[str, str]:
    db = Database(database_url)
    try:
        async with db.transaction() as session:
            row = await create_browser_session(
                session,
                user_id=tenant.user_id,
                organization_id=tenant.org_id,
                auth_method="password",
                client_ip="127.0.0.1",
                user_agent="Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0",
                lifetime_seconds=3600,
                now=datetime.now(UTC),
            )
            row.created_at = signed_in
            session.add(row)
            sid = row.id
    finally:
        await db.dispose()
    browser = app.state.services.browser
    return {"Cookie": f"{SESSION_COOKIE}={browser.cookie_value(sid)}", CSRF_HEADER: browser.csrf_token(sid)}


async def test_a_cookie_session_counts_from_its_sign_in(
    app: Any, client: httpx.AsyncClient, database_url: str, tenant: Tenant
) -> None:
    await set_policy(database_url, tenant.org_id, fresh_auth_minutes=5)
    old = await _cookie_session(app, database_url, tenant, datetime.now(UTC) - timedelta(minutes=6))
    fresh_auth_refusal(await create_key(client, headers=old), 5)
    assert count(database_url, "api_keys") == 0
    body = (await gql(client, REAUTH, {"p": tenant.password}, headers=old)).json()
    assert body["data"]["reauthenticate"]["authTime"], body
    assert (await create_key(client, headers=old)).json()["data"]["createApiKey"]["secret"]
    recent = await _cookie_session(app, database_url, tenant, datetime.now(UTC) - timedelta(minutes=1))
    assert (await create_key(client, headers=recent)).json()["data"]["createApiKey"]["secret"]


async def test_api_keys_are_refused_sensitive_mutations_under_the_rule(
    client: httpx.AsyncClient, database_url: str, tenant: Tenant
) -> None:
    token = (await login(client, tenant))["accessToken"]
    made = (
        await gql(client, CREATE_KEY, {"n": "admin", "s": ["apikeys:manage", "organization:read"]}, token=token)
    ).json()
    key = made["data"]["createApiKey"]["secret"]
    first = (await create_key(client, headers={"X-API-Key": key})).json()
    assert first["data"]["createApiKey"], first
    await set_policy(database_url, tenant.org_id, fresh_auth_minutes=60)
    fresh_auth_refusal(await create_key(client, headers={"X-API-Key": key}), 60)
    assert count(database_url, "api_keys") == 2


async def test_joining_an_organization_while_signed_in_keeps_the_sign_in_time(
    app: Any, client: httpx.AsyncClient, database_url: str, tenant: Tenant
) -> None:
    other = await make_tenant(database_url, slug="globex", email="owner@globex.test")
    await set_policy(database_url, other.org_id, fresh_auth_minutes=5)
    with signed_in_ago(app, 6 * 60):
        old = (await login(client, tenant))["accessToken"]
    await invite(client, (await login(client, other))["accessToken"], tenant.email, "admin")
    body = (
        await accept(client, await invitation_token(database_url, tenant.email), tenant.password, bearer=old)
    ).json()
    joined = body["data"]["acceptInvitation"]
    assert joined["organization"]["slug"] == "globex"
    tokens = app.state.services.tokens
    assert tokens.verify(joined["accessToken"]).auth_time == tokens.verify(old).auth_time
    fresh_auth_refusal(await create_key(client, joined["accessToken"]), 5)
