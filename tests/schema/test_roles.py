"""Custom roles: definition rules, who may define them, and their effect on members' next requests."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.conftest import Tenant, error_codes, gql, make_tenant
from tests.schema.test_members import UPDATE, join, owner_token, permissions, role_of, sql

ROLES = "{ roles { name description permissions inherits builtIn } }"
CREATE = """
mutation($input: RoleInput!) { createRole(input: $input) { name description permissions inherits builtIn } }
"""
UPDATE_ROLE = """
mutation($name: String!, $input: RoleInput!) { updateRole(name: $name, input: $input) { name permissions inherits } }
"""
DELETE = "mutation($name: String!) { deleteRole(name: $name) }"


def role(
    name: str, permissions: list[str] | None = None, inherits: list[str] | None = None, description: str | None = None
) -> dict[str, Any]:
    return {"name": name, "permissions": permissions or [], "inherits": inherits or [], "description": description}


async def create(client: httpx.AsyncClient, token: str, **kwargs: Any) -> dict[str, Any]:
    return (await gql(client, CREATE, {"input": role(**kwargs)}, token=token)).json()  # type: ignore[no-any-return]


async def update(client: httpx.AsyncClient, token: str, name: str, **kwargs: Any) -> dict[str, Any]:
    body = await gql(client, UPDATE_ROLE, {"name": name, "input": role(name, **kwargs)}, token=token)
    return body.json()  # type: ignore[no-any-return]


def assert_bad_input(body: dict[str, Any], fragment: str) -> None:
    assert error_codes(body) == ["BAD_USER_INPUT"], body
    assert fragment in body["errors"][0]["message"], body


async def test_roles_lists_builtins_then_custom(client, tenant: Tenant) -> None:
    token = await owner_token(client, tenant)
    made = await create(
        client,
        token,
        name="auditor",
        permissions=["audit:read", "audit:verify"],
        inherits=["viewer"],
        description="Reads the audit log",
    )
    assert made["data"]["createRole"] == {
        "name": "auditor",
        "description": "Reads the audit log",
        "permissions": ["audit:read", "audit:verify"],
        "inherits": ["viewer"],
        "builtIn": False,
    }
    roles = (await gql(client, ROLES, token=token)).json()["data"]["roles"]
    assert [r["name"] for r in roles] == ["viewer", "analyst", "manager", "admin", "owner", "auditor"]
    assert all(r["builtIn"] for r in roles[:5])
    assert roles[0]["permissions"] == ["organization:read", "quotas:read"]
    assert roles[4]["permissions"] == sorted(roles[4]["permissions"])
    assert "plan:manage" in roles[4]["permissions"]


async def test_roles_need_roles_read(client, database_url, tenant: Tenant) -> None:
    token = await owner_token(client, tenant)
    _, analyst = await join(client, database_url, token, "a@acme.test", "analyst")
    body = (await gql(client, ROLES, token=analyst)).json()
    assert body["errors"][0]["extensions"] == {"code": "FORBIDDEN", "requiredScopes": [["roles:read"]]}
    _, manager = await join(client, database_url, token, "m@acme.test", "manager")
    assert (await gql(client, ROLES, token=manager)).json()["data"]["roles"]
    refused = await create(client, manager, name="x", permissions=["quotas:read"])
    assert refused["errors"][0]["extensions"] == {"code": "FORBIDDEN", "requiredScopes": [["roles:manage"]]}


async def test_self_inheritance_is_a_cycle(client, tenant: Tenant) -> None:
    token = await owner_token(client, tenant)
    assert_bad_input(await create(client, token, name="loop", inherits=["loop"]), "itself")


async def test_two_and_three_role_cycles_are_refused(client, database_url, tenant: Tenant) -> None:
    token = await owner_token(client, tenant)
    assert "data" in await create(client, token, name="a", permissions=["quotas:read"])
    assert (await create(client, token, name="b", inherits=["a"]))["data"]
    assert_bad_input(await update(client, token, "a", permissions=["quotas:read"], inherits=["b"]), "cycle")
    assert (await create(client, token, name="c", inherits=["b"]))["data"]
    assert_bad_input(await update(client, token, "a", inherits=["c"]), "cycle")
    stored = sql(database_url, "SELECT inherits FROM roles WHERE name = 'a'")[0][0]
    assert stored in ([], "[]")


@pytest.mark.parametrize("permission", ["members:destroy", "MEMBERS:READ", "", "*", "roles:*"])
async def test_unknown_permissions_are_refused(client, tenant: Tenant, permission: str) -> None:
    token = await owner_token(client, tenant)
    assert_bad_input(
        await create(client, token, name="odd", permissions=["quotas:read", permission]), "Unknown permission"
    )


@pytest.mark.parametrize("permission", ["platform:organizations:read", "platform:audit:read"])
async def test_platform_permissions_are_refused(client, tenant: Tenant, permission: str) -> None:
    token = await owner_token(client, tenant)
    assert_bad_input(
        await create(client, token, name="operator", permissions=[permission]),
        "cannot be granted inside an organization",
    )
    assert_bad_input(await create(client, token, name="operator", inherits=["platform"]), "platform")


@pytest.mark.parametrize("name", ["viewer", "owner", "platform"])
async def test_builtin_names_cannot_be_redefined(client, tenant: Tenant, name: str) -> None:
    token = await owner_token(client, tenant)
    assert_bad_input(await create(client, token, name=name, permissions=["quotas:read"]), "built-in")
    assert error_codes(await update(client, token, name, permissions=["quotas:read"])) == ["BAD_USER_INPUT"]
    assert error_codes((await gql(client, DELETE, {"name": name}, token=token)).json()) == ["BAD_USER_INPUT"]


@pytest.mark.parametrize("name", ["Upper", "with space", "", "x" * 64, "dot.ted"])
async def test_bad_role_names_are_refused(client, tenant: Tenant, name: str) -> None:
    token = await owner_token(client, tenant)
    assert error_codes(await create(client, token, name=name, permissions=["quotas:read"])) == ["BAD_USER_INPUT"]


async def test_unknown_inherited_role_is_refused(client, tenant: Tenant) -> None:
    token = await owner_token(client, tenant)
    assert_bad_input(await create(client, token, name="heir", inherits=["ghost"]), "unknown role")


async def test_a_role_cannot_exceed_its_creator(client, database_url, tenant: Tenant) -> None:
    token = await owner_token(client, tenant)
    _, admin = await join(client, database_url, token, "adm@acme.test", "admin")
    assert_bad_input(await create(client, admin, name="billing", permissions=["plan:manage"]), "plan:manage")
    assert_bad_input(await create(client, admin, name="boss", inherits=["owner"]), "plan:manage")
    assert sql(database_url, "SELECT count(*) FROM roles")[0][0] == 0
    # what the admin holds is fine
    assert (await create(client, admin, name="keys", permissions=["apikeys:manage"]))["data"]


async def test_an_admin_cannot_touch_a_role_holding_more(client, database_url, tenant: Tenant) -> None:
    token = await owner_token(client, tenant)
    assert (await create(client, token, name="treasurer", permissions=["plan:manage"]))["data"]
    _, admin = await join(client, database_url, token, "adm@acme.test", "admin")
    changed = await update(client, admin, "treasurer", permissions=["quotas:read"])
    deleted = (await gql(client, DELETE, {"name": "treasurer"}, token=admin)).json()
    assert error_codes(changed) == error_codes(deleted) == ["FORBIDDEN"]
    assert changed["errors"][0]["extensions"]["requiredScopes"] == [["plan:manage"]]
    assert sql(database_url, "SELECT count(*) FROM roles WHERE name = 'treasurer'")[0][0] == 1


async def test_duplicate_name_is_a_conflict(client, tenant: Tenant) -> None:
    token = await owner_token(client, tenant)
    assert (await create(client, token, name="dup", permissions=["quotas:read"]))["data"]
    assert error_codes(await create(client, token, name="dup", permissions=["audit:read"])) == ["CONFLICT"]


async def test_the_same_name_in_another_tenant_is_independent(client, database_url, tenant: Tenant) -> None:
    other = await make_tenant(database_url, slug="globex", email="owner@globex.test")
    other_token = await owner_token(client, other)
    assert (await create(client, other_token, name="auditor", permissions=["audit:read"]))["data"]
    token = await owner_token(client, tenant)
    roles = (await gql(client, ROLES, token=token)).json()["data"]["roles"]
    assert "auditor" not in [r["name"] for r in roles]
    assert error_codes(await update(client, token, "auditor", permissions=["quotas:read"])) == ["NOT_FOUND"]
    assert error_codes((await gql(client, DELETE, {"name": "auditor"}, token=token)).json()) == ["NOT_FOUND"]
    assert (await create(client, token, name="auditor", permissions=["quotas:read"]))["data"]
    assert sql(database_url, "SELECT permissions FROM roles WHERE organization_id = :o", o=other.org_id)[0][0] in (
        ["audit:read"],
        '["audit:read"]',
    )


async def test_unknown_role_is_not_found(client, tenant: Tenant) -> None:
    token = await owner_token(client, tenant)
    assert error_codes(await update(client, token, "ghost", permissions=["quotas:read"])) == ["NOT_FOUND"]
    assert error_codes((await gql(client, DELETE, {"name": "ghost"}, token=token)).json()) == ["NOT_FOUND"]


async def test_a_role_is_not_renamed(client, tenant: Tenant) -> None:
    token = await owner_token(client, tenant)
    assert (await create(client, token, name="old", permissions=["quotas:read"]))["data"]
    body = (await gql(client, UPDATE_ROLE, {"name": "old", "input": role("new", ["quotas:read"])}, token=token)).json()
    assert_bad_input(body, "renamed")


async def test_custom_role_grants_its_permissions_to_members(client, database_url, tenant: Tenant) -> None:
    token = await owner_token(client, tenant)
    assert (await create(client, token, name="base", permissions=["audit:read"]))["data"]
    assert await create(client, token, name="auditor", permissions=["audit:verify"], inherits=["base", "viewer"])
    _, member = await join(client, database_url, token, "aud@acme.test", "auditor")
    assert (await permissions(client, member))["data"]["permissions"] == [
        "audit:read",
        "audit:verify",
        "organization:read",
        "quotas:read",
    ]


async def test_role_definition_change_applies_on_the_next_request(client, database_url, tenant: Tenant) -> None:
    token = await owner_token(client, tenant)
    assert (await create(client, token, name="auditor", permissions=["audit:read"]))["data"]
    _, member = await join(client, database_url, token, "aud@acme.test", "auditor")
    assert (await permissions(client, member))["data"]["permissions"] == ["audit:read"]
    assert (await update(client, token, "auditor", permissions=["reports:read"]))["data"]
    assert (await permissions(client, member))["data"]["permissions"] == ["reports:read"]


async def test_inherited_role_change_reaches_the_heirs(client, database_url, tenant: Tenant) -> None:
    token = await owner_token(client, tenant)
    assert (await create(client, token, name="base", permissions=["audit:read"]))["data"]
    assert (await create(client, token, name="heir", inherits=["base"]))["data"]
    _, member = await join(client, database_url, token, "h@acme.test", "heir")
    assert (await permissions(client, member))["data"]["permissions"] == ["audit:read"]
    assert (await update(client, token, "base", permissions=["quotas:read"]))["data"]
    assert (await permissions(client, member))["data"]["permissions"] == ["quotas:read"]


async def test_member_moved_to_a_custom_role_and_back(client, database_url, tenant: Tenant) -> None:
    token = await owner_token(client, tenant)
    assert (await create(client, token, name="auditor", permissions=["audit:read"]))["data"]
    membership_id, member = await join(client, database_url, token, "m@acme.test", "viewer")
    moved = (await gql(client, UPDATE, {"id": membership_id, "role": "auditor"}, token=token)).json()
    assert moved["data"]["updateMemberRole"]["role"] == "auditor"
    assert (await permissions(client, member))["data"]["permissions"] == ["audit:read"]
    assert role_of(database_url, membership_id) == "auditor"


async def test_deleting_a_held_or_inherited_role_is_a_conflict(client, database_url, tenant: Tenant) -> None:
    token = await owner_token(client, tenant)
    assert (await create(client, token, name="base", permissions=["audit:read"]))["data"]
    assert (await create(client, token, name="heir", inherits=["base"]))["data"]
    membership_id, _ = await join(client, database_url, token, "m@acme.test", "heir")
    held = (await gql(client, DELETE, {"name": "heir"}, token=token)).json()
    inherited = (await gql(client, DELETE, {"name": "base"}, token=token)).json()
    assert error_codes(held) == error_codes(inherited) == ["CONFLICT"]
    assert (await gql(client, UPDATE, {"id": membership_id, "role": "viewer"}, token=token)).json()["data"]
    assert (await gql(client, DELETE, {"name": "heir"}, token=token)).json()["data"] == {"deleteRole": True}
    assert (await gql(client, DELETE, {"name": "base"}, token=token)).json()["data"] == {"deleteRole": True}
    assert sql(database_url, "SELECT count(*) FROM roles")[0][0] == 0


async def test_oversized_inputs_are_bad_input(client, tenant: Tenant) -> None:
    token = await owner_token(client, tenant)
    assert error_codes(await create(client, token, name="d", permissions=["quotas:read"], description="x" * 501)) == [
        "BAD_USER_INPUT"
    ]
    assert error_codes(await create(client, token, name="d", permissions=["quotas:read"] * 65)) == ["BAD_USER_INPUT"]
    assert error_codes(await create(client, token, name="d", description="nul\x00")) == ["BAD_USER_INPUT"]
