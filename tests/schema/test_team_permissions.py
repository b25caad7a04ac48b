"""Team permissions through the GraphQL API: custom roles and API keys may hold them, built-in roles hold the
ones that list them, and a name the deployment did not declare is still refused."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from authz import Permission, TeamPermission, install_team_permissions
from schema.directives import RequiresScopes, requirement_from_directives
from tests.conftest import Tenant, error_codes, gql
from tests.schema.test_api_keys import create_key, with_key
from tests.schema.test_members import join, owner_token, permissions
from tests.schema.test_roles import ROLES, assert_bad_input, create

ORDERS = (
    TeamPermission("orders:read", "Read orders", ("owner", "admin", "manager", "analyst", "viewer")),
    TeamPermission("orders:write", "Create and cancel orders", ("owner", "admin", "manager")),
    TeamPermission("orders:refund", "Refund orders", ("owner",)),
)


@pytest.fixture
def orders(app: Any) -> None:
    """Installed once the app exists, as `create_app` installs the permissions of its own configuration."""
    install_team_permissions(ORDERS)


async def test_builtin_roles_list_the_team_permissions_they_hold(
    client: httpx.AsyncClient, tenant: Tenant, orders: None
) -> None:
    token = await owner_token(client, tenant)
    roles = {r["name"]: r["permissions"] for r in (await gql(client, ROLES, token=token)).json()["data"]["roles"]}
    assert roles["viewer"] == ["orders:read", "organization:read", "quotas:read"]
    assert {"orders:read", "orders:write", "orders:refund"} <= set(roles["owner"])
    assert "orders:refund" not in roles["admin"]
    held = (await permissions(client, token))["data"]["permissions"]
    assert {"orders:read", "orders:write", "orders:refund"} <= set(held)
    assert held == sorted(held)


async def test_a_custom_role_grants_and_inherits_team_permissions(
    client: httpx.AsyncClient, database_url: str, tenant: Tenant, orders: None
) -> None:
    token = await owner_token(client, tenant)
    made = await create(client, token, name="refunds", permissions=["orders:refund", "audit:read"])
    assert made["data"]["createRole"]["permissions"] == ["audit:read", "orders:refund"], made
    assert (await create(client, token, name="desk", inherits=["refunds", "viewer"]))["data"]
    _, member = await join(client, database_url, token, "desk@acme.test", "desk")
    assert (await permissions(client, member))["data"]["permissions"] == [
        "audit:read",
        "orders:read",
        "orders:refund",
        "organization:read",
        "quotas:read",
    ]


async def test_a_role_cannot_hold_a_team_permission_its_creator_lacks(
    client: httpx.AsyncClient, database_url: str, tenant: Tenant, orders: None
) -> None:
    token = await owner_token(client, tenant)
    _, admin = await join(client, database_url, token, "adm@acme.test", "admin")
    assert_bad_input(await create(client, admin, name="refunds", permissions=["orders:refund"]), "orders:refund")
    assert (await create(client, admin, name="writer", permissions=["orders:write"]))["data"]


async def test_an_api_key_carries_team_scopes(client: httpx.AsyncClient, tenant: Tenant, orders: None) -> None:
    token = await owner_token(client, tenant)
    body = await create_key(client, token, scopes=["orders:refund", "organization:read"])
    assert body.get("data"), body
    created = body["data"]["createApiKey"]
    assert created["apiKey"]["scopes"] == ["orders:refund", "organization:read"]
    used = (await gql(client, "{ permissions }", headers=with_key(created["secret"]))).json()
    assert used["data"]["permissions"] == ["orders:refund", "organization:read"]


async def test_an_api_key_cannot_carry_a_team_scope_its_creator_lacks(
    client: httpx.AsyncClient, database_url: str, tenant: Tenant, orders: None
) -> None:
    token = await owner_token(client, tenant)
    _, admin = await join(client, database_url, token, "adm@acme.test", "admin")
    body = await create_key(client, admin, scopes=["orders:read", "orders:refund"])
    assert error_codes(body) == ["FORBIDDEN"]
    assert body["errors"][0]["extensions"]["requiredScopes"] == [["orders:refund"]]


async def test_an_undeclared_permission_is_still_refused(
    client: httpx.AsyncClient, tenant: Tenant, orders: None
) -> None:
    token = await owner_token(client, tenant)
    assert_bad_input(await create(client, token, name="x", permissions=["orders:delete"]), "'orders:delete'")
    key = await create_key(client, token, scopes=["orders:read", "orders:delete"])
    assert error_codes(key) == ["BAD_USER_INPUT"]
    assert "'orders:delete'" in key["errors"][0]["message"]
    platform = await create_key(client, token, scopes=["platform:audit:read"])
    assert error_codes(platform) == ["BAD_USER_INPUT"]


async def test_without_the_declaration_a_team_permission_is_unknown(client: httpx.AsyncClient, tenant: Tenant) -> None:
    token = await owner_token(client, tenant)
    assert_bad_input(await create(client, token, name="x", permissions=["orders:read"]), "'orders:read'")
    assert error_codes(await create_key(client, token, scopes=["orders:read"])) == ["BAD_USER_INPUT"]


def test_a_directive_may_require_an_installed_team_permission() -> None:
    directive = RequiresScopes(scopes=[["orders:read", "audit:read"], ["orders:refund"]])
    with pytest.raises(ValueError, match="'orders:read'"):
        requirement_from_directives([directive])
    install_team_permissions(ORDERS)
    requirement = requirement_from_directives([directive])
    assert requirement is not None
    assert requirement.any_of == (("orders:read", Permission.AUDIT_READ), ("orders:refund",))
