"""Built-in roles: `viewer` ⊂ `analyst` ⊂ `manager` ⊂ `admin` ⊂ `owner`, plus the platform operator.

Each role's permission set is the contract's table; a role includes everything of the one below it.
`BUILTIN_ROLE_PERMISSIONS` holds the built-in permissions only: what a role holds, with the team permissions
that list it, is `authz.vocabulary.permissions_for_role`.
"""

from __future__ import annotations

from enum import StrEnum

from authz.permissions import PLATFORM_PERMISSIONS, Permission


class BuiltinRole(StrEnum):
    VIEWER = "viewer"
    ANALYST = "analyst"
    MANAGER = "manager"
    ADMIN = "admin"
    OWNER = "owner"


PLATFORM_ROLE = "platform"

_P = Permission
_OWN: dict[BuiltinRole, frozenset[Permission]] = {
    BuiltinRole.VIEWER: frozenset({_P.ORGANIZATION_READ, _P.QUOTAS_READ}),
    BuiltinRole.ANALYST: frozenset({_P.REPORTS_READ, _P.REPORTS_GENERATE, _P.AUDIT_READ}),
    BuiltinRole.MANAGER: frozenset({_P.MEMBERS_READ, _P.MEMBERS_MANAGE, _P.ROLES_READ, _P.APIKEYS_READ}),
    BuiltinRole.ADMIN: frozenset(
        {
            _P.APIKEYS_MANAGE,
            _P.ROLES_MANAGE,
            _P.SSO_READ,
            _P.SSO_MANAGE,
            _P.SECURITY_READ,
            _P.SECURITY_MANAGE,
            _P.ORGANIZATION_UPDATE,
            _P.ORGANIZATIONS_CREATE,
            _P.AUDIT_VERIFY,
            _P.BILLING_READ,
        }
    ),
    BuiltinRole.OWNER: frozenset({_P.PLAN_MANAGE}),
}

ROLE_ORDER: tuple[BuiltinRole, ...] = tuple(BuiltinRole)


def _cumulative() -> dict[str, frozenset[Permission]]:
    result: dict[str, frozenset[Permission]] = {}
    acc: frozenset[Permission] = frozenset()
    for role in ROLE_ORDER:
        acc = acc | _OWN[role]
        result[role.value] = acc
    # the operator reads and verifies the audit log of every tenant (`platform:audit:read` widens the scope)
    result[PLATFORM_ROLE] = PLATFORM_PERMISSIONS | {_P.AUDIT_READ, _P.AUDIT_VERIFY}
    return result


BUILTIN_ROLE_PERMISSIONS: dict[str, frozenset[Permission]] = _cumulative()


def is_builtin_role(name: str) -> bool:
    return name in BUILTIN_ROLE_PERMISSIONS and name != PLATFORM_ROLE


def roles_allowed(permission: Permission) -> tuple[str, ...]:
    return tuple(r.value for r in ROLE_ORDER if permission in BUILTIN_ROLE_PERMISSIONS[r.value])
