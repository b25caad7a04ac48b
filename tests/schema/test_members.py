"""Members: listing with keyset pages, joining by invitation, role changes and removal, across tenants."""

from __future__ import annotations

import base64
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest

from tests.conftest import LOGIN, PASSWORD, Tenant, error_codes, gql, login, make_tenant, sql
from tests.invitations import invitation_token
from tests.invitations import join as join_by_invitation

ADD = """
mutation($email: String!, $role: String!) {
  addMember(email: $email, role: $role) { invitationToken membership { id } invitation { id email role status } }
}
"""
ACCEPT = """
mutation($token: String!, $password: String!) {
  acceptInvitation(token: $token, password: $password) { accessToken refreshToken user { email } organization { id } }
}
"""
UPDATE = "mutation($id: ID!, $role: String!) { updateMemberRole(membershipId: $id, role: $role) { id role } }"
REMOVE = "mutation($id: ID!) { removeMember(membershipId: $id) }"
MEMBERS = """
query($first: Int, $after: String) {
  organization { members(first: $first, after: $after) {
    edges { cursor node { id role user { email } } } pageInfo { hasNextPage endCursor }
  } }
}
"""
NEW_PASSWORD = "a long enough new passphrase"


def role_of(url: str, membership_id: str) -> str | None:
    rows = sql(url, "SELECT role FROM memberships WHERE id = :id", id=membership_id)
    return rows[0][0] if rows else None


async def owner_token(client: httpx.AsyncClient, t: Tenant) -> str:
    return str((await login(client, t))["accessToken"])


async def add(client: httpx.AsyncClient, token: str, email: str, role: str) -> dict[str, Any]:
    body = (await gql(client, ADD, {"email": email, "role": role}, token=token)).json()
    assert body.get("data"), body
    assert body["data"]["addMember"], body
    return body["data"]["addMember"]  # type: ignore[no-any-return]


async def join(client: httpx.AsyncClient, database_url: str, token: str, email: str, role: str) -> tuple[str, str]:
    """Invite a new address and accept as its holder: (membership id, the member's access token)."""
    joined = await join_by_invitation(client, database_url, token, email, role, NEW_PASSWORD)
    return joined.membership_id, joined.access_token


async def permissions(client: httpx.AsyncClient, token: str) -> Any:
    return (await gql(client, "{ permissions }", token=token)).json()


# -- listing ------------------------------------------------------------------------------------------


async def test_members_come_in_stable_pages(client, database_url, tenant: Tenant) -> None:
    token = await owner_token(client, tenant)
    for i in range(4):
        await join(client, database_url, token, f"m{i}@acme.test", "viewer")
    seen: list[str] = []
    after = None
    pages = 0
    while True:
        body = (await gql(client, MEMBERS, {"first": 2, "after": after}, token=token)).json()
        conn = body["data"]["organization"]["members"]
        pages += 1
        seen += [e["node"]["user"]["email"] for e in conn["edges"]]
        assert conn["pageInfo"]["endCursor"] == conn["edges"][-1]["cursor"]
        if not conn["pageInfo"]["hasNextPage"]:
            break
        after = conn["pageInfo"]["endCursor"]
    assert pages == 3
    assert seen == ["owner@acme.test", "m0@acme.test", "m1@acme.test", "m2@acme.test", "m3@acme.test"]
    whole = (await gql(client, MEMBERS, {"first": 100}, token=token)).json()["data"]["organization"]["members"]
    assert [e["node"]["user"]["email"] for e in whole["edges"]] == seen
    assert whole["pageInfo"]["hasNextPage"] is False


@pytest.mark.parametrize("first", [0, -1, 101])
async def test_page_size_out_of_range_is_bad_input(client, tenant: Tenant, first: int) -> None:
    token = await owner_token(client, tenant)
    body = (await gql(client, MEMBERS, {"first": first}, token=token)).json()
    assert error_codes(body) == ["BAD_USER_INPUT"]


@pytest.mark.parametrize(
    "cursor",
    ["not a cursor", "bTE=", base64.urlsafe_b64encode(b"m1|yesterday|x").decode(), "A" * 500, "%%%", ""],
)
async def test_malformed_cursor_is_bad_input(client, tenant: Tenant, cursor: str) -> None:
    token = await owner_token(client, tenant)
    body = (await gql(client, MEMBERS, {"after": cursor}, token=token)).json()
    assert error_codes(body) == ["BAD_USER_INPUT"]
    assert body["errors"][0]["message"] == "after is not a valid cursor"


async def test_members_need_members_read(client, database_url, tenant: Tenant) -> None:
    token = await owner_token(client, tenant)
    _, viewer = await join(client, database_url, token, "v@acme.test", "viewer")
    body = (await gql(client, "{ organization { slug members { edges { cursor } } } }", token=viewer)).json()
    assert body["data"] == {"organization": None}
    assert body["errors"][0]["extensions"] == {"code": "FORBIDDEN", "requiredScopes": [["members:read"]]}


async def test_members_of_a_child_organization_are_not_listed(client, database_url, tenant: Tenant) -> None:
    await make_tenant(database_url, slug="acme-eu", email="eu@acme.test", parent_id=tenant.org_id)
    token = await owner_token(client, tenant)
    body = (await gql(client, '{ organization(slug: "acme-eu") { members { edges { cursor } } } }', token=token)).json()
    assert error_codes(body) == ["FORBIDDEN"]
    assert "eu@acme.test" not in str(body)


# -- adding and inviting ------------------------------------------------------------------------------


async def test_invitation_flow(client, database_url, tenant: Tenant) -> None:
    token = await owner_token(client, tenant)
    added = await add(client, token, "New.Person@acme.test", "analyst")
    assert added["invitationToken"] is None
    assert added["membership"] is None
    assert added["invitation"] == {
        "id": added["invitation"]["id"],
        "email": "New.Person@acme.test",
        "role": "analyst",
        "status": "PENDING",
    }
    invitation = await invitation_token(database_url, "New.Person@acme.test")
    assert invitation.startswith("pti_")
    stored = sql(database_url, "SELECT token_hash, expires_at, created_at FROM invitations")
    assert len(stored) == 1
    assert invitation not in str(stored)
    expires, created = (v if isinstance(v, datetime) else datetime.fromisoformat(v) for v in stored[0][1:])
    assert expires - created == timedelta(days=7)
    # before acceptance there is no account at all
    assert sql(database_url, "SELECT count(*) FROM users WHERE email_key = 'new.person@acme.test'")[0][0] == 0
    no_pw = (await gql(client, LOGIN, {"email": "new.person@acme.test", "password": NEW_PASSWORD})).json()
    assert error_codes(no_pw) == ["UNAUTHENTICATED"]

    accepted = (await gql(client, ACCEPT, {"token": invitation, "password": NEW_PASSWORD})).json()
    payload = accepted["data"]["acceptInvitation"]
    assert payload["organization"]["id"] == tenant.org_id
    assert payload["user"]["email"] == "New.Person@acme.test"
    assert (await permissions(client, payload["accessToken"]))["data"]["permissions"] == sorted(
        ["organization:read", "quotas:read", "reports:read", "reports:generate", "audit:read"]
    )
    again = (await gql(client, LOGIN, {"email": "new.person@acme.test", "password": NEW_PASSWORD})).json()
    assert again["data"]["login"]["accessToken"]

    reused = (await gql(client, ACCEPT, {"token": invitation, "password": "another fine passphrase"})).json()
    random = (await gql(client, ACCEPT, {"token": "pti_" + "x" * 43, "password": NEW_PASSWORD})).json()
    assert error_codes(reused) == error_codes(random) == ["UNAUTHENTICATED"]
    assert reused["errors"][0]["message"] == random["errors"][0]["message"]


async def test_expired_invitation_is_refused(client, database_url, tenant: Tenant) -> None:
    token = await owner_token(client, tenant)
    await add(client, token, "late@acme.test", "viewer")
    sql(database_url, "UPDATE invitations SET expires_at = created_at")
    invitation = await invitation_token(database_url, "late@acme.test")
    body = (await gql(client, ACCEPT, {"token": invitation, "password": NEW_PASSWORD})).json()
    assert error_codes(body) == ["UNAUTHENTICATED"]
    assert body["errors"][0]["message"] == "Invalid or expired invitation."


async def test_weak_password_keeps_the_invitation(client, database_url, tenant: Tenant) -> None:
    token = await owner_token(client, tenant)
    await add(client, token, "weak@acme.test", "viewer")
    invitation = await invitation_token(database_url, "weak@acme.test")
    for weak in ("short", "password1234", "weak@acme.test"):
        body = (await gql(client, ACCEPT, {"token": invitation, "password": weak})).json()
        assert error_codes(body) == ["BAD_USER_INPUT"], weak
    ok = (await gql(client, ACCEPT, {"token": invitation, "password": NEW_PASSWORD})).json()
    assert ok["data"]["acceptInvitation"]["accessToken"]


async def test_existing_user_is_invited_and_joins_by_accepting(client, database_url, tenant: Tenant) -> None:
    """C-125: an account of another tenant is invited like anyone; it joins only by its holder's act."""
    other = await make_tenant(database_url, slug="globex", email="owner@globex.test")
    token = await owner_token(client, tenant)
    added = await add(client, token, "OWNER@globex.test", "viewer")
    assert added["invitationToken"] is None
    assert added["membership"] is None
    assert other.user_id not in str(added)
    again = (await gql(client, ADD, {"email": "owner@globex.test", "role": "analyst"}, token=token)).json()
    assert error_codes(again) == ["CONFLICT"]  # a pending invitation: resend it
    assert sql(database_url, "SELECT count(*) FROM memberships WHERE user_id = :u", u=other.user_id)[0][0] == 1
    invitation = await invitation_token(database_url, "OWNER@globex.test")
    joined = (await gql(client, ACCEPT, {"token": invitation, "password": other.password})).json()
    assert joined["data"]["acceptInvitation"]["organization"]["id"] == tenant.org_id
    assert sql(database_url, "SELECT count(*) FROM memberships WHERE user_id = :u", u=other.user_id)[0][0] == 2


@pytest.mark.parametrize(
    "email", ["", "no-at-sign", "two@@example.test", "a b@example.test", "x@" + "y" * 400, "nul\x00@example.test"]
)
async def test_add_member_refuses_a_bad_email(client, tenant: Tenant, email: str) -> None:
    token = await owner_token(client, tenant)
    body = (await gql(client, ADD, {"email": email, "role": "viewer"}, token=token)).json()
    assert error_codes(body) == ["BAD_USER_INPUT"]


@pytest.mark.parametrize("role", ["superuser", "platform", "", "Admin", "x" * 100])
async def test_add_member_refuses_an_unknown_role(client, database_url, tenant: Tenant, role: str) -> None:
    token = await owner_token(client, tenant)
    body = (await gql(client, ADD, {"email": "r@acme.test", "role": role}, token=token)).json()
    assert error_codes(body) == ["BAD_USER_INPUT"]
    assert sql(database_url, "SELECT count(*) FROM users")[0][0] == 1


async def test_manager_cannot_grant_admin(client, database_url, tenant: Tenant) -> None:
    token = await owner_token(client, tenant)
    _, manager = await join(client, database_url, token, "mgr@acme.test", "manager")
    body = (await gql(client, ADD, {"email": "x@acme.test", "role": "admin"}, token=manager)).json()
    assert error_codes(body) == ["FORBIDDEN"]
    assert "apikeys:manage" in body["errors"][0]["extensions"]["requiredScopes"][0]
    assert sql(database_url, "SELECT count(*) FROM users WHERE email = 'x@acme.test'")[0][0] == 0
    ok = await add(client, manager, "y@acme.test", "analyst")
    assert ok["invitation"]["role"] == "analyst"


# -- changing roles -----------------------------------------------------------------------------------


async def test_role_change_applies_on_the_next_request(client, database_url, tenant: Tenant) -> None:
    token = await owner_token(client, tenant)
    membership_id, member = await join(client, database_url, token, "m@acme.test", "viewer")
    assert (await permissions(client, member))["data"]["permissions"] == ["organization:read", "quotas:read"]
    changed = (await gql(client, UPDATE, {"id": membership_id, "role": "manager"}, token=token)).json()
    assert changed["data"]["updateMemberRole"] == {"id": membership_id, "role": "manager"}
    after = (await permissions(client, member))["data"]["permissions"]
    assert "members:manage" in after
    me = (await gql(client, "{ me { role } }", token=member)).json()
    assert me["data"]["me"]["role"] == "manager"


async def test_manager_cannot_raise_anyone_to_admin(client, database_url, tenant: Tenant) -> None:
    """C-022: refused, and the row is unchanged."""
    token = await owner_token(client, tenant)
    _, manager = await join(client, database_url, token, "mgr@acme.test", "manager")
    viewer_id, _ = await join(client, database_url, token, "v@acme.test", "viewer")
    manager_id = sql(
        database_url, "SELECT m.id FROM memberships m JOIN users u ON u.id = m.user_id WHERE u.email = 'mgr@acme.test'"
    )[0][0]
    for target in (viewer_id, manager_id):
        body = (await gql(client, UPDATE, {"id": target, "role": "admin"}, token=manager)).json()
        assert error_codes(body) == ["FORBIDDEN"]
        assert body["errors"][0]["extensions"]["requiredScopes"]
    assert role_of(database_url, viewer_id) == "viewer"
    assert role_of(database_url, manager_id) == "manager"


async def test_manager_cannot_demote_or_remove_an_admin(client, database_url, tenant: Tenant) -> None:
    token = await owner_token(client, tenant)
    _, manager = await join(client, database_url, token, "mgr@acme.test", "manager")
    admin_id, _ = await join(client, database_url, token, "adm@acme.test", "admin")
    demote = (await gql(client, UPDATE, {"id": admin_id, "role": "viewer"}, token=manager)).json()
    remove = (await gql(client, REMOVE, {"id": admin_id}, token=manager)).json()
    assert error_codes(demote) == error_codes(remove) == ["FORBIDDEN"]
    assert role_of(database_url, admin_id) == "admin"


async def test_update_to_an_unknown_role_is_bad_input(client, database_url, tenant: Tenant) -> None:
    token = await owner_token(client, tenant)
    membership_id, _ = await join(client, database_url, token, "m@acme.test", "viewer")
    body = (await gql(client, UPDATE, {"id": membership_id, "role": "wizard"}, token=token)).json()
    assert error_codes(body) == ["BAD_USER_INPUT"]
    assert role_of(database_url, membership_id) == "viewer"


async def test_last_owner_cannot_be_demoted_or_removed(client, database_url, tenant: Tenant) -> None:
    token = await owner_token(client, tenant)
    owner_id = sql(database_url, "SELECT id FROM memberships")[0][0]
    demote = (await gql(client, UPDATE, {"id": owner_id, "role": "admin"}, token=token)).json()
    remove = (await gql(client, REMOVE, {"id": owner_id}, token=token)).json()
    assert error_codes(demote) == error_codes(remove) == ["CONFLICT"]
    assert role_of(database_url, owner_id) == "owner"

    second_id, _ = await join(client, database_url, token, "owner2@acme.test", "owner")
    body = (await gql(client, UPDATE, {"id": owner_id, "role": "admin"}, token=token)).json()
    assert body["data"]["updateMemberRole"]["role"] == "admin"
    last = (await gql(client, REMOVE, {"id": second_id}, token=token)).json()
    assert error_codes(last) == ["FORBIDDEN"]  # an admin now, it cannot touch an owner
    assert role_of(database_url, second_id) == "owner"


# -- removing -----------------------------------------------------------------------------------------


async def test_removed_member_is_refused_on_the_next_request(client, database_url, tenant: Tenant) -> None:
    token = await owner_token(client, tenant)
    membership_id, member = await join(client, database_url, token, "gone@acme.test", "analyst")
    assert (await permissions(client, member))["data"]["permissions"]
    body = (await gql(client, REMOVE, {"id": membership_id}, token=token)).json()
    assert body["data"] == {"removeMember": True}
    refused = await gql(client, "{ permissions }", token=member)
    assert refused.status_code == 401
    assert error_codes(refused.json()) == ["UNAUTHENTICATED"]
    assert role_of(database_url, membership_id) is None
    assert (
        sql(
            database_url,
            "SELECT count(*) FROM auth_sessions s JOIN users u ON u.id = s.user_id "
            "WHERE u.email = 'gone@acme.test' AND s.revoked_at IS NULL",
        )[0][0]
        == 0
    )


async def test_a_removed_member_who_is_invited_again_must_accept_again(client, database_url, tenant: Tenant) -> None:
    token = await owner_token(client, tenant)
    membership_id, _ = await join(client, database_url, token, "again@acme.test", "viewer")
    assert (await gql(client, REMOVE, {"id": membership_id}, token=token)).json()["data"] == {"removeMember": True}
    await add(client, token, "again@acme.test", "analyst")
    assert (
        sql(
            database_url,
            "SELECT count(*) FROM memberships m JOIN users u ON u.id = m.user_id WHERE u.email = 'again@acme.test'",
        )[0][0]
        == 0
    )
    invitation = await invitation_token(database_url, "again@acme.test")
    accepted = (await gql(client, ACCEPT, {"token": invitation, "password": NEW_PASSWORD})).json()
    assert accepted["data"]["acceptInvitation"]["organization"]["id"] == tenant.org_id


# -- other tenants ------------------------------------------------------------------------------------


async def test_another_tenants_membership_is_not_found(client, database_url, tenant: Tenant) -> None:
    """C-098/C-101: another tenant's membership id answers exactly like a random id; nothing is written."""
    other = await make_tenant(database_url, slug="globex", email="owner@globex.test")
    theirs = sql(database_url, "SELECT id FROM memberships WHERE organization_id = :o", o=other.org_id)[0][0]
    token = await owner_token(client, tenant)
    for doc, variables in ((UPDATE, {"role": "viewer"}), (REMOVE, {})):
        foreign = (await gql(client, doc, {"id": theirs, **variables}, token=token)).json()
        random = (
            await gql(client, doc, {"id": "00000000-0000-4000-8000-000000000000", **variables}, token=token)
        ).json()
        assert error_codes(foreign) == error_codes(random) == ["NOT_FOUND"]
        assert foreign["errors"][0]["message"] == random["errors"][0]["message"]
        assert foreign["data"] == random["data"]
    assert role_of(database_url, theirs) == "owner"
    weird = (await gql(client, REMOVE, {"id": "x" * 300}, token=token)).json()
    assert error_codes(weird) == ["NOT_FOUND"]


async def test_tenant_headers_are_ignored(client, database_url, tenant: Tenant) -> None:
    """C-102: the tenant comes from the credential only."""
    other = await make_tenant(database_url, slug="globex", email="owner@globex.test")
    token = await owner_token(client, tenant)
    headers = {"X-Tenant-ID": other.org_id, "X-Org-ID": other.org_id}
    added = (await gql(client, ADD, {"email": "h@acme.test", "role": "viewer"}, token=token, headers=headers)).json()
    invitation_id = added["data"]["addMember"]["invitation"]["id"]
    org = sql(database_url, "SELECT organization_id FROM invitations WHERE id = :i", i=invitation_id)[0][0]
    assert org == tenant.org_id
    await join(client, database_url, token, "j@acme.test", "viewer")
    listed = (await gql(client, MEMBERS, token=token, headers=headers)).json()
    emails = [e["node"]["user"]["email"] for e in listed["data"]["organization"]["members"]["edges"]]
    assert emails == ["owner@acme.test", "j@acme.test"]


async def test_members_mutations_need_members_manage(client, database_url, tenant: Tenant) -> None:
    token = await owner_token(client, tenant)
    membership_id, analyst = await join(client, database_url, token, "a@acme.test", "analyst")
    for doc, variables in (
        (ADD, {"email": "z@acme.test", "role": "viewer"}),
        (UPDATE, {"id": membership_id, "role": "viewer"}),
        (REMOVE, {"id": membership_id}),
    ):
        body = (await gql(client, doc, variables, token=analyst)).json()
        assert error_codes(body) == ["FORBIDDEN"]
        assert body["errors"][0]["extensions"]["requiredScopes"] == [["members:manage"]]


async def test_password_for_an_existing_user_is_untouched(client, database_url, tenant: Tenant) -> None:
    other = await make_tenant(database_url, slug="globex", email="owner@globex.test")
    token = await owner_token(client, tenant)
    await add(client, token, other.email, "viewer")
    invitation = await invitation_token(database_url, other.email)
    refused = (await gql(client, ACCEPT, {"token": invitation, "password": NEW_PASSWORD})).json()
    assert error_codes(refused) == ["UNAUTHENTICATED"]
    assert (await gql(client, ACCEPT, {"token": invitation, "password": PASSWORD})).json()["data"]["acceptInvitation"]
    body = (await gql(client, LOGIN, {"email": other.email, "password": PASSWORD, "org": "acme"})).json()
    assert body["data"]["login"]["organization"]["id"] == tenant.org_id
    assert error_codes((await gql(client, LOGIN, {"email": other.email, "password": NEW_PASSWORD})).json()) == [
        "UNAUTHENTICATED"
    ]


def test_session_cache_drops_by_user_and_by_organization() -> None:
    from datetime import datetime

    from identity.sessions import SessionCache, SessionInfo, org_key, user_key

    def info(sid: str, user: str, org: str) -> SessionInfo:
        return SessionInfo(
            session_id=sid,
            user_id=user,
            organization_id=org,
            role="viewer",
            plan="free",
            auth_method="password",
            expires_at=datetime(2100, 1, 1),
        )

    cache = SessionCache()
    for s in (info("s1", "u1", "o1"), info("s2", "u1", "o2"), info("s3", "u2", "o1"), info("s4", "u3", "o3")):
        cache.put(s, cache.epoch)
    cache.invalidate([user_key("u1")])
    assert [cache.get(s) is not None for s in ("s1", "s2", "s3", "s4")] == [False, False, True, True]
    cache.invalidate([org_key("o1")])
    assert [cache.get(s) is not None for s in ("s3", "s4")] == [False, True]
    stale_epoch = cache.epoch
    cache.invalidate(["s4"])
    assert cache.get("s4") is None
    cache.put(info("s4", "u3", "o3"), stale_epoch)
    assert cache.get("s4") is None, "a value loaded before the announcement is not stored"
