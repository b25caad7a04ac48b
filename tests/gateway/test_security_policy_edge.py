"""The organization's security policy enforced for password sign-ins (Bearer tokens) and API keys: the address
allowlist, allowed sign-in methods with break-glass owners, idle timeout, absolute lifetime, concurrent
sessions (both actions) and refresh, in embedded mode (SQLite) and shared mode (PostgreSQL and Redis). Cookie
sessions from real identity providers: tests/gateway/oidc/test_security_policy.py and
tests/gateway/test_saml_policy.py."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

import httpx
import pytest

from gateway.settings import Settings
from tests.audit_view import readable_rows
from tests.conftest import LOGIN, Tenant, error_codes, gql, login, make_settings, sql
from tests.invitations import join
from tests.security_policy import ME, create_key, key_headers, mode_settings, set_policy

OUTSIDE = "198.51.100.9"
INSIDE = ["203.0.113.0/24"]
REFRESH = "mutation($t: String) { refreshToken(refreshToken: $t) { accessToken refreshToken } }"


@pytest.fixture
def settings(database_url: str, signing_key: str, request: pytest.FixtureRequest) -> Settings:
    return make_settings(database_url, signing_key, **mode_settings(database_url, request))


@asynccontextmanager
async def from_address(app: Any, ip: str) -> AsyncIterator[httpx.AsyncClient]:
    """Another client of the same running app, from `ip`."""
    transport = httpx.ASGITransport(app=app, client=(ip, 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        yield c


def details_of(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else json.loads(value)  # type: ignore[no-any-return]


def denials(url: str, action: str) -> list[tuple[str, dict[str, Any], str | None]]:
    # as readers see them (personal fields opened: tests/audit_view.py)
    return [(e.actor_type, details_of(e.details), e.ip) for e in readable_rows(url, "action = :a", a=action)]


class Clock:
    """The authenticator's and the services' clock, moved on by hand."""

    def __init__(self, app: Any) -> None:
        self.offset = 0.0
        app.state.services.authenticator.clock = self
        app.state.services.clock = self

    def __call__(self) -> float:
        return time.time() + self.offset

    def advance(self, minutes: float) -> None:
        self.offset += minutes * 60


# -- address allowlist ----------------------------------------------------------------------------------


async def test_allowlist_refuses_a_bearer_session_and_a_sign_in_from_outside(
    app, client, database_url, tenant: Tenant
) -> None:
    auth = await login(client, tenant)
    await set_policy(client, auth["accessToken"], ipAllowlist=INSIDE)
    assert (await gql(client, ME, token=auth["accessToken"])).status_code == 200
    async with from_address(app, OUTSIDE) as outside:
        r = await gql(outside, ME, token=auth["accessToken"])
        assert r.status_code == 403
        assert error_codes(r.json()) == ["FORBIDDEN"]
        assert r.json()["errors"][0]["message"] == "address not allowed by the organization's policy"
        # signing in from there: the answer of a wrong password
        signed = (await gql(outside, LOGIN, {"email": tenant.email, "password": tenant.password})).json()
        assert error_codes(signed) == ["UNAUTHENTICATED"]
        assert signed["errors"][0]["message"] == "Invalid credentials."
        # a refresh from there ends the session
        refreshed = (await gql(outside, REFRESH, {"t": auth["refreshToken"]})).json()
        assert error_codes(refreshed) == ["UNAUTHENTICATED"]
    assert (await gql(client, ME, token=auth["accessToken"])).status_code == 401
    [(actor_type, details, ip)] = denials(database_url, "session_use_denied")
    assert (actor_type, details["reason"], ip) == ("user", "address outside the organization's allowlist", OUTSIDE)
    fails = [d["reason"] for _, d, _ in denials(database_url, "authn_login_fail")]
    assert fails == ["address_not_allowed"]
    # and the organization's security people are told (a sign_in_refused event)
    events = sql(
        database_url, "SELECT subject_id, details, client_ip FROM security_events WHERE kind = 'sign_in_refused'"
    )
    assert [(s, details_of(d), ip) for s, d, ip in events] == [
        (tenant.user_id, {"reason": "address_not_allowed", "method": "password"}, OUTSIDE)
    ]
    revoked = sql(database_url, "SELECT revoked_reason FROM auth_sessions WHERE revoked_at IS NOT NULL")
    assert [r[0] for r in revoked] == ["address_not_allowed"]


async def test_allowlist_applies_to_api_keys_inside_their_own(app, client, database_url, tenant: Tenant) -> None:
    token = (await login(client, tenant))["accessToken"]
    wide = (await create_key(client, token))["data"]["createApiKey"]["secret"]
    own = (await create_key(client, token, allowedIps=["198.51.100.0/24"]))["data"]["createApiKey"]["secret"]
    await set_policy(client, token, ipAllowlist=INSIDE)
    assert (await gql(client, "{ organization { id } }", headers=key_headers(wide))).status_code == 200
    async with from_address(app, OUTSIDE) as outside:
        for secret in (wide, own):
            r = await gql(outside, "{ organization { id } }", headers=key_headers(secret))
            assert r.status_code == 403
            assert r.json()["errors"][0]["message"] == "address not allowed by the organization's policy"
    # inside the organization's list but outside the key's own: the key's refusal
    r = await gql(client, "{ organization { id } }", headers=key_headers(own))
    assert r.status_code == 403
    assert r.json()["errors"][0]["message"] == "This API key is not allowed from this address."
    reasons = sorted((t, d["reason"]) for t, d, _ in denials(database_url, "apikey_use_denied"))
    assert reasons == [
        ("api_key", "address outside the key's allowlist"),
        ("api_key", "address outside the organization's allowlist"),
        ("api_key", "address outside the organization's allowlist"),
    ]


# -- sign-in methods ----------------------------------------------------------------------------------


async def test_sso_only_refuses_passwords_but_for_break_glass_owners(app, client, database_url, tenant: Tenant) -> None:
    owner = (await login(client, tenant))["accessToken"]
    admin = await join(client, database_url, owner, "admin@acme.test", "admin", "a long enough password 1")
    await set_policy(client, owner, allowedSignInMethods=["SSO", "API_KEY"], breakGlassOwners=[tenant.user_id])
    # the admin's open password session is refused, and so is a new password sign-in
    r = await gql(client, ME, token=admin.access_token)
    assert r.status_code == 403
    assert r.json()["errors"][0]["message"] == "sign-in method not allowed by the organization's policy"
    refused = (await gql(client, LOGIN, {"email": "admin@acme.test", "password": "a long enough password 1"})).json()
    assert error_codes(refused) == ["UNAUTHENTICATED"]
    assert refused["errors"][0]["message"] == "Invalid credentials."
    # the break-glass owner still signs in with a password, and the session works
    again = await login(client, tenant)
    assert (await gql(client, ME, token=again["accessToken"])).json()["data"]["me"]["authMethod"] == "password"
    assert [d["reason"] for _, d, _ in denials(database_url, "authn_login_fail")] == ["method_not_allowed"]
    assert [d["reason"] for _, d, _ in denials(database_url, "session_use_denied")] == [
        "sign-in method password not allowed by the organization"
    ]


async def test_api_keys_refused_when_the_policy_leaves_them_out(app, client, database_url, tenant: Tenant) -> None:
    token = (await login(client, tenant))["accessToken"]
    secret = (await create_key(client, token))["data"]["createApiKey"]["secret"]
    assert (await gql(client, "{ organization { id } }", headers=key_headers(secret))).status_code == 200
    await set_policy(client, token, allowedSignInMethods=["PASSWORD", "SSO"])
    r = await gql(client, "{ organization { id } }", headers=key_headers(secret))
    assert r.status_code == 403
    assert error_codes(r.json()) == ["FORBIDDEN"]
    assert r.json()["errors"][0]["message"] == "sign-in method not allowed by the organization's policy"
    await set_policy(client, token, allowedSignInMethods=["PASSWORD", "SSO", "API_KEY"])
    assert (await gql(client, "{ organization { id } }", headers=key_headers(secret))).status_code == 200


# -- idle timeout and lifetime ----------------------------------------------------------------------------


async def test_idle_timeout_ends_an_unused_bearer_session_but_not_a_used_one(
    app, client, database_url, tenant: Tenant
) -> None:
    clock = Clock(app)
    auth = await login(client, tenant)
    token = auth["accessToken"]
    await set_policy(client, token, sessionIdleTimeoutMinutes=10)
    clock.advance(6)
    assert (await gql(client, ME, token=token)).status_code == 200  # activity, written
    clock.advance(6)
    assert (await gql(client, ME, token=token)).status_code == 200  # 6 minutes after the last request
    clock.advance(11)
    r = await gql(client, ME, token=token)
    assert r.status_code == 401
    # its refresh token ends with it
    assert error_codes((await gql(client, REFRESH, {"t": auth["refreshToken"]})).json()) == ["UNAUTHENTICATED"]
    revoked = sql(database_url, "SELECT revoked_reason FROM auth_sessions WHERE revoked_at IS NOT NULL")
    assert [r[0] for r in revoked] == ["policy_idle"]


async def test_absolute_lifetime_shortens_new_sessions_and_ends_older_ones(
    app, client, database_url, tenant: Tenant
) -> None:
    clock = Clock(app)
    before = await login(client, tenant)
    await set_policy(client, before["accessToken"], sessionMaxLifetimeHours=1)
    after = await login(client, tenant)
    rows = sql(database_url, "SELECT created_at, expires_at FROM auth_sessions ORDER BY created_at")
    lifetimes = [(_at(r[1]) - _at(r[0])).total_seconds() for r in rows]
    assert lifetimes == [14 * 86_400, 3600]
    clock.advance(61)
    for auth in (before, after):
        assert (await gql(client, ME, token=auth["accessToken"])).status_code == 401
    assert error_codes((await gql(client, REFRESH, {"t": before["refreshToken"]})).json()) == ["UNAUTHENTICATED"]


def _at(value: Any) -> datetime:
    return value if isinstance(value, datetime) else datetime.fromisoformat(str(value))


# -- concurrent sessions ----------------------------------------------------------------------------------


async def test_end_oldest_keeps_the_newest_sessions(app, client, database_url, tenant: Tenant) -> None:
    first = await login(client, tenant)
    await set_policy(client, first["accessToken"], maxConcurrentSessions=2, concurrentSessionAction="END_OLDEST")
    second = await login(client, tenant)
    third = await login(client, tenant)
    assert (await gql(client, ME, token=first["accessToken"])).status_code == 401
    for auth in (second, third):
        assert (await gql(client, ME, token=auth["accessToken"])).status_code == 200
    assert error_codes((await gql(client, REFRESH, {"t": first["refreshToken"]})).json()) == ["UNAUTHENTICATED"]
    reasons = sql(database_url, "SELECT revoked_reason FROM auth_sessions WHERE revoked_at IS NOT NULL")
    assert [r[0] for r in reasons] == ["session_limit"]


async def test_refuse_new_refuses_the_sign_in_over_the_limit(app, client, database_url, tenant: Tenant) -> None:
    first = await login(client, tenant)
    await set_policy(client, first["accessToken"], maxConcurrentSessions=2, concurrentSessionAction="REFUSE_NEW")
    second = await login(client, tenant)
    refused = (await gql(client, LOGIN, {"email": tenant.email, "password": tenant.password})).json()
    assert error_codes(refused) == ["UNAUTHENTICATED"]
    assert refused["errors"][0]["message"] == "Invalid credentials."
    for auth in (first, second):
        assert (await gql(client, ME, token=auth["accessToken"])).status_code == 200
    assert [d["reason"] for _, d, _ in denials(database_url, "authn_login_fail")] == ["session_limit"]
    # signing out of one makes room
    assert (await gql(client, "mutation { logout }", token=first["accessToken"])).json()["data"]["logout"]
    assert (await login(client, tenant))["accessToken"]
    assert int(sql(database_url, "SELECT count(*) FROM auth_sessions WHERE revoked_at IS NULL")[0][0]) == 2


async def test_no_policy_means_no_write_on_a_bearer_request(app, client, database_url, tenant: Tenant) -> None:
    """Without an idle timeout a Bearer request writes nothing: last activity stays the sign-in's."""
    clock = Clock(app)
    token = (await login(client, tenant))["accessToken"]
    [(seen,)] = sql(database_url, "SELECT last_seen_at FROM auth_sessions")
    clock.advance(5)
    assert (await gql(client, ME, token=token)).status_code == 200
    assert sql(database_url, "SELECT last_seen_at FROM auth_sessions")[0][0] == seen
