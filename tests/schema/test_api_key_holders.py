"""Who an API key acts for (C-131): its holder, the member who last received its secret by creating or
rotating it. Nobody keeps access through a key after losing membership: removing a member revokes every
key they hold, a rotated-away secret stops, and the holder's role change narrows the key at once.

In embedded and shared mode (the `settings` fixture, as in test_api_keys), on SQLite and PostgreSQL; the tests
marked postgres and redis run two apps on one database and one Redis, as two processes."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from gateway.settings import Settings
from tests.audit_view import readable_rows
from tests.conftest import Tenant, error_codes, gql, login, make_settings, refused_within, shared_apps, sql
from tests.schema.test_api_keys import KEYS, ORG, REVOKE, ROTATE, new_key, with_key
from tests.schema.test_child_plans import member, sign_in

REMOVE = "mutation($id: ID!) { removeMember(membershipId: $id) }"
SET_ROLE = "mutation($id: ID!, $role: String!) { updateMemberRole(membershipId: $id, role: $role) { role } }"
BILLING = "{ organization { slug billingEmail } }"
HOLDER = "{ organization { apiKeys { id holderId } } }"
ROTATE_HOLDER = "mutation($id: ID!) { rotateApiKey(id: $id) { apiKey { holderId } } }"
SHARED_SCOPES = ["organization:read", "members:read"]  # held by an admin as by the owner


async def rotate(client: httpx.AsyncClient, key_id: str, grace: int = 0, **auth: Any) -> dict[str, Any]:
    return (await gql(client, ROTATE, {"id": key_id, "g": grace}, **auth)).json()  # type: ignore[no-any-return]


@pytest.fixture(params=["embedded", "shared"])
def settings(request: pytest.FixtureRequest, database_url: str, signing_key: str) -> Settings:
    if request.param == "shared":
        return make_settings(database_url, signing_key, redis_url=request.getfixturevalue("redis_url"))
    return make_settings(database_url, signing_key)


@pytest.fixture
async def owner_token(client: httpx.AsyncClient, tenant: Tenant) -> str:
    return (await login(client, tenant))["accessToken"]  # type: ignore[no-any-return]


def holder_of(database_url: str, key_id: str) -> str:
    return str(sql(database_url, "SELECT held_by FROM api_keys WHERE id = :k", k=key_id)[0][0])


def revocations(database_url: str, org_id: str) -> dict[str, dict[str, Any]]:
    # as readers see them (personal fields opened: tests/audit_view.py)
    found = readable_rows(database_url, "chain = :c AND action = 'apikey_revoked'", c=org_id)
    out = {str(e.resource_id): dict(e.details) for e in found}
    for details in out.values():
        # written while a request was answered: the request's trace (docs/observability.md)
        assert len(details.pop("traceId")) == 32
    return out


def user_id_of(database_url: str, email: str) -> str:
    return str(sql(database_url, "SELECT id FROM users WHERE email = :e", e=email)[0][0])


async def test_c131_a_secret_taken_by_rotation_dies_with_the_rotators_membership(
    client: httpx.AsyncClient, database_url: str, tenant: Tenant, owner_token: str
) -> None:
    """The attack: the owner's key, rotated by an admin holding its scopes; the admin is removed."""
    key_id, creators_secret = await new_key(client, owner_token, scopes=SHARED_SCOPES)
    membership = await member(database_url, tenant.org_id, "admin@acme.test", "admin")
    admin = await sign_in(client, "admin@acme.test", "acme")
    taken = (await rotate(client, key_id, token=admin))["data"]["rotateApiKey"]["secret"]
    admin_id = user_id_of(database_url, "admin@acme.test")
    for _ in range(2):  # the second answer comes from the cache
        assert (await gql(client, ORG, headers=with_key(taken))).status_code == 200

    assert (await gql(client, REMOVE, {"id": membership}, token=owner_token)).json()["data"] == {"removeMember": True}
    assert (await gql(client, ORG, headers=with_key(taken))).status_code == 401
    assert (await gql(client, ORG, headers=with_key(creators_secret))).status_code == 401
    [listed] = (await gql(client, KEYS, token=owner_token)).json()["data"]["organization"]["apiKeys"]
    assert listed["revokedAt"] is not None
    assert revocations(database_url, tenant.org_id) == {
        key_id: {"prefix": listed["prefix"].split("_")[2], "heldBy": admin_id, "reason": "membership_removed"}
    }


async def test_c131_the_creators_secret_stops_when_someone_else_rotates_the_key(
    client: httpx.AsyncClient, database_url: str, tenant: Tenant, owner_token: str
) -> None:
    """A rotation that hands the key to someone else ends the current secret at once: a grace period would
    leave the previous holder a working secret that no membership of theirs stands behind."""
    key_id, creators_secret = await new_key(client, owner_token, scopes=SHARED_SCOPES)
    await member(database_url, tenant.org_id, "admin@acme.test", "admin")
    admin = await sign_in(client, "admin@acme.test", "acme")
    assert (await gql(client, ORG, headers=with_key(creators_secret))).status_code == 200

    with_grace = await rotate(client, key_id, 3600, token=admin)
    assert error_codes(with_grace) == ["BAD_USER_INPUT"]
    assert with_grace["errors"][0]["extensions"]["field"] == "gracePeriodSeconds"
    assert holder_of(database_url, key_id) == tenant.user_id
    assert (await gql(client, ORG, headers=with_key(creators_secret))).status_code == 200

    taken = (await rotate(client, key_id, token=admin))["data"]["rotateApiKey"]["secret"]
    assert (await gql(client, ORG, headers=with_key(creators_secret))).status_code == 401
    assert (await gql(client, ORG, headers=with_key(taken))).status_code == 200
    # the holder rotating their own key may keep the old secret for a while
    again = (await rotate(client, key_id, 3600, token=admin))["data"]["rotateApiKey"]["secret"]
    for secret in (taken, again):
        assert (await gql(client, ORG, headers=with_key(secret))).status_code == 200


async def test_c131_the_holders_role_change_narrows_the_key_at_once(
    client: httpx.AsyncClient, database_url: str, tenant: Tenant, owner_token: str
) -> None:
    """After a rotation the key follows its new holder's role, not its creator's."""
    key_id, _ = await new_key(client, owner_token, scopes=["organization:read", "billing:read"])
    membership = await member(database_url, tenant.org_id, "admin@acme.test", "admin")
    admin = await sign_in(client, "admin@acme.test", "acme")
    taken = (await rotate(client, key_id, token=admin))["data"]["rotateApiKey"]["secret"]
    for _ in range(2):
        assert (await gql(client, BILLING, headers=with_key(taken))).json().get("errors") is None
    demoted = (await gql(client, SET_ROLE, {"id": membership, "role": "manager"}, token=owner_token)).json()
    assert demoted["data"]["updateMemberRole"]["role"] == "manager"
    narrowed = (await gql(client, BILLING, headers=with_key(taken))).json()
    assert narrowed["data"]["organization"] == {"slug": "acme", "billingEmail": None}
    assert error_codes(narrowed) == ["FORBIDDEN"]


async def test_c131_removal_revokes_every_key_the_member_holds(
    client: httpx.AsyncClient, database_url: str, tenant: Tenant, owner_token: str
) -> None:
    """Keys the member created, and keys they took over by rotating (also through a key of theirs), are
    revoked with the membership; the keys others hold keep working."""
    membership = await member(database_url, tenant.org_id, "admin@acme.test", "admin")
    admin = await sign_in(client, "admin@acme.test", "acme")
    own_id, own = await new_key(client, admin, name="own")
    manager_id, manager = await new_key(client, admin, name="manager", scopes=["organization:read", "apikeys:manage"])
    taken_id, _ = await new_key(client, owner_token, name="taken")
    owners_id, owners = await new_key(client, owner_token, name="owner's")
    taken = (await rotate(client, taken_id, headers=with_key(manager)))["data"]["rotateApiKey"]["secret"]
    admin_id = user_id_of(database_url, "admin@acme.test")
    assert {k: holder_of(database_url, k) for k in (own_id, manager_id, taken_id, owners_id)} == {
        own_id: admin_id,
        manager_id: admin_id,
        taken_id: admin_id,
        owners_id: tenant.user_id,
    }
    for secret in (own, manager, taken, owners):
        assert (await gql(client, ORG, headers=with_key(secret))).status_code == 200

    assert (await gql(client, REMOVE, {"id": membership}, token=owner_token)).json()["data"] == {"removeMember": True}
    for secret in (own, manager, taken):
        assert (await gql(client, ORG, headers=with_key(secret))).status_code == 401
    assert (await gql(client, ORG, headers=with_key(owners))).status_code == 200
    revoked = dict(sql(database_url, "SELECT id, revoked_at FROM api_keys"))
    assert {k for k, at in revoked.items() if at is not None} == {own_id, manager_id, taken_id}
    audited = revocations(database_url, tenant.org_id)
    assert set(audited) == {own_id, manager_id, taken_id}
    assert {d["reason"] for d in audited.values()} == {"membership_removed"}
    # revoking one of them again changes nothing and is not an error
    assert (await gql(client, REVOKE, {"id": own_id}, token=owner_token)).json()["data"]["revokeApiKey"]["revokedAt"]


async def test_holder_id_names_whom_the_key_acts_for(
    client: httpx.AsyncClient, database_url: str, tenant: Tenant, owner_token: str
) -> None:
    key_id, _ = await new_key(client, owner_token, scopes=SHARED_SCOPES)
    listed = (await gql(client, HOLDER, token=owner_token)).json()["data"]["organization"]["apiKeys"]
    assert listed == [{"id": key_id, "holderId": tenant.user_id}]
    await member(database_url, tenant.org_id, "admin@acme.test", "admin")
    admin = await sign_in(client, "admin@acme.test", "acme")
    rotated = (await gql(client, ROTATE_HOLDER, {"id": key_id}, token=admin)).json()["data"]["rotateApiKey"]
    assert rotated["apiKey"]["holderId"] == user_id_of(database_url, "admin@acme.test")
    listed = (await gql(client, HOLDER, token=owner_token)).json()["data"]["organization"]["apiKeys"]
    assert listed == [{"id": key_id, "holderId": rotated["apiKey"]["holderId"]}]


# -- two processes on one PostgreSQL and one Redis ------------------------------------------------------


@pytest.mark.postgres
@pytest.mark.redis
async def test_c131_removal_ends_a_rotated_secret_on_the_other_process_within_a_second(
    postgresql_url: str, redis_url: str, signing_key: str, shared_tenant: Tenant
) -> None:
    async with shared_apps(postgresql_url, redis_url, signing_key, shared_tenant) as (c1, c2, token, *_):
        key_id, _ = await new_key(c1, token, scopes=SHARED_SCOPES)
        membership = await member(postgresql_url, shared_tenant.org_id, "admin@shared.test", "admin")
        admin = await sign_in(c1, "admin@shared.test", shared_tenant.slug)
        taken = (await rotate(c1, key_id, token=admin))["data"]["rotateApiKey"]["secret"]
        for _ in range(2):  # the second answer comes from app two's cache
            assert (await gql(c2, ORG, headers=with_key(taken))).status_code == 200
        assert (await gql(c1, REMOVE, {"id": membership}, token=token)).json()["data"] == {"removeMember": True}
        await refused_within(lambda: gql(c2, ORG, headers=with_key(taken)))


@pytest.mark.postgres
@pytest.mark.redis
async def test_c131_the_holders_downgrade_reaches_the_other_process_at_once(
    postgresql_url: str, redis_url: str, signing_key: str, shared_tenant: Tenant
) -> None:
    async with shared_apps(postgresql_url, redis_url, signing_key, shared_tenant) as (c1, c2, token, *_):
        key_id, _ = await new_key(c1, token, scopes=["organization:read", "billing:read"])
        membership = await member(postgresql_url, shared_tenant.org_id, "admin@shared.test", "admin")
        admin = await sign_in(c1, "admin@shared.test", shared_tenant.slug)
        taken = (await rotate(c1, key_id, token=admin))["data"]["rotateApiKey"]["secret"]
        for _ in range(2):
            assert (await gql(c2, BILLING, headers=with_key(taken))).json().get("errors") is None
        demoted = (await gql(c1, SET_ROLE, {"id": membership, "role": "manager"}, token=token)).json()
        assert demoted["data"]["updateMemberRole"]["role"] == "manager"
        for _ in range(50):
            if error_codes((await gql(c2, BILLING, headers=with_key(taken))).json()) == ["FORBIDDEN"]:
                break
            await asyncio.sleep(0.02)
        else:
            pytest.fail("the other process still grants billing:read a second after the holder's downgrade")
