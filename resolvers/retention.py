"""An organization's retention settings: read them, change them within its plan's bounds.

Each kind of data (authz.plans.RetentionKind) is kept for the tenant's setting in days, or its plan's
default; a setting outside the plan's minimum..maximum is BAD_USER_INPUT (every such setting at once). A
change commits with its audit entry (`retention_updated`, old and new days). The pruning job
(resolvers/pruning.py) reads the same settings.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession

from authz.errors import BadUserInput, Forbidden, NotFound
from authz.plans import RetentionBounds, RetentionKind, effective_retention, retention_bounds, retention_problems
from resolvers.common import tenant_of
from resolvers.deps import RequestContext
from store.audit import AuditAction
from store.models import Organization
from store.retention import RetentionSettingRow
from store.scoping import tenant_select


@dataclass(frozen=True, slots=True)
class RetentionSetting:
    kind: RetentionKind
    days: int
    bounds: RetentionBounds
    custom: bool


async def stored_days(db: AsyncSession, organization_id: str) -> dict[str, object]:
    row = (await db.execute(tenant_select(RetentionSettingRow, organization_id))).scalar_one_or_none()
    return dict(row.days) if row is not None else {}


def settings_of(plan: str, stored: Mapping[str, object]) -> list[RetentionSetting]:
    days = effective_retention(plan, stored)
    bounds = retention_bounds(plan)
    return [RetentionSetting(k, days[k], bounds[k], k.value in stored) for k in RetentionKind]


async def get_retention(ctx: RequestContext, organization_id: str) -> list[RetentionSetting]:
    """The caller's own organization's settings (another organization's are not the caller's to read)."""
    if organization_id != tenant_of(ctx.principal):
        raise Forbidden("You are not allowed to access this field.", requiredScopes=[["organization:read"]])
    db = await ctx.db()
    org = await db.get(Organization, organization_id)
    if org is None:
        raise NotFound("Organization not found.")
    return settings_of(org.plan, await stored_days(db, organization_id))


async def update_retention(ctx: RequestContext, wanted: Mapping[RetentionKind, int | None]) -> list[RetentionSetting]:
    """Set (days) or reset (None: the plan's default) the named kinds; the others keep their setting."""
    org_id = tenant_of(ctx.principal)
    db = await ctx.db()
    org = await db.get(Organization, org_id, with_for_update=True)
    if org is None:
        raise NotFound("Organization not found.")
    problems = retention_problems(org.plan, wanted)
    if problems:
        raise BadUserInput("; ".join(problems), problems=problems)
    row = (
        await db.execute(tenant_select(RetentionSettingRow, org_id).with_for_update())
    ).scalar_one_or_none() or RetentionSettingRow(organization_id=org_id)
    before = effective_retention(org.plan, row.days)
    stored = dict(row.days)
    for kind, days in wanted.items():
        if days is None:
            stored.pop(kind.value, None)
        else:
            stored[kind.value] = days
    row.days = stored
    row.updated_at = ctx.services.now()
    db.add(row)
    await db.flush()
    after = effective_retention(org.plan, stored)
    changed = [{"kind": k.value, "old": before[k], "new": after[k]} for k in RetentionKind if before[k] != after[k]]
    ctx.audit(
        AuditAction.RETENTION_UPDATED, resource_type="organization", resource_id=org_id, details={"changes": changed}
    )
    return settings_of(org.plan, stored)
