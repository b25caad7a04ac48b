"""The policy module: built-in roles as the contract's table, `decide()` as Apollo's OR-of-ANDs."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from authz import (
    BUILTIN_ROLE_PERMISSIONS,
    AuthMethod,
    BuiltinRole,
    Permission,
    Principal,
    PrincipalKind,
    Requirement,
    anonymous,
    decide,
    permissions_for_role,
)
from authz.roles import ROLE_ORDER, roles_allowed

P = Permission


def user(role: str, *, scopes: frozenset[Permission] | None = None, plan: str = "free") -> Principal:
    return Principal(
        kind=PrincipalKind.USER,
        subject_id="u",
        organization_id="o",
        roles=(role,),
        permissions=permissions_for_role(role),
        scopes=scopes,
        auth_method=AuthMethod.PASSWORD,
        plan=plan,
    )


@pytest.mark.parametrize(
    ("permission", "lowest"),
    [
        (P.ORGANIZATION_READ, "viewer"),
        (P.QUOTAS_READ, "viewer"),
        (P.REPORTS_READ, "analyst"),
        (P.REPORTS_GENERATE, "analyst"),
        (P.AUDIT_READ, "analyst"),
        (P.MEMBERS_READ, "manager"),
        (P.MEMBERS_MANAGE, "manager"),
        (P.ROLES_READ, "manager"),
        (P.APIKEYS_READ, "manager"),
        (P.APIKEYS_MANAGE, "admin"),
        (P.ROLES_MANAGE, "admin"),
        (P.SSO_READ, "admin"),
        (P.SSO_MANAGE, "admin"),
        (P.ORGANIZATION_UPDATE, "admin"),
        (P.ORGANIZATIONS_CREATE, "admin"),
        (P.AUDIT_VERIFY, "admin"),
        (P.BILLING_READ, "admin"),
        (P.PLAN_MANAGE, "owner"),
    ],
)
def test_contract_table(permission: Permission, lowest: str) -> None:
    names = [r.value for r in ROLE_ORDER]
    expected = tuple(names[names.index(lowest) :])
    assert roles_allowed(permission) == expected


def test_no_tenant_role_holds_a_platform_permission() -> None:
    for role in BuiltinRole:
        assert not any(p.value.startswith("platform:") for p in BUILTIN_ROLE_PERMISSIONS[role.value])


def test_unknown_role_grants_nothing() -> None:
    assert permissions_for_role("superuser") == frozenset()
    assert not decide(user("superuser"), Requirement.permission(P.ORGANIZATION_READ))


def test_anonymous_is_refused_anything_authenticated() -> None:
    decision = decide(anonymous(), Requirement())
    assert not decision
    assert decision.reason == "authentication required"


def test_missing_permission_names_what_is_required() -> None:
    decision = decide(user("viewer"), Requirement.scopes((P.BILLING_READ,), (P.PLAN_MANAGE, P.AUDIT_READ)))
    assert not decision
    assert decision.required_scopes == (("billing:read",), ("plan:manage", "audit:read"))


def test_or_of_ands() -> None:
    req = Requirement.scopes((P.PLAN_MANAGE,), (P.MEMBERS_READ, P.ROLES_READ))
    assert decide(user("manager"), req)  # second group complete
    assert not decide(user("analyst"), req)  # neither group complete


def test_plan_requirement() -> None:
    req = Requirement(plan="professional")
    assert not decide(user("owner", plan="starter"), req).allowed
    assert decide(user("owner", plan="professional"), req)
    assert decide(user("owner", plan="enterprise"), req)
    assert decide(user("owner", plan="starter"), req).required_plan == "professional"


def test_scopes_narrow_a_principal() -> None:
    narrowed = user("owner", scopes=frozenset({P.ORGANIZATION_READ}))
    assert decide(narrowed, Requirement.permission(P.ORGANIZATION_READ))
    assert not decide(narrowed, Requirement.permission(P.PLAN_MANAGE))


roles = st.sampled_from([r.value for r in BuiltinRole])
perm_sets = st.frozensets(st.sampled_from(list(Permission)), max_size=6)


@given(roles, roles)
def test_role_order_is_inclusion(a: str, b: str) -> None:
    """Inheritance is transitive: a higher built-in role holds everything a lower one does."""
    names = [r.value for r in ROLE_ORDER]
    if names.index(a) <= names.index(b):
        assert BUILTIN_ROLE_PERMISSIONS[a] <= BUILTIN_ROLE_PERMISSIONS[b]


@given(
    roles,
    perm_sets,
    st.lists(st.lists(st.sampled_from(list(Permission)), min_size=1, max_size=3), min_size=1, max_size=3),
)
def test_scopes_never_widen(role: str, scopes: frozenset[Permission], groups: list[list[Permission]]) -> None:
    """Deny wins: whatever a scoped principal may do, the unscoped one may do too."""
    req = Requirement.scopes(*(tuple(g) for g in groups))
    if decide(user(role, scopes=scopes), req):
        assert decide(user(role), req)


@given(roles, st.lists(st.lists(st.sampled_from(list(Permission)), min_size=1, max_size=3), min_size=1, max_size=3))
def test_decision_matches_the_definition(role: str, groups: list[list[Permission]]) -> None:
    held = permissions_for_role(role)
    expected = any(all(p in held for p in g) for g in groups)
    assert bool(decide(user(role), Requirement.scopes(*(tuple(g) for g in groups)))) == expected
