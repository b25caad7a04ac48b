"""Roles: the built-in ones, and the custom roles a tenant defines on top of them.

The rules themselves are `authz.custom_roles` (pure); this module loads the tenant's roles, applies
those rules with the caller's effective permissions, and writes. Nobody defines, changes or deletes a
role granting a permission they do not hold themselves.

A role is never renamed: memberships and SSO role mappings name it, and a rename would silently change
what they grant. Changing or deleting a role announces `org:<id>` once the change is committed, so every
process reloads the permissions of that organization's sessions on their next request.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from sqlalchemy import func
from sqlalchemy import select as sa_select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from authz import (
    BUILTIN_ROLE_PERMISSIONS,
    BuiltinRole,
    RoleDefinition,
    RoleError,
    can_grant,
    check_definition,
    is_builtin_role,
    parse_permissions,
    permissions_for_role,
    validate_role_name,
)
from authz.errors import BadUserInput, Conflict, Forbidden, NotFound
from identity.sessions import load_custom_roles, org_key
from resolvers.common import announce_after_commit, tenant_of
from resolvers.deps import RequestContext
from store.audit import AuditAction, changes
from store.models import Membership, Role
from store.scoping import tenant_filter, tenant_select

ROLE_NOT_FOUND = "Role not found."
MAX_DESCRIPTION_LENGTH = 500
MAX_PERMISSIONS = 64
MAX_INHERITS = 16

BUILTIN_DESCRIPTIONS: dict[str, str] = {
    BuiltinRole.VIEWER: "Reads the organization and its quotas.",
    BuiltinRole.ANALYST: "A viewer who also reads and generates reports and reads the audit log.",
    BuiltinRole.MANAGER: "An analyst who also manages members and reads roles and API keys.",
    BuiltinRole.ADMIN: "A manager who also manages API keys, roles, SSO and the organization's settings.",
    BuiltinRole.OWNER: "An admin who also manages the plan.",
}


@dataclass(frozen=True, slots=True)
class RoleView:
    name: str
    description: str | None
    permissions: tuple[str, ...]
    inherits: tuple[str, ...]
    built_in: bool


@dataclass(frozen=True, slots=True)
class RoleSpec:
    """What the caller sends (`RoleInput`), before any check."""

    name: str
    description: str | None
    permissions: list[str]
    inherits: list[str]


def _sorted_names(permissions: frozenset[str]) -> tuple[str, ...]:
    return tuple(sorted(str(p) for p in permissions))


def _builtin_views() -> list[RoleView]:
    return [
        RoleView(
            role.value,
            BUILTIN_DESCRIPTIONS[role],
            _sorted_names(permissions_for_role(role.value)),
            (),
            built_in=True,
        )
        for role in BuiltinRole
    ]


def _custom_view(d: RoleDefinition) -> RoleView:
    return RoleView(d.name, d.description, _sorted_names(d.permissions), d.inherits, built_in=False)


async def list_roles(ctx: RequestContext) -> list[RoleView]:
    """Built-in roles, weakest first, then the tenant's custom roles by name."""
    org_id = tenant_of(ctx.principal)
    custom = await load_custom_roles(await ctx.db(), org_id)
    return _builtin_views() + [_custom_view(custom[name]) for name in sorted(custom)]


async def require_role(db: AsyncSession, organization_id: str, role: str) -> dict[str, RoleDefinition]:
    """The tenant's custom roles, after checking that `role` is a built-in or one of them."""
    custom = await load_custom_roles(db, organization_id)
    if not is_builtin_role(role) and role not in custom:
        raise BadUserInput("Unknown role.", field="role")
    return custom


def check_can_grant(
    granter: frozenset[str], roles: list[str], custom: Mapping[str, RoleDefinition], message: str
) -> None:
    """FORBIDDEN, naming the missing permissions, unless the granter holds everything each role grants."""
    missing: set[str] = set()
    for role in roles:
        decision = can_grant(granter, role, custom)
        for group in decision.required_scopes:
            missing.update(group)
    if missing:
        raise Forbidden(message, requiredScopes=[sorted(missing)])


def _definition(spec: RoleSpec) -> RoleDefinition:
    if spec.description is not None and (len(spec.description) > MAX_DESCRIPTION_LENGTH or "\x00" in spec.description):
        raise BadUserInput(
            f"description must be at most {MAX_DESCRIPTION_LENGTH} characters, without NUL", field="description"
        )
    if len(spec.permissions) > MAX_PERMISSIONS:
        raise BadUserInput(f"a role lists at most {MAX_PERMISSIONS} permissions", field="permissions")
    if len(spec.inherits) > MAX_INHERITS:
        raise BadUserInput(f"a role inherits at most {MAX_INHERITS} roles", field="inherits")
    try:
        validate_role_name(spec.name)
        permissions = parse_permissions(spec.permissions)
    except RoleError as exc:
        raise BadUserInput(exc.message, field=exc.field) from None
    return RoleDefinition(
        name=spec.name,
        permissions=permissions,
        inherits=tuple(dict.fromkeys(spec.inherits)),
        description=spec.description or None,
    )


def _check(definition: RoleDefinition, custom: Mapping[str, RoleDefinition], creator: frozenset[str]) -> None:
    try:
        check_definition(definition, custom, creator)
    except RoleError as exc:
        raise BadUserInput(exc.message, field=exc.field) from None


async def _row(db: AsyncSession, organization_id: str, name: str) -> Role:
    if name in BUILTIN_ROLE_PERMISSIONS:
        raise BadUserInput(f"{name!r} is a built-in role and cannot be changed.", field="name")
    if len(name) > 63 or "\x00" in name:
        raise NotFound(ROLE_NOT_FOUND)
    row = (await db.execute(tenant_select(Role, organization_id).where(col(Role.name) == name))).scalar_one_or_none()
    if row is None:
        raise NotFound(ROLE_NOT_FOUND)
    return row


async def _flush(db: AsyncSession) -> None:
    try:
        await db.flush()
    except IntegrityError:
        raise Conflict("A role with this name already exists.") from None


async def create_role(ctx: RequestContext, spec: RoleSpec) -> RoleView:
    principal = ctx.principal
    org_id = tenant_of(principal)
    definition = _definition(spec)
    db = await ctx.db()
    custom = await load_custom_roles(db, org_id)
    if definition.name in custom:
        raise Conflict("A role with this name already exists.")
    _check(definition, custom, principal.effective_permissions)
    now = ctx.services.now()
    db.add(
        Role(
            organization_id=org_id,
            name=definition.name,
            description=definition.description,
            permissions=list(_sorted_names(definition.permissions)),
            inherits=list(definition.inherits),
            created_at=now,
            updated_at=now,
        )
    )
    await _flush(db)
    ctx.audit(
        AuditAction.PRIVILEGE_ROLE_CREATED,
        resource_type="role",
        resource_id=definition.name,
        details={"permissions": list(_sorted_names(definition.permissions)), "inherits": list(definition.inherits)},
    )
    return _custom_view(definition)


async def update_role(ctx: RequestContext, name: str, spec: RoleSpec) -> RoleView:
    principal = ctx.principal
    org_id = tenant_of(principal)
    db = await ctx.db()
    row = await _row(db, org_id, name)
    if spec.name != name:
        raise BadUserInput("A role cannot be renamed: input.name must be the role's name.", field="name")
    definition = _definition(spec)
    custom = await load_custom_roles(db, org_id)
    creator = principal.effective_permissions
    check_can_grant(creator, [name], custom, "You cannot change a role with permissions you do not hold.")
    _check(definition, custom, creator)
    before = {"description": row.description, "permissions": list(row.permissions), "inherits": list(row.inherits)}
    after = {
        "description": definition.description,
        "permissions": list(_sorted_names(definition.permissions)),
        "inherits": list(definition.inherits),
    }
    ctx.audit(
        AuditAction.PRIVILEGE_PERMISSIONS_CHANGED,
        resource_type="role",
        resource_id=name,
        details={"changes": changes(before, after)},
    )
    row.description = definition.description
    row.permissions = list(_sorted_names(definition.permissions))
    row.inherits = list(definition.inherits)
    row.updated_at = ctx.services.now()
    db.add(row)
    await db.flush()
    announce_after_commit(ctx, [org_key(org_id)])
    return _custom_view(definition)


async def delete_role(ctx: RequestContext, name: str) -> bool:
    principal = ctx.principal
    org_id = tenant_of(principal)
    db = await ctx.db()
    row = await _row(db, org_id, name)
    custom = await load_custom_roles(db, org_id)
    check_can_grant(
        principal.effective_permissions, [name], custom, "You cannot delete a role with permissions you do not hold."
    )
    holders = (
        await db.execute(
            sa_select(func.count())
            .select_from(Membership)
            .where(tenant_filter(Membership, org_id), col(Membership.role) == name)
        )
    ).scalar_one()
    if holders:
        raise Conflict(f"The role is still held by {holders} member(s); give them another role first.")
    heirs = sorted(other.name for other in custom.values() if name in other.inherits)
    if heirs:
        raise Conflict(f"The role is inherited by {', '.join(heirs)}; change those roles first.")
    await db.delete(row)
    await db.flush()
    announce_after_commit(ctx, [org_key(org_id)])
    ctx.audit(
        AuditAction.PRIVILEGE_ROLE_DELETED,
        resource_type="role",
        resource_id=name,
        details={"permissions": list(row.permissions)},
    )
    return True
