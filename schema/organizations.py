from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated

import strawberry

from authz import Permission
from resolvers import api_keys as api_keys_service
from resolvers import members as members_service
from resolvers import organizations as service
from resolvers.organizations import NewOrganization, OrganizationChanges
from schema.context import Info
from schema.directives import ListSize, Scoped, authenticated, list_size, requires_scopes, scoped
from schema.enums import Plan
from store.models import Organization as OrganizationRow

if TYPE_CHECKING:
    from schema.api_keys import ApiKey
    from schema.members import MembershipConnection
    from schema.sso import SsoConnection


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

    @strawberry.field(directives=[Scoped(), ListSize(assumed_size=10)])
    async def children(self, info: Info) -> list[Organization]:
        ctx = info.context
        rows = await service.list_children(await ctx.db(), ctx.principal, self.row)
        return [Organization.from_row(r) for r in rows]

    @strawberry.field(**requires_scopes(Permission.BILLING_READ))
    def billing_email(self) -> str | None:
        return self.row.billing_email

    @strawberry.field(
        description="Members of the caller's own organization, oldest first; `first` is 1 to 100.",
        **list_size(requires_scopes(Permission.MEMBERS_READ), slicing_arguments=["first"], assumed_size=50,
                    sized_fields=["edges"]),
    )
    async def members(
        self, info: Info, first: int | None = 50, after: str | None = None
    ) -> Annotated[MembershipConnection, strawberry.lazy("schema.members")]:
        from schema.members import MembershipConnection

        ctx = info.context
        page = await members_service.list_members(
            await ctx.db(), ctx.principal, self.row.id, 50 if first is None else first, after
        )
        return MembershipConnection.from_page(page)

    @strawberry.field(description="The organization's API keys, oldest first; never their secrets.",
                      **list_size(requires_scopes(Permission.APIKEYS_READ), assumed_size=50))
    async def api_keys(self, info: Info) -> list[Annotated[ApiKey, strawberry.lazy("schema.api_keys")]]:
        from schema.api_keys import ApiKey

        ctx = info.context
        rows = await api_keys_service.list_api_keys(await ctx.db(), ctx.principal, self.row.id)
        return [ApiKey.from_row(r) for r in rows]

    @strawberry.field(description="The organization's identity providers; never a secret.",
                      **list_size(requires_scopes(Permission.SSO_READ), assumed_size=5))
    async def sso_connections(self, info: Info) -> list[Annotated[SsoConnection, strawberry.lazy("schema.sso")]]:
        from resolvers import saml as saml_service
        from schema.sso import SsoConnection

        ctx = info.context
        rows = await saml_service.list_sso_connections(await ctx.db(), ctx.principal, self.row.id)
        return [SsoConnection.from_row(r) for r in rows]


@strawberry.input
class CreateOrganizationInput:
    slug: str
    name: str
    plan: Plan | None = Plan.FREE
    billing_email: str | None = None


@strawberry.input
class UpdateOrganizationInput:
    name: str | None = None
    billing_email: str | None = strawberry.field(default=None, description="An empty string clears it.")
    require_mfa: bool | None = None


@strawberry.type
class OrganizationQuery:
    @strawberry.field(
        description="The caller's organization, or one below it by slug.", **scoped(authenticated())
    )
    async def organization(self, info: Info, slug: str | None = None) -> Organization | None:
        ctx = info.context
        return Organization.from_row(await service.get_organization(await ctx.db(), ctx.principal, slug))


@strawberry.type
class OrganizationMutation:
    @strawberry.mutation(
        description="Create an organization below the caller's; the caller becomes its owner.",
        **requires_scopes(Permission.ORGANIZATIONS_CREATE),
    )
    async def create_organization(self, info: Info, input: CreateOrganizationInput) -> Organization:
        ctx = info.context
        new = NewOrganization(slug=input.slug, name=input.name, plan=(input.plan or Plan.FREE).value,
                              billing_email=input.billing_email)
        return Organization.from_row(await service.create_organization(await ctx.db(), ctx.principal, new))

    @strawberry.mutation(
        description="Change the caller's organization's name, billing email or MFA requirement.",
        **requires_scopes(Permission.ORGANIZATION_UPDATE),
    )
    async def update_organization(self, info: Info, input: UpdateOrganizationInput) -> Organization:
        ctx = info.context
        changes = OrganizationChanges(name=input.name, billing_email=input.billing_email,
                                      require_mfa=input.require_mfa)
        return Organization.from_row(await service.update_organization(await ctx.db(), ctx.principal, changes))
