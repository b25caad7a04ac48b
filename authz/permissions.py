"""The permission vocabulary of the contract, as data.

A permission is also a scope: API keys carry a subset of these, users receive them through roles.
`platform:*` permissions belong to the operator role and are never granted inside a tenant. These are the
built-in permissions; a deployment adds its own (`authz.vocabulary`), and every check of a name against
the vocabulary goes through `authz.vocabulary` (`is_permission`, `tenant_permissions`).
"""

from __future__ import annotations

from enum import StrEnum


class Permission(StrEnum):
    ORGANIZATION_READ = "organization:read"
    QUOTAS_READ = "quotas:read"
    REPORTS_READ = "reports:read"
    REPORTS_GENERATE = "reports:generate"
    AUDIT_READ = "audit:read"
    MEMBERS_READ = "members:read"
    MEMBERS_MANAGE = "members:manage"
    ROLES_READ = "roles:read"
    APIKEYS_READ = "apikeys:read"
    APIKEYS_MANAGE = "apikeys:manage"
    ROLES_MANAGE = "roles:manage"
    SSO_READ = "sso:read"
    SSO_MANAGE = "sso:manage"
    SECURITY_READ = "security:read"
    SECURITY_MANAGE = "security:manage"
    ORGANIZATION_UPDATE = "organization:update"
    ORGANIZATIONS_CREATE = "organizations:create"
    AUDIT_VERIFY = "audit:verify"
    BILLING_READ = "billing:read"
    PLAN_MANAGE = "plan:manage"
    PLATFORM_ORGANIZATIONS_READ = "platform:organizations:read"
    PLATFORM_ORGANIZATIONS_MANAGE = "platform:organizations:manage"
    PLATFORM_AUDIT_READ = "platform:audit:read"


TENANT_PERMISSIONS: frozenset[Permission] = frozenset(p for p in Permission if not p.value.startswith("platform:"))
PLATFORM_PERMISSIONS: frozenset[Permission] = frozenset(Permission) - TENANT_PERMISSIONS

ALL_PERMISSION_NAMES: frozenset[str] = frozenset(p.value for p in Permission)
