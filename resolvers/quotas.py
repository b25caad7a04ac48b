"""Quotas: what a tenant may still create under its plan, and the check every creation makes.

A limit is the plan's row with the organization's own overrides on top (`authz.plans.effective_limits`).
Counted resources are rows in the database: MEMBERS (memberships and pending invitations), API_KEYS (keys not revoked),
CHILD_ORGANIZATIONS (direct children) and REPORTS_PER_MONTH (reports created in the current UTC calendar
month). The rate resources (REQUESTS_PER_MINUTE, REQUESTS_PER_DAY, COST_PER_MINUTE) are counted by the
admission step at the edge, which the resolvers read through `Services.budgets`.

A creation calls `check_quota` inside the transaction that inserts the row, before inserting it. It
takes the organization's write lock first (`SELECT … FOR UPDATE` on PostgreSQL; on SQLite a no-op write,
which takes the database's single writer lock until the commit), then counts: concurrent creations at the
boundary are serialized, so exactly as many as the limit allows get through. A limit lowered below the
current usage (a downgrade, an override) deletes nothing: it only refuses the next creation.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import ColumnElement, func, update
from sqlalchemy import select as sa_select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from authz import Permission
from authz.errors import BadUserInput, Forbidden, NotFound, QuotaExceeded
from authz.plans import QuotaResource, effective_limits, parse_overrides
from identity.sessions import org_key
from resolvers.budgets import RATE_RESOURCES, RateBudgets
from resolvers.common import announce_after_commit, tenant_of
from resolvers.deps import RequestContext
from store.audit import AuditAction, changes
from store.models import ApiKey, Invitation, Membership, Organization, Report, utcnow
from store.scoping import tenant_filter

COUNTED: tuple[QuotaResource, ...] = (
    QuotaResource.MEMBERS,
    QuotaResource.API_KEYS,
    QuotaResource.REPORTS_PER_MONTH,
    QuotaResource.CHILD_ORGANIZATIONS,
)

MAX_LIMIT = 2**31 - 1  # a GraphQL Int

_NOUNS = {
    QuotaResource.MEMBERS: "members",
    QuotaResource.API_KEYS: "active API keys",
    QuotaResource.REPORTS_PER_MONTH: "reports a month",
    QuotaResource.CHILD_ORGANIZATIONS: "child organizations",
}


@dataclass(frozen=True, slots=True)
class QuotaUsage:
    resource: QuotaResource
    limit: int | None  # None: unlimited
    used: int
    remaining: int | None  # None when unlimited; 0 (never negative) when usage is over a lowered limit
    resets_at: datetime | None  # None for what does not reset with time


def month_window(now: datetime) -> tuple[datetime, datetime]:
    """The UTC calendar month holding the instant `now`: its first instant and the next month's."""
    now = now.astimezone(UTC)
    start = datetime(now.year, now.month, 1, tzinfo=UTC)
    following = datetime(now.year + 1 if now.month == 12 else now.year, now.month % 12 + 1, 1, tzinfo=UTC)
    return start, following


def _used_expression(resource: QuotaResource, organization_id: str, now: datetime) -> ColumnElement[int]:
    """A scalar subquery counting the organization's `resource`."""
    if resource is QuotaResource.MEMBERS:
        # members, and the invitations that may still become members
        invited = (
            sa_select(func.count())
            .select_from(Invitation)
            .where(
                tenant_filter(Invitation, organization_id),
                col(Invitation.accepted_at).is_(None),
                col(Invitation.revoked_at).is_(None),
                col(Invitation.expires_at) > now,
            )
            .scalar_subquery()
        )
        stmt = (
            sa_select(func.count() + invited).select_from(Membership).where(tenant_filter(Membership, organization_id))
        )
    elif resource is QuotaResource.API_KEYS:
        stmt = (
            sa_select(func.count())
            .select_from(ApiKey)
            .where(tenant_filter(ApiKey, organization_id), col(ApiKey.revoked_at).is_(None))
        )
    elif resource is QuotaResource.REPORTS_PER_MONTH:
        start, following = month_window(now)
        stmt = (
            sa_select(func.count())
            .select_from(Report)
            .where(
                tenant_filter(Report, organization_id),
                col(Report.created_at) >= start,
                col(Report.created_at) < following,
            )
        )
    elif resource is QuotaResource.CHILD_ORGANIZATIONS:
        stmt = sa_select(func.count()).select_from(Organization).where(col(Organization.parent_id) == organization_id)
    else:
        raise ValueError(f"{resource} is not counted in the database")
    return stmt.scalar_subquery()


async def count_used(
    db: AsyncSession,
    organization_id: str,
    resources: tuple[QuotaResource, ...] = COUNTED,
    *,
    now: datetime | None = None,
) -> dict[QuotaResource, int]:
    """How much of each counted resource the organization uses, in one statement."""
    at = now or utcnow()
    row = (await db.execute(sa_select(*(_used_expression(r, organization_id, at) for r in resources)))).one()
    return {r: int(n) for r, n in zip(resources, row, strict=True)}


async def lock_organization(db: AsyncSession, organization_id: str) -> Organization:
    """The organization's row, locked for writing until the transaction ends."""
    if db.get_bind().dialect.name == "sqlite":
        # the first write of the transaction takes SQLite's one writer lock until the commit
        await db.execute(
            update(Organization).where(col(Organization.id) == organization_id).values(plan=Organization.plan)
        )
    org = (
        await db.execute(
            sa_select(Organization)
            .where(col(Organization.id) == organization_id)
            .with_for_update()
            # the row as committed now, not as an earlier read in this session saw it
            .execution_options(populate_existing=True)
        )
    ).scalar_one_or_none()
    if org is None:
        raise NotFound("Organization not found.")
    return org


async def check_quota(
    db: AsyncSession, organization_id: str, resource: QuotaResource, *, now: datetime | None = None
) -> Organization:
    """Refuse with QUOTA_EXCEEDED unless the organization may create one more `resource`.

    Call it in the transaction that creates the row, before creating it: it locks the organization's
    row until that transaction ends, so concurrent creations are counted one after the other. `now`
    (default the current time) picks the month for REPORTS_PER_MONTH. Returns the locked row.
    """
    if resource not in COUNTED:
        raise ValueError(f"{resource} is not counted in the database")
    org = await lock_organization(db, organization_id)
    limit = effective_limits(org.plan, org.limit_overrides)[resource]
    if limit is None:
        return org
    used = (await count_used(db, org.id, (resource,), now=now))[resource]
    if used >= limit:
        raise QuotaExceeded(
            f"This organization's limit is {limit} {_NOUNS[resource]}.",
            resource=resource.value,
            limit=limit,
            used=used,
        )
    return org


def _usage(resource: QuotaResource, limit: int | None, used: int, resets_at: datetime | None) -> QuotaUsage:
    remaining = None if limit is None else max(0, limit - used)
    return QuotaUsage(resource, limit, used, remaining, resets_at)


async def list_quotas(
    db: AsyncSession, org: Organization, *, budgets: RateBudgets | None, now: datetime | None = None
) -> list[QuotaUsage]:
    """Every quota of the organization, in `QuotaResource` order.

    The rate rows come from the admission step's counters (`budgets`); without them there is nothing
    honest to report, so they are left out rather than shown as unused.
    """
    at = now or utcnow()
    limits = effective_limits(org.plan, org.limit_overrides)
    used = await count_used(db, org.id, now=at)
    rows: dict[QuotaResource, QuotaUsage] = {}
    for resource in COUNTED:
        resets = month_window(at)[1] if resource is QuotaResource.REPORTS_PER_MONTH else None
        rows[resource] = _usage(resource, limits[resource], used[resource], resets)
    if budgets is not None:
        states = await budgets.budgets(org.id, {r: limits[r] for r in RATE_RESOURCES})
        for resource in RATE_RESOURCES:
            s = states[resource]
            rows[resource] = QuotaUsage(resource, s.limit, s.used, s.remaining, s.reset_at)
    return [rows[r] for r in QuotaResource if r in rows]


async def organization_quotas(ctx: RequestContext, org: Organization) -> list[QuotaUsage]:
    """The quotas of the caller's own organization: `quotas:read` held here says nothing about an
    organization below it."""
    principal = ctx.principal
    if principal.organization_id is None or org.id != principal.organization_id:
        raise Forbidden("You are not allowed to access this field.", requiredScopes=[["quotas:read"]])
    return await list_quotas(await ctx.db(), org, budgets=ctx.services.budgets, now=ctx.services.now())


# -- the operator's overrides (`portcullis org limits`) -----------------------------------------------


@dataclass(frozen=True, slots=True)
class OrganizationLimits:
    organization: Organization
    overrides: dict[QuotaResource, int | None]  # the organization's own, on top of its plan's
    limits: dict[QuotaResource, int | None]  # what applies: the plan's with the overrides
    used: dict[QuotaResource, int]  # of the resources counted in the database


async def _limits_of(db: AsyncSession, org: Organization, now: datetime) -> OrganizationLimits:
    return OrganizationLimits(
        org,
        parse_overrides(org.limit_overrides),
        effective_limits(org.plan, org.limit_overrides),
        await count_used(db, org.id, now=now),
    )


def _operator_tenant(ctx: RequestContext, permission: Permission) -> str:
    if permission not in ctx.principal.effective_permissions:
        raise Forbidden(
            "An organization's limit overrides are the platform operator's.", requiredScopes=[[permission.value]]
        )
    return tenant_of(ctx.principal)


async def get_limits(ctx: RequestContext) -> OrganizationLimits:
    """The organization's limits, overrides and counted use."""
    org_id = _operator_tenant(ctx, Permission.PLATFORM_ORGANIZATIONS_READ)
    db = await ctx.db()
    org = await db.get(Organization, org_id)
    if org is None:
        raise NotFound("Organization not found.")
    return await _limits_of(db, org, ctx.services.now())


async def override_limits(ctx: RequestContext, settings: dict[str, int | None], *, reset: bool) -> OrganizationLimits:
    """Override limits of the organization's plan (`RESOURCE` name -> a limit, None for unlimited), after
    dropping every earlier override when `reset`. Applies from the next request on every process: `org:<id>`
    is announced once committed."""
    org_id = _operator_tenant(ctx, Permission.PLATFORM_ORGANIZATIONS_MANAGE)
    for name, limit in settings.items():
        if name not in QuotaResource.__members__:
            raise BadUserInput(f"unknown resource {name!r}", field="limits")
        if limit is not None and not 0 <= limit <= MAX_LIMIT:
            raise BadUserInput(f"{name}: a limit is a whole number from 0 to {MAX_LIMIT}, or unlimited", field="limits")
    db = await ctx.db()
    org = await lock_organization(db, org_id)
    before = dict(org.limit_overrides or {})
    overrides = {} if reset else dict(before)
    overrides.update(settings)
    org.limit_overrides = overrides
    db.add(org)
    await db.flush()
    announce_after_commit(ctx, [org_key(org.id)])
    ctx.audit(
        AuditAction.ORG_UPDATED,
        resource_type="organization",
        resource_id=org.id,
        details={"changes": changes({"limitOverrides": before}, {"limitOverrides": overrides})},
    )
    return await _limits_of(db, org, ctx.services.now())
