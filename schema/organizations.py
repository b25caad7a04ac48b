from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated

import strawberry

from authz import Permission
from resolvers import api_keys as api_keys_service
from resolvers import members as members_service
from resolvers import mfa as mfa_service
from resolvers import organizations as service
from resolvers import quotas as quotas_service
from resolvers.organizations import NewOrganization, OrganizationChanges
from schema.context import Info
from schema.directives import ListSize, Scoped, authenticated, list_size, requires_scopes, scoped
from schema.enums import Plan
from store.audit import AuditAction
from store.audit import changes as audit_changes
from store.models import Organization as OrganizationRow

if TYPE_CHECKING:
    from schema.api_keys import ApiKey
    from schema.domains import EmailDomain
    from schema.invitations import InvitationConnection, InvitationState
    from schema.members import MembershipConnection
    from schema.quotas import Quota
    from schema.reports import ReportConnection
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

    @strawberry.field(
        description="The organization's invitations, newest first; `first` is 1 to 100, `status` filters.",
        **list_size(requires_scopes(Permission.MEMBERS_READ), slicing_arguments=["first"], assumed_size=50,
                    sized_fields=["edges"]),
    )
    async def invitations(
        self, info: Info, first: int | None = 50, after: str | None = None,
        status: Annotated[InvitationState, strawberry.lazy("schema.invitations")] | None = None,
    ) -> Annotated[InvitationConnection, strawberry.lazy("schema.invitations")]:
        from resolvers.invitations import list_invitations
        from schema.invitations import InvitationConnection, invitation_status

        ctx = info.context
        now = ctx.services.now()
        page = await list_invitations(await ctx.db(), ctx.principal, self.row.id, now=now,
                                      first=50 if first is None else first, after=after,
                                      status=invitation_status(status))
        return InvitationConnection.from_page(page, now)

    @strawberry.field(description="The email domains the organization has claimed.",
                      **list_size(requires_scopes(Permission.SSO_READ), assumed_size=10))
    async def domains(self, info: Info) -> list[Annotated[EmailDomain, strawberry.lazy("schema.domains")]]:
        from resolvers.domains import list_domains
        from schema.domains import EmailDomain

        ctx = info.context
        rows = await list_domains(await ctx.db(), ctx.principal, self.row.id)
        return [EmailDomain.from_row(r) for r in rows]

    @strawberry.field(
        description="The organization's limits and their use, in QuotaResource order. The rate rows "
                    "(requests and cost) are listed when the gateway's admission step counts them.",
        **list_size(requires_scopes(Permission.QUOTAS_READ), assumed_size=7),
    )
    async def quotas(self, info: Info) -> list[Annotated[Quota, strawberry.lazy("schema.quotas")]]:
        from schema.quotas import Quota

        ctx = info.context
        rows = await quotas_service.organization_quotas(
            await ctx.db(), ctx.principal, self.row, budgets=ctx.services.budgets, now=ctx.services.now()
        )
        return [Quota.from_usage(r) for r in rows]

    @strawberry.field(description="The organization's API keys, oldest first; never their secrets.",
                      **list_size(requires_scopes(Permission.APIKEYS_READ), assumed_size=50))
    async def api_keys(self, info: Info) -> list[Annotated[ApiKey, strawberry.lazy("schema.api_keys")]]:
        from schema.api_keys import ApiKey

        ctx = info.context
        rows = await api_keys_service.list_api_keys(await ctx.db(), ctx.principal, self.row.id)
        return [ApiKey.from_row(r) for r in rows]

    @strawberry.field(
        description="The organization's reports, newest first; `first` is 1 to 100.",
        **list_size(requires_scopes(Permission.REPORTS_READ), slicing_arguments=["first"], assumed_size=20,
                    sized_fields=["edges"]),
    )
    async def reports(
        self, info: Info, first: int | None = 20, after: str | None = None
    ) -> Annotated[ReportConnection, strawberry.lazy("schema.reports")]:
        from resolvers import reports as reports_service
        from schema.reports import ReportConnection

        ctx = info.context
        page = await reports_service.list_reports(
            await ctx.db(), ctx.principal, self.row.id, 20 if first is None else first, after
        )
        return ReportConnection.from_page(page)

    @strawberry.field(description="The organization's single sign-on connections; never their secrets.",
                      **list_size(requires_scopes(Permission.SSO_READ), assumed_size=2))
    async def sso_connections(self, info: Info) -> list[Annotated[SsoConnection, strawberry.lazy("schema.sso")]]:
        from resolvers.sso import list_connections
        from schema.sso import SsoConnection

        ctx = info.context
        rows = await list_connections(await ctx.db(), ctx.principal, self.row.id)
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
        row = await service.create_organization(await ctx.db(), ctx.principal, new)
        ctx.audit(AuditAction.ORG_CREATED, resource_type="organization", resource_id=row.id,
                  details={"slug": row.slug, "name": row.name, "plan": row.plan, "parentId": row.parent_id})
        return Organization.from_row(row)

    @strawberry.mutation(
        description="Change the caller's organization's name, billing email or MFA requirement.",
        **requires_scopes(Permission.ORGANIZATION_UPDATE),
    )
    async def update_organization(self, info: Info, input: UpdateOrganizationInput) -> Organization:
        ctx = info.context
        changes = OrganizationChanges(name=input.name, billing_email=input.billing_email,
                                      require_mfa=input.require_mfa)
        if input.require_mfa:
            await mfa_service.check_can_require(ctx)
        db = await ctx.db()
        before = _audited_fields(await service.get_organization(db, ctx.principal))
        row = await service.update_organization(db, ctx.principal, changes)
        if input.require_mfa is not None:
            mfa_service.requirement_changed(ctx)
        ctx.audit(AuditAction.ORG_UPDATED, resource_type="organization", resource_id=row.id,
                  details={"changes": audit_changes(before, _audited_fields(row))})
        return Organization.from_row(row)

    @strawberry.mutation(
        description="Switch the caller's organization to another plan; its limits apply at once. A plan below "
                    "current usage deletes nothing: further creations are refused until usage is under the limit.",
        **requires_scopes(Permission.PLAN_MANAGE),
    )
    async def change_plan(self, info: Info, plan: Plan) -> Organization:
        return Organization.from_row(await service.change_plan(info.context, plan.value))


def _audited_fields(row: OrganizationRow) -> dict[str, object]:
    return {"name": row.name, "billingEmail": row.billing_email, "requireMfa": row.require_mfa}
