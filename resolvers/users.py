"""The signed-in user."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from authz import Principal
from authz.errors import Unauthenticated
from store.models import Organization, User


async def get_viewer(db: AsyncSession, principal: Principal) -> tuple[User, Organization]:
    if principal.subject_id is None or principal.organization_id is None:
        raise Unauthenticated("Authentication required.")
    user = await db.get(User, principal.subject_id)
    org = await db.get(Organization, principal.organization_id)
    if user is None or org is None:
        raise Unauthenticated("Authentication required.")
    return user, org
