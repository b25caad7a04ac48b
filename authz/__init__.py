"""Authorization: the permission vocabulary (built-in and the team's own), built-in and custom roles, the
Principal and `decide()`.

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
from authz.permissions import ALL_PERMISSION_NAMES, Permission
from authz.policy import ALLOW, Decision, Requirement, decide, plan_at_least
from authz.principal import AuthMethod, Principal, PrincipalKind, anonymous
from authz.roles import BUILTIN_ROLE_PERMISSIONS, BuiltinRole, is_builtin_role
from authz.vocabulary import (
    TeamPermission,
    TeamPermissionError,
    install_team_permissions,
    is_permission,
    is_tenant_permission,
    permission_names,
    permissions_for_role,
    team_permissions,
    tenant_permissions,
)

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
    "TeamPermission",
    "TeamPermissionError",
    "anonymous",
    "can_grant",
    "check_definition",
    "check_role_graph",
    "decide",
    "install_team_permissions",
    "is_builtin_role",
    "is_permission",
    "is_tenant_permission",
    "parse_permissions",
    "permission_names",
    "permissions_for_role",
    "plan_at_least",
    "resolve_permissions",
    "role_rank",
    "team_permissions",
    "tenant_permissions",
    "validate_role_name",
]
