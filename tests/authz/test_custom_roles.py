"""Custom roles: names, permissions, inheritance, the graph check and the "no more than you hold" rule."""

from __future__ import annotations

from collections.abc import Mapping

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from authz import (
    BUILTIN_ROLE_PERMISSIONS,
    Permission,
    RoleDefinition,
    RoleError,
    can_grant,
    check_definition,
    check_role_graph,
    parse_permissions,
    permissions_for_role,
    resolve_permissions,
    role_rank,
    validate_role_name,
)
from authz.permissions import PLATFORM_PERMISSIONS, TENANT_PERMISSIONS
from authz.roles import ROLE_ORDER

P = Permission
TENANT_ROLES = tuple(r.value for r in ROLE_ORDER)
OWNER = permissions_for_role("owner")


def role(name: str, *perms: Permission, inherits: tuple[str, ...] = ()) -> RoleDefinition:
    return RoleDefinition(name=name, permissions=frozenset(perms), inherits=inherits)


def graph(*definitions: RoleDefinition) -> dict[str, RoleDefinition]:
    return {d.name: d for d in definitions}


# -- names ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["auditor", "a", "billing-viewer", "team_2", "x" * 63, "0day"])
def test_valid_role_name(name: str) -> None:
    validate_role_name(name)


@pytest.mark.parametrize("name", ["", "x" * 64, "Auditor", "has space", "dot.ted", "émile", "a\n", "a/b"])
def test_invalid_role_name(name: str) -> None:
    with pytest.raises(RoleError) as caught:
        validate_role_name(name)
    assert caught.value.field == "name"


@pytest.mark.parametrize("name", ["viewer", "analyst", "manager", "admin", "owner", "platform"])
def test_builtin_names_cannot_be_redefined(name: str) -> None:
    with pytest.raises(RoleError, match="built-in"):
        validate_role_name(name)
    with pytest.raises(RoleError, match="built-in"):
        check_definition(role(name, P.ORGANIZATION_READ), {}, OWNER)


def test_builtin_name_in_stored_data_is_refused_and_ignored() -> None:
    bad = graph(role("viewer", P.PLAN_MANAGE))
    with pytest.raises(RoleError, match="built-in"):
        check_role_graph(bad)
    assert resolve_permissions("viewer", bad) == BUILTIN_ROLE_PERMISSIONS["viewer"]


# -- permissions ------------------------------------------------------------------------------------


def test_parse_known_permissions() -> None:
    assert parse_permissions(["reports:read", "audit:read", "reports:read"]) == {P.REPORTS_READ, P.AUDIT_READ}
    assert parse_permissions([]) == frozenset()


@pytest.mark.parametrize("name", ["reports:write", "REPORTS:READ", "", "*", "organization:*"])
def test_unknown_permission_is_refused_by_name(name: str) -> None:
    with pytest.raises(RoleError) as caught:
        parse_permissions(["organization:read", name])
    assert repr(name) in caught.value.message
    assert caught.value.field == "permissions"


@pytest.mark.parametrize("name", sorted(p.value for p in PLATFORM_PERMISSIONS))
def test_platform_permission_is_never_grantable_in_a_tenant(name: str) -> None:
    with pytest.raises(RoleError, match="cannot be granted") as caught:
        parse_permissions([name])
    assert name in caught.value.message


def test_platform_permission_in_a_definition_is_refused() -> None:
    platform_creator = OWNER | PLATFORM_PERMISSIONS
    with pytest.raises(RoleError, match="platform:audit:read"):
        check_definition(role("ops", P.PLATFORM_AUDIT_READ), {}, platform_creator)


def test_platform_role_cannot_be_inherited() -> None:
    with pytest.raises(RoleError, match="platform"):
        check_role_graph(graph(role("ops", inherits=("platform",))))
    assert resolve_permissions("ops", graph(role("ops", inherits=("platform",)))) == frozenset()


def test_platform_permission_in_stored_data_is_not_granted() -> None:
    assert resolve_permissions("ops", graph(role("ops", P.PLATFORM_AUDIT_READ, P.AUDIT_READ))) == {P.AUDIT_READ}


# -- resolution -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [*TENANT_ROLES, "platform"])
def test_builtin_role_resolves_to_its_table_row(name: str) -> None:
    assert resolve_permissions(name, {}) == BUILTIN_ROLE_PERMISSIONS[name]


def test_unknown_role_resolves_to_nothing() -> None:
    assert resolve_permissions("ghost", graph(role("auditor", P.AUDIT_READ))) == frozenset()


def test_custom_role_adds_own_permissions_to_inherited_ones() -> None:
    roles = graph(role("auditor", P.AUDIT_READ, P.AUDIT_VERIFY, inherits=("viewer",)))
    assert resolve_permissions("auditor", roles) == {P.ORGANIZATION_READ, P.QUOTAS_READ, P.AUDIT_READ, P.AUDIT_VERIFY}


def test_inheritance_is_transitive_through_custom_and_builtin_roles() -> None:
    roles = graph(
        role("a", P.SSO_READ, inherits=("b",)),
        role("b", P.BILLING_READ, inherits=("c",)),
        role("c", P.AUDIT_READ, inherits=("analyst",)),
    )
    assert resolve_permissions("a", roles) == {P.SSO_READ, P.BILLING_READ, P.AUDIT_READ} | permissions_for_role(
        "analyst"
    )


def test_dangling_inheritance_grants_nothing_extra() -> None:
    assert resolve_permissions("a", graph(role("a", P.AUDIT_READ, inherits=("gone",)))) == {P.AUDIT_READ}


# -- the graph --------------------------------------------------------------------------------------


def test_valid_graph_passes() -> None:
    check_role_graph(
        graph(
            role("a", P.SSO_READ, inherits=("b", "manager")),
            role("b", P.BILLING_READ, inherits=("c",)),
            role("c", P.AUDIT_READ, inherits=("viewer",)),
        )
    )
    check_role_graph({})


@pytest.mark.parametrize(
    ("roles", "cycle"),
    [
        (graph(role("a", inherits=("a",))), "a -> a"),
        (graph(role("a", inherits=("b",)), role("b", inherits=("a",))), "a -> b -> a"),
        (
            graph(role("a", inherits=("b",)), role("b", inherits=("c",)), role("c", inherits=("a",))),
            "a -> b -> c -> a",
        ),
        (
            graph(role("x", inherits=("viewer", "a")), role("a", inherits=("b",)), role("b", inherits=("a",))),
            "a -> b -> a",
        ),
    ],
    ids=["length-1", "length-2", "length-3", "reached-from-outside"],
)
def test_cycle_is_refused_and_named(roles: dict[str, RoleDefinition], cycle: str) -> None:
    with pytest.raises(RoleError) as caught:
        check_role_graph(roles)
    assert cycle in caught.value.message
    assert caught.value.field == "inherits"


def test_inheriting_an_unknown_role_is_refused() -> None:
    with pytest.raises(RoleError, match="'ghost'") as caught:
        check_role_graph(graph(role("a", inherits=("ghost",))))
    assert caught.value.field == "inherits"


def test_role_stored_under_another_name_is_refused() -> None:
    with pytest.raises(RoleError):
        check_role_graph({"a": role("b")})


@pytest.mark.parametrize("size", [1, 2, 3, 7])
def test_resolve_terminates_on_a_cycle(size: int) -> None:
    names = [f"r{i}" for i in range(size)]
    perms = sorted(TENANT_PERMISSIONS)
    roles = graph(*(role(n, perms[i], inherits=(names[(i + 1) % size],)) for i, n in enumerate(names)))
    expected = frozenset(perms[:size])
    for n in names:
        assert resolve_permissions(n, roles) == expected


# -- check_definition -------------------------------------------------------------------------------


def test_definition_within_the_creator_is_accepted() -> None:
    check_definition(role("auditor", P.AUDIT_VERIFY, inherits=("analyst",)), {}, permissions_for_role("admin"))


def test_definition_beyond_the_creator_lists_what_is_missing() -> None:
    existing = graph(role("billing", P.BILLING_READ))
    with pytest.raises(RoleError) as caught:
        check_definition(
            role("x", P.AUDIT_READ, inherits=("billing", "viewer")), existing, permissions_for_role("manager")
        )
    assert "billing:read" in caught.value.message
    assert "audit:read" not in caught.value.message


def test_inherited_builtin_counts_against_the_creator() -> None:
    with pytest.raises(RoleError, match="plan:manage"):
        check_definition(role("boss", inherits=("owner",)), {}, permissions_for_role("admin"))


def test_redefinition_that_creates_a_cycle_is_refused() -> None:
    existing = graph(role("a", inherits=("b",)), role("b"))
    with pytest.raises(RoleError, match="a -> b -> a"):
        check_definition(role("b", inherits=("a",)), existing, OWNER)


def test_redefinition_replaces_the_old_definition() -> None:
    existing = graph(role("a", P.PLAN_MANAGE))
    check_definition(role("a", P.AUDIT_READ), existing, permissions_for_role("analyst"))


# -- granting ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("granter", TENANT_ROLES)
@pytest.mark.parametrize("target", TENANT_ROLES)
def test_can_grant_builtin_pairs(granter: str, target: str) -> None:
    decision = can_grant(permissions_for_role(granter), target, {})
    assert decision.allowed is (role_rank(target) <= role_rank(granter))
    if not decision:
        missing = permissions_for_role(target) - permissions_for_role(granter)
        assert decision.required_scopes == (tuple(sorted(p.value for p in missing)),)


def test_manager_cannot_grant_admin() -> None:
    decision = can_grant(permissions_for_role("manager"), "admin", {})
    assert not decision
    assert "roles:manage" in decision.required_scopes[0]


def test_owner_can_grant_anything_in_the_tenant() -> None:
    roles = graph(role("all", *TENANT_PERMISSIONS), role("auditor", P.AUDIT_VERIFY, inherits=("all",)))
    for name in [*TENANT_ROLES, "all", "auditor", "ghost"]:
        assert can_grant(OWNER, name, roles)


def test_owner_cannot_grant_the_platform_role() -> None:
    decision = can_grant(OWNER, "platform", {})
    assert not decision
    assert decision.required_scopes == (tuple(sorted(p.value for p in PLATFORM_PERMISSIONS)),)


def test_can_grant_custom_role_checks_its_inherited_permissions() -> None:
    roles = graph(role("deputy", P.MEMBERS_READ, inherits=("admin",)))
    assert not can_grant(permissions_for_role("manager"), "deputy", roles)
    assert can_grant(permissions_for_role("admin"), "deputy", roles)


@pytest.mark.parametrize(("name", "rank"), [*((r, i) for i, r in enumerate(TENANT_ROLES)), ("platform", -1), ("x", -1)])
def test_role_rank(name: str, rank: int) -> None:
    assert role_rank(name) == rank


# -- properties -------------------------------------------------------------------------------------

NAMES = ("r0", "r1", "r2", "r3", "r4")
tenant_perms = st.frozensets(st.sampled_from(sorted(TENANT_PERMISSIONS)))
parents = st.lists(st.sampled_from(NAMES + TENANT_ROLES + ("ghost",)), max_size=3).map(tuple)


@st.composite
def role_graphs(draw: st.DrawFn) -> dict[str, RoleDefinition]:
    """Arbitrary stored data: cycles, dangling parents and all."""
    chosen = draw(st.lists(st.sampled_from(NAMES), unique=True, max_size=len(NAMES)))
    return {n: RoleDefinition(name=n, permissions=draw(tenant_perms), inherits=draw(parents)) for n in chosen}


def closure(name: str, custom: Mapping[str, RoleDefinition]) -> set[str]:
    seen: set[str] = set()
    todo = [name]
    while todo:
        current = todo.pop()
        if current not in seen:
            seen.add(current)
            if current in custom and current not in BUILTIN_ROLE_PERMISSIONS:
                todo.extend(custom[current].inherits)
    return seen


@given(role_graphs())
def test_property_inheritance_is_transitive(custom: dict[str, RoleDefinition]) -> None:
    for name, definition in custom.items():
        resolved = resolve_permissions(name, custom)
        assert definition.permissions <= resolved
        for parent in definition.inherits:
            assert resolve_permissions(parent, custom) <= resolved
            for grandparent in custom[parent].inherits if parent in custom else ():
                assert resolve_permissions(grandparent, custom) <= resolved


@given(role_graphs(), st.sampled_from(sorted(TENANT_PERMISSIONS)))
def test_property_deny_wins(custom: dict[str, RoleDefinition], permission: Permission) -> None:
    for name in (*NAMES, *TENANT_ROLES, "ghost"):
        holders = closure(name, custom)
        granted_somewhere = any(
            permission in (BUILTIN_ROLE_PERMISSIONS[h] if h in BUILTIN_ROLE_PERMISSIONS else custom[h].permissions)
            for h in holders
            if h in BUILTIN_ROLE_PERMISSIONS or h in custom
        )
        if not granted_somewhere:
            assert permission not in resolve_permissions(name, custom)


@given(role_graphs())
def test_property_resolve_terminates_and_is_deterministic(custom: dict[str, RoleDefinition]) -> None:
    reordered = dict(reversed(list(custom.items())))
    for name in (*NAMES, *TENANT_ROLES, "ghost"):
        first = resolve_permissions(name, custom)
        assert first == resolve_permissions(name, custom) == resolve_permissions(name, reordered)
        assert first <= TENANT_PERMISSIONS


creators = st.one_of(tenant_perms, st.sampled_from(TENANT_ROLES).map(permissions_for_role))
known_parents = st.lists(st.sampled_from(NAMES + TENANT_ROLES), max_size=3).map(tuple)


@settings(max_examples=300)
@given(role_graphs(), creators, st.sampled_from(NAMES), tenant_perms, known_parents)
def test_property_custom_role_never_exceeds_its_creator(
    custom: dict[str, RoleDefinition],
    creator: frozenset[Permission],
    name: str,
    own: frozenset[Permission],
    inherits: tuple[str, ...],
) -> None:
    definition = RoleDefinition(name=name, permissions=own, inherits=inherits)
    try:
        check_definition(definition, custom, creator)
    except RoleError:
        return
    merged = {**custom, name: definition}
    assert resolve_permissions(name, merged) <= creator
    assert can_grant(creator, name, merged)


@given(role_graphs())
def test_property_accepted_graph_has_no_cycle(custom: dict[str, RoleDefinition]) -> None:
    try:
        check_role_graph(custom)
    except RoleError:
        return
    for name in custom:
        assert all(name not in closure(p, custom) for p in custom[name].inherits)


@given(tenant_perms, st.sampled_from(TENANT_ROLES), st.sampled_from(TENANT_ROLES))
def test_property_grant_follows_the_subset_rule(held: frozenset[Permission], target: str, other: str) -> None:
    custom = graph(role("mix", inherits=(target, other)))
    needed = permissions_for_role(target) | permissions_for_role(other)
    assert bool(can_grant(held, "mix", custom)) is (needed <= held)
