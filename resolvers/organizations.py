"""Organizations: the caller's own tenant and the ones below it.

A new organization is always a child of the caller's, and its creator becomes its owner. Slugs are
unique across all tenants, so a taken slug answers the same CONFLICT whoever holds it (C-105): the
answer never says whether the holder is in the caller's tenant. A plan other than FREE costs money,
so choosing one needs `plan:manage` in the caller's organization. Each new child counts against the
parent's CHILD_ORGANIZATIONS quota (its direct children).

`changePlan` switches the caller's own organization to another plan; its limits apply to the very next
request. A plan whose limits are below what the organization already uses deletes nothing: creations are
refused until usage is back under the limit. The organization's limit overrides stay on top of the new
plan. After the commit, `org:<id>` is announced so every process reloads the cached sessions and
limits that carry the plan.

A child's plan is its parent's business (C-128). Whoever creates a child becomes its owner, and so holds
`plan:manage` there; that role says nothing about the money, which the parent pays. So a child's plan
never exceeds its parent's, and changing it needs `plan:manage` in the parent: the caller's own
membership and role there, read from the database (or a platform operator). An API key belongs to one
organization and carries no authority over its parent, so it cannot change a child's plan.

Lowering an organization's plan lowers every organization below it whose plan is above the new one, in
the same transaction, each audited in its own chain (`plan_changed`, reason `parent_plan_lowered`). Refusing
the downgrade until the children were lowered first would leave the parent stuck whenever nobody holding
`plan:manage` in the parent is a member of the child, as `changePlan` acts on the caller's organization
only. Locks are taken ancestors first (the parent, then the organization, then its descendants), so a
child's upgrade and its parent's downgrade are serialized.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col, select

from authz import BuiltinRole, Permission, Principal, PrincipalKind
from authz.errors import BadUserInput, Conflict, Forbidden, NotFound
from authz.plans import PLANS, QuotaResource, plan_rank
from identity.sessions import org_key, role_permissions
from resolvers.common import announce_after_commit, tenant_of
from resolvers.deps import RequestContext
from resolvers.invitations import send_invitation
from resolvers.mfa import check_can_require, requirement_changed
from resolvers.provisioning import SLUG, Provisioned, checked_email, create_tenant, validate_tenant
from resolvers.quotas import check_quota, lock_organization
from store.audit import AuditAction, changes
from store.models import Membership, Organization, User
from store.scoping import subtree_ids

NOT_FOUND = "Organization not found."
SLUG_TAKEN = "slug is taken"
MAX_NAME_LENGTH = 200


@dataclass(frozen=True, slots=True)
class NewOrganization:
    slug: str
    name: str
    plan: str = "free"
    billing_email: str | None = None


@dataclass(frozen=True, slots=True)
class OrganizationChanges:
    """`None` leaves a setting as it is; an empty billing email clears it."""

    name: str | None = None
    billing_email: str | None = None
    require_mfa: bool | None = None


async def get_organization(ctx: RequestContext, slug: str | None = None) -> Organization:
    """The caller's organization, or one of its descendants by slug; anything else is NOT_FOUND."""
    own = tenant_of(ctx.principal)
    db = await ctx.db()
    if slug is None:
        org = await db.get(Organization, own)
        if org is None:
            raise NotFound(NOT_FOUND)
        return org
    if len(slug) > 63:
        raise NotFound(NOT_FOUND)
    org = (await db.execute(select(Organization).where(col(Organization.slug) == slug))).scalar_one_or_none()
    if org is None or (org.id != own and org.id not in await subtree_ids(db, own)):
        raise NotFound(NOT_FOUND)
    return org


async def find_organization(ctx: RequestContext, slug: str) -> Organization:
    """Any organization by its slug, for the platform operator (`portcullis` commands name tenants so)."""
    if Permission.PLATFORM_ORGANIZATIONS_READ not in ctx.principal.effective_permissions:
        raise Forbidden(
            "Only the platform operator finds organizations by slug.",
            requiredScopes=[[Permission.PLATFORM_ORGANIZATIONS_READ.value]],
        )
    db = await ctx.db()
    # tenant-scope: the operator's lookup spans every tenant
    org = (await db.execute(select(Organization).where(col(Organization.slug) == slug))).scalar_one_or_none()
    if org is None:
        raise NotFound(f"no organization {slug!r}")
    return org


async def get_parent(ctx: RequestContext, org: Organization) -> Organization | None:
    if org.parent_id is None:
        return None
    db = await ctx.db()
    if org.parent_id not in await subtree_ids(db, tenant_of(ctx.principal)):
        return None
    return await db.get(Organization, org.parent_id)


async def list_children(ctx: RequestContext, org: Organization) -> list[Organization]:
    db = await ctx.db()
    if org.id not in await subtree_ids(db, tenant_of(ctx.principal)):
        raise NotFound(NOT_FOUND)
    rows = await db.execute(
        select(Organization).where(col(Organization.parent_id) == org.id).order_by(col(Organization.slug))
    )
    return list(rows.scalars().all())


def _name(name: str) -> str:
    cleaned = name.strip()
    if not cleaned or len(cleaned) > MAX_NAME_LENGTH or "\x00" in cleaned:
        raise BadUserInput(f"name must be 1-{MAX_NAME_LENGTH} characters", field="name")
    return cleaned


def _billing_email(email: str | None, field: str) -> str | None:
    if email is None or not email.strip():
        return None
    return checked_email(email, field)


async def create_organization(ctx: RequestContext, new: NewOrganization) -> Organization:
    """A child of the caller's organization, owned by the caller."""
    principal = ctx.principal
    parent_id = tenant_of(principal)
    if principal.kind is not PrincipalKind.USER or principal.subject_id is None:
        raise Forbidden("Only a signed-in user can create an organization: its creator becomes its owner.")
    if len(new.slug) > 63 or not SLUG.match(new.slug):
        raise BadUserInput("slug must be 1-63 lowercase letters, digits or hyphens", field="slug")
    name = _name(new.name)
    if new.plan not in PLANS:
        raise BadUserInput(f"plan must be one of {', '.join(PLANS)}", field="plan")
    billing_email = _billing_email(new.billing_email, "billingEmail")
    if new.plan != PLANS[0] and Permission.PLAN_MANAGE not in principal.effective_permissions:
        raise Forbidden("Choosing a paid plan needs plan:manage.", requiredScopes=[[Permission.PLAN_MANAGE.value]])
    db = await ctx.db()
    parent = await check_quota(db, parent_id, QuotaResource.CHILD_ORGANIZATIONS)
    _within_parent(new.plan, parent)
    if (await db.execute(select(col(Organization.id)).where(col(Organization.slug) == new.slug))).first():
        raise Conflict(SLUG_TAKEN, field="slug")
    org = Organization(slug=new.slug, name=name, plan=new.plan, parent_id=parent_id, billing_email=billing_email)
    db.add(org)
    try:
        await db.flush()
    except IntegrityError:
        # the same slug taken by a concurrent request
        raise Conflict(SLUG_TAKEN, field="slug") from None
    db.add(Membership(organization_id=org.id, user_id=principal.subject_id, role=BuiltinRole.OWNER.value))
    await db.flush()
    ctx.audit(
        AuditAction.ORG_CREATED,
        resource_type="organization",
        resource_id=org.id,
        details={"slug": org.slug, "name": org.name, "plan": org.plan, "parentId": org.parent_id},
    )
    return org


async def bootstrap_organization(
    ctx: RequestContext, *, slug: str, name: str, plan: str, owner_email: str, password: str | None
) -> Provisioned:
    """A new top-level organization and its owner, for the platform operator (`portcullis bootstrap`,
    `portcullis seed-demo`): a new address gets an account with `password`; an address that has an account
    is invited as the owner by email (resolvers/provisioning.py). CONFLICT when the slug is taken."""
    if Permission.PLATFORM_ORGANIZATIONS_MANAGE not in ctx.principal.effective_permissions:
        raise Forbidden(
            "Only the platform operator creates top-level organizations.",
            requiredScopes=[[Permission.PLATFORM_ORGANIZATIONS_MANAGE.value]],
        )
    validate_tenant(slug, name, plan, owner_email)
    # hashed before the unit of work opens its session (on SQLite, the writers' turn)
    password_hash = await ctx.services.hasher.hash(password) if password else None
    result = await create_tenant(
        await ctx.db(),
        slug=slug,
        name=name,
        plan=plan,
        owner_email=owner_email,
        password_hash=password_hash,
        now=ctx.services.now(),
    )
    org = result.organization
    ctx.audit(
        AuditAction.ORG_CREATED,
        organization_id=org.id,
        resource_type="organization",
        resource_id=org.id,
        details={"slug": org.slug, "plan": org.plan},
    )
    invitation, token = result.invitation, result.invitation_token
    if invitation is not None and token is not None:
        url = await send_invitation(ctx, invitation, token, None)
        ctx.audit(
            AuditAction.MEMBER_INVITED,
            organization_id=org.id,
            resource_type="invitation",
            resource_id=invitation.id,
            details={"email": invitation.email, "role": invitation.role},
        )
        return dataclasses.replace(result, invitation_url=url)
    if result.owner is not None:
        ctx.audit(AuditAction.USER_CREATED, organization_id=org.id, resource_type="user", resource_id=result.owner.id)
        ctx.audit(
            AuditAction.MEMBER_ADDED,
            organization_id=org.id,
            resource_type="user",
            resource_id=result.owner.id,
            details={"role": BuiltinRole.OWNER.value},
        )
    return result


def _audited_fields(org: Organization) -> dict[str, object]:
    return {"name": org.name, "billingEmail": org.billing_email, "requireMfa": org.require_mfa}


async def update_organization(ctx: RequestContext, wanted: OrganizationChanges) -> Organization:
    """Requiring MFA needs it of the caller first (`resolvers.mfa.check_can_require`); a change of the
    requirement reaches every process's sessions of the organization at once."""
    if wanted.require_mfa:
        await check_can_require(ctx)
    db = await ctx.db()
    org = await db.get(Organization, tenant_of(ctx.principal))
    if org is None:
        raise NotFound(NOT_FOUND)
    before = _audited_fields(org)
    if wanted.name is not None:
        org.name = _name(wanted.name)
    if wanted.billing_email is not None:
        org.billing_email = _billing_email(wanted.billing_email, "billingEmail")
    if wanted.require_mfa is not None:
        org.require_mfa = wanted.require_mfa
    db.add(org)
    await db.flush()
    if wanted.require_mfa is not None:
        requirement_changed(ctx)
    ctx.audit(
        AuditAction.ORG_UPDATED,
        resource_type="organization",
        resource_id=org.id,
        details={"changes": changes(before, _audited_fields(org))},
    )
    return org


def _within_parent(plan: str, parent: Organization) -> None:
    if plan_rank(plan) > plan_rank(parent.plan):
        raise BadUserInput(
            f"A child organization's plan cannot be above its parent's ({parent.plan.upper()}).", field="plan"
        )


async def _check_parent_authority(db: AsyncSession, principal: Principal, parent_id: str) -> None:
    """FORBIDDEN unless the caller holds `plan:manage` in the parent, or is a platform operator."""
    if Permission.PLATFORM_ORGANIZATIONS_MANAGE in principal.effective_permissions:
        return
    refused = Forbidden(
        "Changing a child organization's plan needs plan:manage in its parent organization.",
        requiredScopes=[[Permission.PLAN_MANAGE.value]],
    )
    if principal.kind is not PrincipalKind.USER or principal.subject_id is None:
        raise refused
    row = (
        await db.execute(
            select(Membership.role, User.is_active)
            .join(User, col(User.id) == col(Membership.user_id))
            .where(col(Membership.organization_id) == parent_id, col(Membership.user_id) == principal.subject_id)
        )
    ).first()
    if row is None or not row[1] or Permission.PLAN_MANAGE not in await role_permissions(db, parent_id, row[0]):
        raise refused


async def _lower_descendants(ctx: RequestContext, db: AsyncSession, org: Organization, plan: str) -> list[str]:
    """Every organization below `org` whose plan is above `plan`, lowered to it; their ids."""
    below = await subtree_ids(db, org.id) - {org.id}
    if not below:
        return []
    above = [p for p in PLANS if plan_rank(p) > plan_rank(plan)]
    rows = await db.execute(
        select(Organization)
        .where(col(Organization.id).in_(below), col(Organization.plan).in_(above))
        .order_by(col(Organization.id))
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    lowered = []
    for child in rows.scalars().all():
        old, child.plan = child.plan, plan
        db.add(child)
        lowered.append(child.id)
        ctx.audit(
            AuditAction.PLAN_CHANGED,
            organization_id=child.id,
            resource_type="organization",
            resource_id=child.id,
            details={
                "changes": changes({"plan": old}, {"plan": plan}),
                "reason": "parent_plan_lowered",
                "loweredWith": org.id,
            },
        )
    if lowered:
        await db.flush()
    return lowered


async def change_plan(ctx: RequestContext, plan: str) -> Organization:
    if plan not in PLANS:
        raise BadUserInput(f"plan must be one of {', '.join(PLANS)}", field="plan")
    org_id = tenant_of(ctx.principal)
    db = await ctx.db()
    current = await db.get(Organization, org_id)
    if current is None:
        raise NotFound(NOT_FOUND)
    if current.parent_id is not None:
        await _check_parent_authority(db, ctx.principal, current.parent_id)
        _within_parent(plan, await lock_organization(db, current.parent_id))
    org = await lock_organization(db, org_id)
    old = org.plan
    lowered: list[str] = []
    if old != plan:
        org.plan = plan
        db.add(org)
        await db.flush()
        lowered = await _lower_descendants(ctx, db, org, plan)
        announce_after_commit(ctx, [org_key(i) for i in (org.id, *lowered)])
    ctx.audit(
        AuditAction.PLAN_CHANGED,
        resource_type="organization",
        resource_id=org.id,
        details={
            "changes": changes({"plan": old}, {"plan": plan}),
            **({"childrenLowered": len(lowered)} if lowered else {}),
        },
    )
    return org
