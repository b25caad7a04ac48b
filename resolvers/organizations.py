"""Organizations: the caller's own tenant and the ones below it."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col, select

from authz import Principal
from authz.errors import NotFound, Unauthenticated
from store.models import Organization
from store.scoping import subtree_ids

NOT_FOUND = "Organization not found."


def _tenant(principal: Principal) -> str:
    if principal.organization_id is None:
        raise Unauthenticated("Authentication required.")
    return principal.organization_id


async def get_organization(db: AsyncSession, principal: Principal, slug: str | None = None) -> Organization:
    """The caller's organization, or one of its descendants by slug; anything else is NOT_FOUND."""
    own = _tenant(principal)
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


async def get_parent(db: AsyncSession, principal: Principal, org: Organization) -> Organization | None:
    if org.parent_id is None:
        return None
    if org.parent_id not in await subtree_ids(db, _tenant(principal)):
        return None
    return await db.get(Organization, org.parent_id)


async def list_children(db: AsyncSession, principal: Principal, org: Organization) -> list[Organization]:
    if org.id not in await subtree_ids(db, _tenant(principal)):
        raise NotFound(NOT_FOUND)
    rows = await db.execute(
        select(Organization).where(col(Organization.parent_id) == org.id).order_by(col(Organization.slug))
    )
    return list(rows.scalars().all())
