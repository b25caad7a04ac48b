"""Tenant scoping: the one place that turns a principal's organization into query filters.

A tenant reaches its own organization and, where a field is `@scoped`, the organizations below it.
Anything outside answers exactly like something that does not exist.
"""

from __future__ import annotations

from typing import TypeVar

from sqlalchemy import ColumnElement, literal, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import SQLModel
from sqlmodel import select as sm_select
from sqlmodel.sql.expression import SelectOfScalar

from store.models import TENANT_TABLES, Organization

_M = TypeVar("_M", bound=SQLModel)


async def subtree_ids(db: AsyncSession, organization_id: str) -> set[str]:
    """The organization and all its descendants (recursive CTE; SQLite and PostgreSQL alike)."""
    org = Organization.__table__.c  # type: ignore[attr-defined]
    tree = select(literal(organization_id).label("id")).cte("tree", recursive=True)
    tree = tree.union(select(org.id).where(org.parent_id == tree.c.id))
    return set((await db.execute(select(tree.c.id))).scalars().all())


def tenant_select(model: type[_M], organization_id: str) -> SelectOfScalar[_M]:
    """`SELECT model` limited to one tenant's rows: the start of every query on a tenant table."""
    if model.__tablename__ not in TENANT_TABLES:
        raise ValueError(f"{model.__name__} is not a tenant table")
    return sm_select(model).where(model.__table__.c.organization_id == organization_id)  # type: ignore[attr-defined]


def tenant_filter(model: type[SQLModel], organization_id: str) -> ColumnElement[bool]:
    """The tenant condition alone, for UPDATE, DELETE and counts."""
    if model.__tablename__ not in TENANT_TABLES:
        raise ValueError(f"{model.__name__} is not a tenant table")
    condition: ColumnElement[bool] = model.__table__.c.organization_id == organization_id  # type: ignore[attr-defined]
    return condition
