"""Strawberry baselines: `strawberry.asgi.GraphQL` on a one-field schema, with and without caches."""

from __future__ import annotations

import strawberry
from strawberry.asgi import GraphQL
from strawberry.extensions import ParserCache, ValidationCache

from authz.plans import Plan
from bench.apps.common import read_organization

# the plans of authz.plans, registered as the GraphQL enum as schema/enums.py does
strawberry.enum(Plan, name="Plan")


@strawberry.type
class Organization:
    id: strawberry.ID
    slug: str
    name: str
    plan: Plan


@strawberry.type
class Query:
    @strawberry.field
    async def organization(self) -> Organization:
        row = await read_organization()
        return Organization(id=strawberry.ID(row.id), slug=row.slug, name=row.name, plan=Plan(row.plan))


def default_app() -> GraphQL:
    """The app as Strawberry's documentation shows it: no extensions."""
    return GraphQL(strawberry.Schema(query=Query))


def cached_app() -> GraphQL:
    """The same app with the parser and validation caches."""
    return GraphQL(strawberry.Schema(query=Query, extensions=[ParserCache, ValidationCache]))
