"""Authorization: the permission vocabulary, built-in and custom roles, the Principal and `decide()`.

Pure functions over data; this package imports only the standard library.
"""

from authz.custom_roles import (
    RoleDefinition,
    RoleError,
    can_grant,
    check_definition,
    check_role_graph,
    parse_permissions,
    resolve_permissions,
    role_rank,
    validate_role_name,
)
from authz.permissions import ALL_PERMISSION_NAMES, Permission, is_permission
from authz.policy import ALLOW, Decision, Requirement, decide, plan_at_least
from authz.principal import AuthMethod, Principal, PrincipalKind, anonymous
from authz.roles import BUILTIN_ROLE_PERMISSIONS, BuiltinRole, is_builtin_role, permissions_for_role

__all__ = [
    "ALLOW",
    "ALL_PERMISSION_NAMES",
    "BUILTIN_ROLE_PERMISSIONS",
    "AuthMethod",
    "BuiltinRole",
    "Decision",
    "Permission",
    "Principal",
    "PrincipalKind",
    "Requirement",
    "RoleDefinition",
    "RoleError",
    "anonymous",
    "can_grant",
    "check_definition",
    "check_role_graph",
    "decide",
    "is_builtin_role",
    "is_permission",
    "parse_permissions",
    "permissions_for_role",
    "plan_at_least",
    "resolve_permissions",
    "role_rank",
    "validate_role_name",
]
