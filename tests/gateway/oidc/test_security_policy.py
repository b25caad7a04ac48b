"""The organization's security policy for cookie sessions signed in at a real node `oidc-provider`: the address
allowlist at sign-in and on every request, SSO-only and password-only organizations, the idle timeout and
lifetime (shorter than the gateway's browser defaults), and concurrent sessions."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import httpx
import pytest

from tests.conftest import LOGIN, error_codes, gql, sql
from tests.gateway.oidc.conftest import (
    GATEWAY,
    Gateway,
    api_call,
    configure_node,
    running_gateway,
    session_cookie,
    to_callback,
)
from tests.security_policy import ME, UPDATE_POLICY, mode_settings

OUTSIDE = "198.51.100.9"
INSIDE = ["203.0.113.0/24"]


@pytest.fixture
async def gw(database_url: str, signing_key: str, request: pytest.FixtureRequest) -> AsyncIterator[Gateway]:
    """Embedded mode on SQLite, shared mode (with Redis) on PostgreSQL."""
    async with running_gateway(database_url, signing_key, **mode_settings(database_url, request)) as g:
        yield g


def browser_at(gw: Gateway, ip: str) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=gw.app, client=(ip, 40000))
    return httpx.AsyncClient(mounts={GATEWAY: transport}, follow_redirects=False, timeout=20)


async def sign_in(browser: httpx.AsyncClient, login_name: str = "jdoe") -> httpx.Response:
    callback = await to_callback(browser, f"{GATEWAY}/auth/sso/acme?return_to=/app", login_name)
    return await browser.get(callback)


async def me(browser: httpx.AsyncClient) -> httpx.Response:
    return await browser.get(f"{GATEWAY}/graphql", params={"query": ME})


async def policy(gw: Gateway, **values: Any) -> None:
    body = await api_call(gw, UPDATE_POLICY, {"input": values}, token=gw.owner_token)
    assert (body.get("data") or {}).get("updateSecurityPolicy"), body


def sso_failures(url: str) -> list[str]:
    rows = sql(url, "SELECT details FROM audit_log WHERE action = 'authn_sso_fail'")
    return [(r[0] if isinstance(r[0], dict) else json.loads(r[0]))["reason"] for r in rows]


class Clock:
    def __init__(self, gw: Gateway) -> None:
        self.offset = 0.0
        gw.app.state.services.authenticator.clock = self

    def __call__(self) -> float:
        return time.time() + self.offset


async def test_allowlist_refuses_sign_in_and_cookie_from_outside(
    gw: Gateway, node_issuer: str, database_url: str
) -> None:
    await configure_node(gw, node_issuer)
    await policy(gw, ipAllowlist=INSIDE)
    async with browser_at(gw, OUTSIDE) as outside:
        refused = await sign_in(outside)
        assert refused.status_code == 400
        assert session_cookie(refused) is None
        signed = await sign_in(gw.browser)
        assert signed.status_code == 303
        assert (await me(gw.browser)).json()["data"]["me"]["authMethod"] == "oidc"
        outside.cookies = gw.browser.cookies
        r = await me(outside)
        assert r.status_code == 403
        assert r.json()["errors"][0]["message"] == "address not allowed by the organization's policy"
    assert sso_failures(database_url) == ["sso_address_not_allowed"]
    # the organization is told, without a name for an account the refused sign-in would have made
    refusals = sql(database_url, "SELECT details, client_ip FROM security_events WHERE kind = 'sign_in_refused'")
    assert [(json.loads(d) if isinstance(d, str) else d, ip) for d, ip in refusals] == [
        ({"reason": "address_not_allowed", "method": "oidc"}, OUTSIDE)
    ]


async def test_sso_only_takes_oidc_and_refuses_passwords(gw: Gateway, node_issuer: str, database_url: str) -> None:
    await configure_node(gw, node_issuer)
    await policy(gw, allowedSignInMethods=["SSO"], breakGlassOwners=[gw.tenant.user_id])
    assert (await sign_in(gw.browser)).status_code == 303
    assert (await me(gw.browser)).status_code == 200
    # the member who signed in through the provider has no password sign-in; the break-glass owner has
    api = httpx.AsyncClient(transport=httpx.ASGITransport(app=gw.app, client=("203.0.113.7", 40000)), base_url=GATEWAY)
    async with api:
        sql(
            database_url,
            "UPDATE users SET password_hash = (SELECT password_hash FROM users WHERE id = :o)",
            o=gw.tenant.user_id,
        )
        jdoe = (await gql(api, LOGIN, {"email": "jdoe@acme.test", "password": gw.tenant.password})).json()
        assert error_codes(jdoe) == ["UNAUTHENTICATED"]
        owner = (await gql(api, LOGIN, {"email": gw.tenant.email, "password": gw.tenant.password})).json()
        assert owner["data"]["login"]["accessToken"]


async def test_password_only_refuses_oidc_sign_in_and_open_cookie_sessions(
    gw: Gateway, node_issuer: str, database_url: str
) -> None:
    await configure_node(gw, node_issuer)
    assert (await sign_in(gw.browser)).status_code == 303
    await policy(gw, allowedSignInMethods=["PASSWORD", "API_KEY"])
    r = await me(gw.browser)
    assert r.status_code == 403
    assert r.json()["errors"][0]["message"] == "sign-in method not allowed by the organization's policy"
    gw.browser.cookies.clear()
    refused = await sign_in(gw.browser)
    assert refused.status_code == 400
    assert session_cookie(refused) is None
    assert sso_failures(database_url) == ["sso_method_not_allowed"]


async def test_policy_idle_timeout_is_shorter_than_the_browser_default(gw: Gateway, node_issuer: str) -> None:
    await configure_node(gw, node_issuer)
    clock = Clock(gw)
    assert (await sign_in(gw.browser)).status_code == 303
    clock.offset = 6 * 60
    assert (await me(gw.browser)).status_code == 200  # the gateway's own idle timeout is 30 minutes
    await policy(gw, sessionIdleTimeoutMinutes=5)
    clock.offset = 12 * 60  # 6 minutes after the last request
    assert (await me(gw.browser)).status_code == 401


async def test_policy_lifetime_for_cookie_sessions(gw: Gateway, node_issuer: str, database_url: str) -> None:
    await configure_node(gw, node_issuer)
    clock = Clock(gw)
    await policy(gw, sessionMaxLifetimeHours=1)
    assert (await sign_in(gw.browser)).status_code == 303
    [(created, expires)] = sql(
        database_url, "SELECT created_at, expires_at FROM auth_sessions WHERE auth_method = 'oidc'"
    )
    assert (_at(expires) - _at(created)).total_seconds() == 3600  # the browser default is 12 hours
    for minutes in range(10, 60, 10):  # used every 10 minutes: never idle, ended by its lifetime all the same
        clock.offset = minutes * 60
        assert (await me(gw.browser)).status_code == 200
    clock.offset = 61 * 60
    assert (await me(gw.browser)).status_code == 401


def _at(value: Any) -> datetime:
    return value if isinstance(value, datetime) else datetime.fromisoformat(str(value))


async def test_concurrent_sso_sessions_end_the_oldest(gw: Gateway, node_issuer: str, database_url: str) -> None:
    await configure_node(gw, node_issuer)
    await policy(gw, maxConcurrentSessions=1)
    assert (await sign_in(gw.browser)).status_code == 303
    async with gw.new_browser() as second:
        assert (await sign_in(second)).status_code == 303
        assert (await me(second)).status_code == 200
    assert (await me(gw.browser)).status_code == 401
    reasons = sql(database_url, "SELECT revoked_reason FROM auth_sessions WHERE revoked_at IS NOT NULL")
    assert [r[0] for r in reasons] == ["session_limit"]


async def test_concurrent_sso_sessions_refuse_the_new_one(gw: Gateway, node_issuer: str, database_url: str) -> None:
    await configure_node(gw, node_issuer)
    await policy(gw, maxConcurrentSessions=1, concurrentSessionAction="REFUSE_NEW")
    assert (await sign_in(gw.browser)).status_code == 303
    async with gw.new_browser() as second:
        refused = await sign_in(second)
        assert refused.status_code == 400
        assert session_cookie(refused) is None
    assert (await me(gw.browser)).status_code == 200
    assert sso_failures(database_url) == ["sso_session_limit"]
