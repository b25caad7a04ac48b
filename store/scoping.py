"""Tenant scoping: the one place that turns a principal's organization into query filters.

A tenant reaches its own organization and, where a field is `@scoped`, the organizations below it.
Anything outside answers exactly like something that does not exist.
"""

from __future__ import annotations

from sqlalchemy import literal, select
from sqlalchemy.ext.asyncio import AsyncSession

from store.models import Organization


async def subtree_ids(db: AsyncSession, organization_id: str) -> set[str]:
    """The organization and all its descendants (recursive CTE; SQLite and PostgreSQL alike)."""
    org = Organization.__table__.c  # type: ignore[attr-defined]
    tree = select(literal(organization_id).label("id")).cte("tree", recursive=True)
    tree = tree.union(select(org.id).where(org.parent_id == tree.c.id))
    return set((await db.execute(select(tree.c.id))).scalars().all())
