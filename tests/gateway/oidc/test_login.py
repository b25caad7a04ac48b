"""Real logins against node `oidc-provider`: JIT provisioning, role mapping, the session cookie, logout."""

from __future__ import annotations

from typing import Any

import httpx

from tests.conftest import error_codes, sql
from tests.gateway.oidc.conftest import (
    GATEWAY,
    Gateway,
    configure_node,
    csrf_cookie,
    session_cookie,
    to_callback,
)

ME = "{ me { user { email name } organization { slug } role authMethod } }"


async def sign_in(gw: Gateway, login_name: str = "jdoe", return_to: str = "/app/dashboard") -> httpx.Response:
    callback = await to_callback(gw.browser, f"{GATEWAY}/auth/sso/acme?return_to={return_to}", login_name)
    return await gw.browser.get(callback)


async def query(gw: Gateway, document: str, *, csrf: str | None = None, method: str = "POST") -> httpx.Response:
    headers = {"X-CSRF-Token": csrf} if csrf else {}
    if method == "GET":
        return await gw.browser.get(f"{GATEWAY}/graphql", params={"query": document}, headers=headers)
    return await gw.browser.post(f"{GATEWAY}/graphql", json={"query": document}, headers=headers)


async def test_first_login_provisions_the_user_and_sets_the_cookie(
    gw: Gateway, node_issuer: str, database_url: str
) -> None:
    await configure_node(gw, node_issuer)
    r = await sign_in(gw)
    assert r.status_code == 303, r.text
    assert r.headers["location"] == "/app/dashboard"
    cookie = next(v for v in r.headers.get_list("set-cookie") if v.startswith("__Host-portcullis="))
    assert "HttpOnly" in cookie
    assert "SameSite=Lax" in cookie
    assert "Path=/" in cookie
    assert "Domain" not in cookie
    csrf = csrf_cookie(r)
    assert csrf
    rows = sql(
        database_url,
        "SELECT u.email, m.role, i.issuer, i.subject FROM users u "
        "JOIN memberships m ON m.user_id = u.id JOIN sso_identities i ON i.user_id = u.id "
        "WHERE u.email = 'jdoe@acme.test'",
    )
    assert [tuple(x) for x in rows] == [("jdoe@acme.test", "viewer", node_issuer, "jdoe")]
    body = (await query(gw, ME, csrf=csrf)).json()
    assert body["data"]["me"] == {
        "user": {"email": "jdoe@acme.test", "name": "Test jdoe"},
        "organization": {"slug": "acme"},
        "role": "viewer",
        "authMethod": "oidc",
    }
    # a GET needs no CSRF token
    assert (await query(gw, ME, method="GET")).json()["data"]["me"]["authMethod"] == "oidc"
    # the sign-in is in the tenant's audit chain, with the user and the connection
    [entry] = sql(
        database_url,
        "SELECT a.result, a.actor_id, a.resource_type, u.email FROM audit_log a "
        "JOIN users u ON u.id = a.actor_id WHERE a.action = 'authn_sso_success'",
    )
    assert tuple(entry) == ("success", entry[1], "sso_connection", "jdoe@acme.test")


async def test_second_login_reuses_the_identity_and_applies_the_mapping(
    gw: Gateway, node_issuer: str, database_url: str
) -> None:
    await configure_node(gw, node_issuer, roleMapping={"portcullis-admins": "admin"}, defaultRole="analyst")
    assert (await sign_in(gw, "admin-ann")).status_code == 303
    gw.browser.cookies.clear()
    assert (await sign_in(gw, "admin-ann")).status_code == 303
    rows = sql(
        database_url,
        "SELECT m.role FROM users u JOIN memberships m ON m.user_id = u.id WHERE u.email = 'admin-ann@acme.test'",
    )
    assert [r[0] for r in rows] == ["admin"]
    assert sql(database_url, "SELECT count(*) FROM sso_identities")[0][0] == 1
    assert sql(database_url, "SELECT count(*) FROM users WHERE email = 'admin-ann@acme.test'")[0][0] == 1


async def test_mutation_with_cookie_needs_the_csrf_token(gw: Gateway, node_issuer: str) -> None:
    await configure_node(gw, node_issuer)
    r = await sign_in(gw)
    csrf = csrf_cookie(r)
    mutation = "mutation { logout }"
    refused = await query(gw, mutation)
    assert refused.status_code == 403
    assert error_codes(refused.json()) == ["FORBIDDEN"]
    wrong = await query(gw, mutation, csrf="x" * 43)
    assert wrong.status_code == 403
    # a query over POST is a non-GET request: it needs the token too
    assert (await query(gw, ME)).status_code == 403
    assert (await query(gw, ME, csrf=csrf)).status_code == 200


async def test_cookie_and_bearer_together_are_401(gw: Gateway, node_issuer: str) -> None:
    await configure_node(gw, node_issuer)
    r = await sign_in(gw)
    both = await gw.browser.post(
        f"{GATEWAY}/graphql",
        json={"query": ME},
        headers={"X-CSRF-Token": csrf_cookie(r) or "", "Authorization": f"Bearer {gw.owner_token}"},
    )
    assert both.status_code == 401
    assert error_codes(both.json()) == ["UNAUTHENTICATED"]


async def test_forged_cookie_is_401(gw: Gateway, node_issuer: str) -> None:
    await configure_node(gw, node_issuer)
    r = await sign_in(gw)
    value = session_cookie(r)
    assert value
    sid, _, mac = value.partition(".")
    for forged in (f"{sid}.{mac[:-2]}AA", f"{sid}", "garbage", f"{sid}.{mac}.x"):
        gw.browser.cookies.clear()
        resp = await gw.browser.get(
            f"{GATEWAY}/graphql", params={"query": ME}, headers={"Cookie": f"__Host-portcullis={forged}"}
        )
        assert resp.status_code == 401, forged


async def test_logout_ends_the_session(gw: Gateway, node_issuer: str, database_url: str) -> None:
    await configure_node(gw, node_issuer)
    r = await sign_in(gw)
    csrf = csrf_cookie(r)
    assert (await gw.browser.post(f"{GATEWAY}/auth/logout")).status_code == 403  # CSRF first
    out = await gw.browser.post(f"{GATEWAY}/auth/logout", headers={"X-CSRF-Token": csrf or ""})
    assert out.status_code == 200
    assert any(v.startswith("__Host-portcullis=;") and "Max-Age=0" in v for v in out.headers.get_list("set-cookie"))
    assert sql(database_url, "SELECT revoked_reason FROM auth_sessions WHERE auth_method = 'oidc'")[0][0] == "logout"
    # the old cookie value no longer counts, even when replayed by hand
    replay = await gw.new_browser().get(
        f"{GATEWAY}/graphql", params={"query": ME}, headers={"Cookie": f"__Host-portcullis={session_cookie(r)}"}
    )
    assert replay.status_code == 401


async def test_idle_timeout_ends_the_session(gw: Gateway, node_issuer: str, database_url: str) -> None:
    await configure_node(gw, node_issuer)
    r = await sign_in(gw)
    assert (await query(gw, ME, method="GET")).status_code == 200
    sql(database_url, "UPDATE auth_sessions SET last_seen_at = :t", t=_past(minutes=31))
    gw.app.state.services.sessions.invalidate(["*"])
    assert (await query(gw, ME, method="GET")).status_code == 401
    assert session_cookie(r)


async def test_absolute_timeout_ends_the_session(gw: Gateway, node_issuer: str, database_url: str) -> None:
    await configure_node(gw, node_issuer)
    await sign_in(gw)
    sql(database_url, "UPDATE auth_sessions SET expires_at = :t", t=_past())
    gw.app.state.services.sessions.invalidate(["*"])
    assert (await query(gw, ME, method="GET")).status_code == 401


async def test_activity_keeps_the_session_alive(gw: Gateway, node_issuer: str, database_url: str) -> None:
    await configure_node(gw, node_issuer)
    await sign_in(gw)
    sql(database_url, "UPDATE auth_sessions SET last_seen_at = :t", t=_past(minutes=20))
    gw.app.state.services.sessions.invalidate(["*"])
    assert (await query(gw, ME, method="GET")).status_code == 200
    seen = sql(database_url, "SELECT last_seen_at FROM auth_sessions WHERE auth_method = 'oidc'")[0][0]
    assert str(seen) > str(_past(minutes=1))


def _past(minutes: int = 1) -> Any:
    from datetime import UTC, datetime, timedelta

    return datetime.now(UTC) - timedelta(minutes=minutes)


async def test_two_session_cookies_are_401(gw: Gateway, node_issuer: str) -> None:
    await configure_node(gw, node_issuer)
    value = session_cookie(await sign_in(gw))
    gw.browser.cookies.clear()
    r = await gw.browser.get(
        f"{GATEWAY}/graphql",
        params={"query": ME},
        headers={"Cookie": f"__Host-portcullis={value}; __Host-portcullis={value}"},
    )
    assert r.status_code == 401


async def test_a_dead_cookie_does_not_stop_signing_in_again(gw: Gateway, node_issuer: str) -> None:
    await configure_node(gw, node_issuer)
    r = await sign_in(gw)
    csrf = csrf_cookie(r)
    assert (await gw.browser.post(f"{GATEWAY}/auth/logout", headers={"X-CSRF-Token": csrf or ""})).status_code == 200
    dead = session_cookie(r)
    gw.browser.cookies.set("__Host-portcullis", dead or "", domain="testserver.local")
    assert (await query(gw, ME, method="GET")).status_code == 401  # the browser does send the dead cookie
    again = await sign_in(gw)
    assert again.status_code == 303
    assert session_cookie(again) not in (None, dead)
