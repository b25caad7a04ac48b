"""Team permissions: installing them, and how they join the vocabulary (built-in role grants, custom roles,
scopes, `decide()`). The installed set is process-wide; tests/conftest.py restores it after every test."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from authz import (
    BUILTIN_ROLE_PERMISSIONS,
    AuthMethod,
    Permission,
    Principal,
    PrincipalKind,
    Requirement,
    RoleDefinition,
    RoleError,
    TeamPermission,
    TeamPermissionError,
    can_grant,
    check_definition,
    decide,
    install_team_permissions,
    is_permission,
    is_tenant_permission,
    parse_permissions,
    permission_names,
    permissions_for_role,
    resolve_permissions,
    team_permissions,
    tenant_permissions,
)
from authz.roles import PLATFORM_ROLE, ROLE_ORDER

P = Permission
TENANT_ROLES = tuple(r.value for r in ROLE_ORDER)
ORDERS = (
    TeamPermission("orders:read", "Read orders", ("owner", "admin", "manager", "analyst", "viewer")),
    TeamPermission("orders:write", "Create and cancel orders", ("owner", "admin", "manager")),
    TeamPermission("orders:refund", "Refund orders", ("owner",)),
    TeamPermission("orders:audit-trail:read", "Read an order's history"),
)


def install_orders() -> None:
    install_team_permissions(ORDERS)


def role(name: str, *perms: str, inherits: tuple[str, ...] = ()) -> RoleDefinition:
    return RoleDefinition(name=name, permissions=frozenset(perms), inherits=inherits)


def user(permissions: frozenset[str], scopes: frozenset[str] | None = None) -> Principal:
    return Principal(
        kind=PrincipalKind.USER,
        subject_id="u",
        organization_id="o",
        permissions=permissions,
        scopes=scopes,
        auth_method=AuthMethod.PASSWORD,
        plan="free",
    )


def problems_of(permissions: list[TeamPermission]) -> tuple[str, ...]:
    with pytest.raises(TeamPermissionError) as caught:
        install_team_permissions(permissions)
    assert isinstance(caught.value, ValueError)
    for problem in caught.value.problems:
        assert problem in str(caught.value)
    return caught.value.problems


# -- installing ---------------------------------------------------------------------------------------


def test_nothing_is_installed_by_default() -> None:
    assert team_permissions() == {}
    assert not is_permission("orders:read")
    assert permission_names() == {p.value for p in Permission}
    assert tenant_permissions() == {p for p in Permission if not p.value.startswith("platform:")}
    for name in (*TENANT_ROLES, PLATFORM_ROLE):
        assert permissions_for_role(name) == BUILTIN_ROLE_PERMISSIONS[name]


def test_installed_permissions_join_the_vocabulary() -> None:
    install_orders()
    assert list(team_permissions()) == [p.name for p in ORDERS]
    assert team_permissions()["orders:write"] == ORDERS[1]
    for p in ORDERS:
        assert is_permission(p.name)
        assert is_tenant_permission(p.name)
        assert p.name in permission_names()
    assert not is_permission("orders:delete")


def test_the_installed_mapping_is_read_only() -> None:
    install_orders()
    with pytest.raises(TypeError):
        team_permissions()["orders:delete"] = TeamPermission("orders:delete")  # type: ignore[index]


@pytest.mark.parametrize(
    "name", ["orders:read", "a:b", "orders:audit-trail:read", "billing-v2:read", "x1:y2:z3", "shop:order-lines"]
)
def test_valid_names(name: str) -> None:
    install_team_permissions([TeamPermission(name)])
    assert is_permission(name)


@pytest.mark.parametrize(
    "name",
    ["", "orders", "Orders:read", "orders:Read", "orders:", ":read", "orders:read:", "orders::read", "1orders:read",
     "orders:1read", "orders_x:read", "orders:re ad", "orders.read", "orders:-read", "orders:read\n", "ordérs:read"],
)  # fmt: skip
def test_malformed_name_is_refused(name: str) -> None:
    (problem,) = problems_of([TeamPermission(name)])
    assert repr(name) in problem
    assert "<domain>:<verb>" in problem


@pytest.mark.parametrize("name", ["platform:orders:read", "platform:audit:read", "platform:x"])
def test_platform_prefix_is_reserved(name: str) -> None:
    (problem,) = problems_of([TeamPermission(name, roles=("owner",))])
    assert repr(name) in problem
    assert "reserved" in problem
    assert name not in team_permissions()


@pytest.mark.parametrize("name", sorted(p.value for p in Permission if not p.value.startswith("platform:")))
def test_builtin_name_cannot_be_redeclared(name: str) -> None:
    (problem,) = problems_of([TeamPermission(name, roles=("viewer",))])
    assert "built-in permission" in problem
    assert permissions_for_role("viewer") == BUILTIN_ROLE_PERMISSIONS["viewer"]


def test_duplicate_is_refused() -> None:
    (problem,) = problems_of([TeamPermission("orders:read"), TeamPermission("orders:read", roles=("owner",))])
    assert "'orders:read' is declared more than once" in problem


@pytest.mark.parametrize(
    ("roles", "fragment"),
    [
        (("platform",), "the platform role cannot hold a team permission"),
        (("superuser",), "unknown role 'superuser'"),
        (("Owner",), "unknown role 'Owner'"),
        ("owner", "roles is a list of built-in role names"),
    ],
)
def test_roles_must_be_builtin_tenant_roles(roles: tuple[str, ...], fragment: str) -> None:
    (problem,) = problems_of([TeamPermission("orders:read", roles=roles)])
    assert fragment in problem


def test_every_problem_is_reported_at_once_and_nothing_is_installed() -> None:
    install_orders()
    problems = problems_of(
        [
            TeamPermission("invoices:read", roles=("viewer",)),
            TeamPermission("platform:invoices:read"),
            TeamPermission("Invoices:write"),
            TeamPermission("audit:read"),
            TeamPermission("invoices:read"),
            TeamPermission("invoices:void", roles=("owner", "platform", "ghost")),
        ]
    )
    assert len(problems) == 6
    for fragment in (
        "'platform:invoices:read'",
        "'Invoices:write'",
        "'audit:read' is a built-in permission",
        "'invoices:read' is declared more than once",
        "'invoices:void': the platform role",
        "'invoices:void': unknown role 'ghost'",
    ):
        assert any(fragment in p for p in problems), (fragment, problems)
    # refused as a whole: what was installed stays
    assert list(team_permissions()) == [p.name for p in ORDERS]
    assert not is_permission("invoices:read")


def test_reinstalling_replaces_the_whole_set() -> None:
    install_orders()
    install_team_permissions([TeamPermission("invoices:read", "Read invoices", ("viewer",))])
    assert list(team_permissions()) == ["invoices:read"]
    assert not is_permission("orders:read")
    assert "orders:read" not in permissions_for_role("owner")
    assert "invoices:read" not in permissions_for_role("owner")
    assert permissions_for_role("viewer") == BUILTIN_ROLE_PERMISSIONS["viewer"] | {"invoices:read"}
    install_team_permissions([])
    assert team_permissions() == {}
    assert permissions_for_role("viewer") == BUILTIN_ROLE_PERMISSIONS["viewer"]


def test_repeated_roles_count_once() -> None:
    install_team_permissions([TeamPermission("orders:read", roles=("viewer", "viewer", "owner"))])
    assert team_permissions()["orders:read"].roles == ("viewer", "owner")


# -- built-in roles -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", TENANT_ROLES)
def test_builtin_role_holds_exactly_the_team_permissions_listing_it(name: str) -> None:
    install_orders()
    listed = {p.name for p in ORDERS if name in p.roles}
    assert permissions_for_role(name) == BUILTIN_ROLE_PERMISSIONS[name] | listed
    assert resolve_permissions(name, {}) == permissions_for_role(name)


def test_grants_are_exactly_as_configured_not_inherited_upwards() -> None:
    install_team_permissions([TeamPermission("orders:export", roles=("analyst",))])
    assert [r for r in TENANT_ROLES if "orders:export" in permissions_for_role(r)] == ["analyst"]


def test_platform_role_and_unknown_roles_hold_no_team_permission() -> None:
    install_orders()
    assert permissions_for_role(PLATFORM_ROLE) == BUILTIN_ROLE_PERMISSIONS[PLATFORM_ROLE]
    assert permissions_for_role("superuser") == frozenset()


@given(st.lists(st.sets(st.sampled_from(TENANT_ROLES)), max_size=5))
def test_property_role_grants_follow_the_declarations(declared: list[set[str]]) -> None:
    team = [TeamPermission(f"team:p{i}", roles=tuple(sorted(roles))) for i, roles in enumerate(declared)]
    install_team_permissions(team)
    for name in TENANT_ROLES:
        own = permissions_for_role(name) - BUILTIN_ROLE_PERMISSIONS[name]
        assert own == {p.name for p in team if name in p.roles}


# -- custom roles -------------------------------------------------------------------------------------


def test_a_team_permission_is_refused_until_installed() -> None:
    with pytest.raises(RoleError, match="Unknown permission: 'orders:read'"):
        parse_permissions(["orders:read"])
    install_orders()
    parsed = parse_permissions(["orders:read", "audit:read"])
    assert parsed == {"orders:read", P.AUDIT_READ}
    assert {type(p) for p in parsed} == {str, Permission}
    with pytest.raises(RoleError, match="'orders:delete'"):
        parse_permissions(["orders:read", "orders:delete"])


def test_platform_permissions_stay_ungrantable_with_team_permissions_installed() -> None:
    install_orders()
    with pytest.raises(RoleError, match="cannot be granted"):
        parse_permissions(["orders:read", "platform:audit:read"])


def test_custom_role_grants_a_team_permission() -> None:
    install_orders()
    roles = {"clerk": role("clerk", "orders:write", P.ORGANIZATION_READ)}
    assert resolve_permissions("clerk", roles) == {"orders:write", P.ORGANIZATION_READ}
    check_definition(roles["clerk"], {}, permissions_for_role("manager"))


def test_custom_role_inherits_team_permissions_of_builtin_and_custom_roles() -> None:
    install_orders()
    roles = {
        "refunds": role("refunds", "orders:refund"),
        "desk": role("desk", "orders:audit-trail:read", inherits=("refunds", "analyst")),
    }
    assert resolve_permissions("desk", roles) == (
        permissions_for_role("analyst") | {"orders:read", "orders:refund", "orders:audit-trail:read"}
    )


def test_a_role_cannot_exceed_its_creator_in_team_permissions() -> None:
    install_orders()
    with pytest.raises(RoleError, match="orders:refund") as caught:
        check_definition(role("refunds", "orders:refund", P.ORGANIZATION_READ), {}, permissions_for_role("admin"))
    assert "organization:read" not in caught.value.message
    with pytest.raises(RoleError, match="orders:write"):
        check_definition(role("deputy", inherits=("manager",)), {}, permissions_for_role("analyst"))


def test_granting_a_role_needs_its_team_permissions() -> None:
    install_orders()
    decision = can_grant(permissions_for_role("admin"), "owner", {})
    assert not decision
    assert decision.required_scopes == (("orders:refund", "plan:manage"),)
    assert can_grant(permissions_for_role("owner"), "owner", {})


def test_a_team_permission_no_longer_installed_grants_nothing() -> None:
    install_orders()
    roles = {"clerk": role("clerk", "orders:write", P.AUDIT_READ, inherits=("viewer",))}
    assert "orders:write" in resolve_permissions("clerk", roles)
    install_team_permissions([])
    assert resolve_permissions("clerk", roles) == BUILTIN_ROLE_PERMISSIONS["viewer"] | {P.AUDIT_READ}


# -- decide -------------------------------------------------------------------------------------------


def test_decide_on_a_team_permission() -> None:
    install_orders()
    requirement = Requirement.scopes(("orders:write",), ("orders:refund", P.AUDIT_READ))
    assert decide(user(permissions_for_role("manager")), requirement)
    denied = decide(user(permissions_for_role("analyst")), requirement)
    assert not denied
    assert denied.required_scopes == (("orders:write",), ("orders:refund", "audit:read"))
    assert all(type(s) is str for group in denied.required_scopes for s in group)


def test_a_key_is_limited_to_its_team_scopes() -> None:
    install_orders()
    key = user(permissions_for_role("owner"), scopes=frozenset({"orders:read", "orders:bogus"}))
    assert key.effective_permissions == {"orders:read"}
    assert decide(key, Requirement.permission("orders:read"))
    assert not decide(key, Requirement.permission("orders:write"))
