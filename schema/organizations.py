from __future__ import annotations

from datetime import UTC, datetime

import strawberry

from authz import Permission
from resolvers import organizations as service
from schema.context import Info
from schema.directives import authenticated, requires_scopes
from schema.enums import Plan
from store.models import Organization as OrganizationRow


def utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


@strawberry.type(name="Organization")
class Organization:
    id: strawberry.ID
    slug: str
    name: str
    plan: Plan
    created_at: datetime
    row: strawberry.Private[OrganizationRow]

    @classmethod
    def from_row(cls, row: OrganizationRow) -> Organization:
        return cls(
            id=strawberry.ID(row.id), slug=row.slug, name=row.name, plan=Plan(row.plan),
            created_at=utc(row.created_at), row=row,
        )

    @strawberry.field
    async def parent(self, info: Info) -> Organization | None:
        ctx = info.context
        row = await service.get_parent(await ctx.db(), ctx.principal, self.row)
        return Organization.from_row(row) if row else None

    @strawberry.field
    async def children(self, info: Info) -> list[Organization]:
        ctx = info.context
        rows = await service.list_children(await ctx.db(), ctx.principal, self.row)
        return [Organization.from_row(r) for r in rows]

    @strawberry.field(**requires_scopes(Permission.BILLING_READ))
    def billing_email(self) -> str | None:
        return self.row.billing_email


@strawberry.type
class OrganizationQuery:
    @strawberry.field(
        description="The caller's organization, or one below it by slug.", **authenticated()
    )
    async def organization(self, info: Info, slug: str | None = None) -> Organization | None:
        ctx = info.context
        return Organization.from_row(await service.get_organization(await ctx.db(), ctx.principal, slug))
