"""The sessions a person sees and ends (`me.sessions`, `revokeSession`, `revokeOtherSessions`), an
administrator's view and revocation of a member's (`Membership.sessions`, `revokeMemberSessions`): bearer and
cookie sessions, another person's id, and a revoked session refused on its next request, on every process."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import httpx

from authz import BuiltinRole, Permission, permissions_for_role
from authz.roles import ROLE_ORDER
from identity.browser_sessions import CSRF_HEADER, SESSION_COOKIE
from identity.sessions import create_browser_session
from store.db import Database
from tests.conftest import (
    CLIENT_IP,
    LOGIN,
    Tenant,
    error_codes,
    gql,
    login,
    make_tenant,
    refused_within,
    shared_apps,
    sql,
)
from tests.invitations import join

SESSIONS = "{ me { sessions { id device ipAddress method createdAt lastSeenAt current } } }"
REVOKE = "mutation($id: ID!) { revokeSession(id: $id) }"
REVOKE_OTHERS = "mutation { revokeOtherSessions }"
MEMBER_SESSIONS = (
    "{ organization { members(first: 50) { edges { node { id user { email } sessions { id device } } } } } }"
)
REVOKE_MEMBER = "mutation($m: ID!) { revokeMemberSessions(memberId: $m) }"
ORG = "{ organization { slug } }"
FIREFOX = "Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0"
CHROME_MAC = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 "
    "Safari/537.36"
)


async def sign_in(client: httpx.AsyncClient, t: Tenant, agent: str) -> dict[str, Any]:
    r = await gql(client, LOGIN, {"email": t.email, "password": t.password}, headers={"User-Agent": agent})
    return r.json()["data"]["login"]  # type: ignore[no-any-return]


async def cookie_session(app: Any, database_url: str, t: Tenant) -> tuple[str, dict[str, str]]:
    db = Database(database_url)
    try:
        async with db.transaction() as session:
            row = await create_browser_session(
                session,
                user_id=t.user_id,
                organization_id=t.org_id,
                auth_method="oidc",
                client_ip="198.51.100.9",
                user_agent=FIREFOX,
                lifetime_seconds=3600,
                now=datetime.now(UTC),
            )
            sid = row.id
    finally:
        await db.dispose()
    browser = app.state.services.browser
    return sid, {"Cookie": f"{SESSION_COOKIE}={browser.cookie_value(sid)}", CSRF_HEADER: browser.csrf_token(sid)}


def session_of(app: Any, token: str) -> str:
    return str(app.state.services.tokens.verify(token).session_id)


async def my_sessions(client: httpx.AsyncClient, **kw: Any) -> list[dict[str, Any]]:
    body = (await gql(client, SESSIONS, **kw)).json()
    assert body.get("data"), body
    return body["data"]["me"]["sessions"]  # type: ignore[no-any-return]


async def test_a_person_sees_their_bearer_and_cookie_sessions(
    app: Any, client: httpx.AsyncClient, database_url: str, tenant: Tenant
) -> None:
    laptop = await sign_in(client, tenant, CHROME_MAC)
    phone = await sign_in(client, tenant, "curl/8.4.0")
    cookie_id, cookie = await cookie_session(app, database_url, tenant)
    seen = await my_sessions(client, token=laptop["accessToken"])
    by_id = {s["id"]: s for s in seen}
    assert set(by_id) == {session_of(app, laptop["accessToken"]), session_of(app, phone["accessToken"]), cookie_id}
    mine = by_id[session_of(app, laptop["accessToken"])]
    assert mine["current"] is True
    assert mine["device"] == "Chrome 120 on macOS"
    assert mine["ipAddress"] == CLIENT_IP
    assert mine["method"] == "password"
    assert by_id[session_of(app, phone["accessToken"])]["device"] == "curl 8"
    assert by_id[session_of(app, phone["accessToken"])]["current"] is False
    assert by_id[cookie_id] | {"createdAt": None, "lastSeenAt": None} == {
        "id": cookie_id,
        "device": "Firefox 121 on Linux",
        "ipAddress": "198.51.100.9",
        "method": "oidc",
        "createdAt": None,
        "lastSeenAt": None,
        "current": False,
    }
    # through the cookie, that session is the current one
    assert [s["id"] for s in await my_sessions(client, headers=cookie) if s["current"]] == [cookie_id]


async def test_revoking_a_session_refuses_it_on_its_next_request(
    app: Any, client: httpx.AsyncClient, database_url: str, tenant: Tenant
) -> None:
    one = (await login(client, tenant))["accessToken"]
    two = (await login(client, tenant))["accessToken"]
    cookie_id, cookie = await cookie_session(app, database_url, tenant)
    assert (await gql(client, ORG, token=two)).status_code == 200
    assert (await gql(client, REVOKE, {"id": session_of(app, two)}, token=one)).json()["data"] == {
        "revokeSession": True
    }
    assert (await gql(client, ORG, token=two)).status_code == 401
    assert (await gql(client, ORG, headers=cookie)).status_code == 200
    assert (await gql(client, REVOKE, {"id": cookie_id}, token=one)).json()["data"] == {"revokeSession": True}
    assert (await gql(client, ORG, headers=cookie)).status_code == 401
    # a cookie session ends another the same way
    _, other_cookie = await cookie_session(app, database_url, tenant)
    body = (await gql(client, REVOKE, {"id": session_of(app, one)}, headers=other_cookie)).json()
    assert body["data"] == {"revokeSession": True}, body
    assert (await gql(client, ORG, token=one)).status_code == 401
    [(n,)] = sql(database_url, "SELECT count(*) FROM audit_log WHERE action = 'authn_session_revoked'")
    assert n == 3


async def test_another_persons_session_is_not_found(
    client: httpx.AsyncClient, database_url: str, tenant: Tenant, app: Any
) -> None:
    other = await make_tenant(database_url, slug="globex", email="owner@globex.test")
    theirs = (await login(client, other))["accessToken"]
    mine = (await login(client, tenant))["accessToken"]
    for bad in (session_of(app, theirs), "00000000-0000-0000-0000-000000000000", "x" * 37, ""):
        body = (await gql(client, REVOKE, {"id": bad}, token=mine)).json()
        assert error_codes(body) == ["NOT_FOUND"], body
    assert (await gql(client, ORG, token=theirs)).status_code == 200
    assert session_of(app, theirs) not in {s["id"] for s in await my_sessions(client, token=mine)}


async def test_revoke_other_sessions_keeps_the_current_one(
    app: Any, client: httpx.AsyncClient, database_url: str, tenant: Tenant
) -> None:
    current = (await login(client, tenant))["accessToken"]
    others = [(await login(client, tenant))["accessToken"] for _ in range(2)]
    _, cookie = await cookie_session(app, database_url, tenant)
    assert (await gql(client, REVOKE_OTHERS, token=current)).json()["data"] == {"revokeOtherSessions": 3}
    for token in others:
        assert (await gql(client, ORG, token=token)).status_code == 401
    assert (await gql(client, ORG, headers=cookie)).status_code == 401
    assert (await gql(client, ORG, token=current)).status_code == 200
    assert [s["current"] for s in await my_sessions(client, token=current)] == [True]
    assert (await gql(client, REVOKE_OTHERS, token=current)).json()["data"] == {"revokeOtherSessions": 0}


async def test_an_api_key_has_no_sessions_to_end(client: httpx.AsyncClient, tenant: Tenant) -> None:
    token = (await login(client, tenant))["accessToken"]
    made = (
        await gql(
            client,
            'mutation { createApiKey(input: {name: "k", scopes: ["organization:read"]}) { secret } }',
            token=token,
        )
    ).json()
    key = {"X-API-Key": made["data"]["createApiKey"]["secret"]}
    for doc, variables in ((REVOKE, {"id": "x"}), (REVOKE_OTHERS, None)):
        r = await gql(client, doc, variables, headers=key)
        assert r.status_code == 403
        assert error_codes(r.json()) == ["FORBIDDEN"]
    assert (await gql(client, ORG, token=token)).status_code == 200


async def _member(client: httpx.AsyncClient, database_url: str, admin: str, email: str, role: str) -> Any:
    return await join(client, database_url, admin, email, role, "a member's long passphrase")


async def test_an_administrator_sees_and_ends_a_members_sessions(
    app: Any, client: httpx.AsyncClient, database_url: str, tenant: Tenant
) -> None:
    admin = (await login(client, tenant))["accessToken"]
    member = await _member(client, database_url, admin, "dev@acme.test", "manager")
    body = (await gql(client, MEMBER_SESSIONS, token=admin)).json()
    nodes = {e["node"]["user"]["email"]: e["node"] for e in body["data"]["organization"]["members"]["edges"]}
    assert [s["id"] for s in nodes["dev@acme.test"]["sessions"]] == [session_of(app, member.access_token)]
    # the member's sessions in another organization are not this administrator's to see
    other = await make_tenant(database_url, slug="globex", email="owner@globex.test")
    other_admin = (await login(client, other))["accessToken"]
    await join(client, database_url, other_admin, "dev@acme.test", "viewer", "a member's long passphrase")
    body = (await gql(client, MEMBER_SESSIONS, token=admin)).json()
    nodes = {e["node"]["user"]["email"]: e["node"] for e in body["data"]["organization"]["members"]["edges"]}
    assert len(nodes["dev@acme.test"]["sessions"]) == 1
    # a member without security:read sees no one's sessions
    denied = (await gql(client, MEMBER_SESSIONS, token=member.access_token)).json()
    assert "FORBIDDEN" in error_codes(denied)
    # only the field is refused: the members are still listed, with `sessions: null`
    edges = denied["data"]["organization"]["members"]["edges"]
    assert {e["node"]["user"]["email"] for e in edges} == {tenant.email, "dev@acme.test"}
    assert {e["node"]["sessions"] for e in edges} == {None}
    assert error_codes(
        (await gql(client, REVOKE_MEMBER, {"m": member.membership_id}, token=member.access_token)).json()
    ) == ["FORBIDDEN"]
    body = (await gql(client, REVOKE_MEMBER, {"m": member.membership_id}, token=admin)).json()
    assert body["data"] == {"revokeMemberSessions": 1}, body
    assert (await gql(client, ORG, token=member.access_token)).status_code == 401
    [(n,)] = sql(
        database_url,
        "SELECT count(*) FROM audit_log WHERE action = 'member_sessions_revoked' AND resource_id = :m",
        m=member.membership_id,
    )
    assert n == 1
    # another organization's membership is NOT_FOUND, as an unknown one
    other_members = (await gql(client, MEMBER_SESSIONS, token=other_admin)).json()
    foreign = other_members["data"]["organization"]["members"]["edges"][0]["node"]["id"]
    for bad in (foreign, "nope"):
        assert error_codes((await gql(client, REVOKE_MEMBER, {"m": bad}, token=admin)).json()) == ["NOT_FOUND"]
    assert (await gql(client, ORG, token=other_admin)).status_code == 200


async def test_a_revoked_session_is_refused_by_every_process(
    postgresql_url: str, redis_url: str, signing_key: str, shared_tenant: Tenant
) -> None:
    async with shared_apps(postgresql_url, redis_url, signing_key, shared_tenant) as (c1, c2, token, one, _):
        other = (await login(c2, shared_tenant))["accessToken"]
        assert (await gql(c1, ORG, token=other)).status_code == 200  # cached on the first process too
        body = (await gql(c2, REVOKE, {"id": session_of(one, other)}, token=token)).json()
        assert body["data"] == {"revokeSession": True}, body

        async def ask() -> httpx.Response:
            return await gql(c1, ORG, token=other)

        await refused_within(ask)


async def test_member_sessions_by_role(client: httpx.AsyncClient, database_url: str, tenant: Tenant) -> None:
    """`Membership.sessions` for every built-in role (the role matrix reaches no field under a list): the roles
    holding security:read see them, the others get null there and FORBIDDEN naming the scope."""
    owner = (await login(client, tenant))["accessToken"]
    for role in ROLE_ORDER:
        token = owner
        if role is not BuiltinRole.OWNER:
            token = (await _member(client, database_url, owner, f"{role.value}@acme.test", role.value)).access_token
        body = (await gql(client, MEMBER_SESSIONS, token=token)).json()
        if body["data"]["organization"] is None or body["data"]["organization"]["members"] is None:
            assert Permission.MEMBERS_READ not in permissions_for_role(role.value), (role, body)
            continue  # no member list to read sessions from
        edges = body["data"]["organization"]["members"]["edges"]
        if Permission.SECURITY_READ in permissions_for_role(role.value):
            assert "errors" not in body, (role, body)
            assert all(isinstance(e["node"]["sessions"], list) for e in edges)
        else:
            assert {e["node"]["sessions"] for e in edges} == {None}, role
            assert {(e["extensions"]["code"], str(e["extensions"]["requiredScopes"])) for e in body["errors"]} == {
                ("FORBIDDEN", "[['security:read']]")
            }, role
    assert {r.value for r in ROLE_ORDER if Permission.SECURITY_READ in permissions_for_role(r.value)} == {
        "admin",
        "owner",
    }
