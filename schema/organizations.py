from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Annotated

import strawberry

from authz import Permission
from resolvers import api_keys as api_keys_service
from resolvers import members as members_service
from resolvers import organizations as service
from resolvers import quotas as quotas_service
from resolvers.organizations import NewOrganization, OrganizationChanges
from schema.context import Info
from schema.directives import ListSize, Scoped, authenticated, list_size, requires_scopes, scoped
from schema.enums import Plan
from store.models import Organization as OrganizationRow

if TYPE_CHECKING:
    from schema.address_blocks import AddressBlock
    from schema.api_keys import ApiKey
    from schema.audit_streams import AuditStream
    from schema.domains import EmailDomain
    from schema.invitations import InvitationConnection, InvitationState
    from schema.members import MembershipConnection
    from schema.quotas import Quota
    from schema.report_schedules import ReportSchedule
    from schema.reports import ReportConnection
    from schema.retention import Retention
    from schema.security_events import Webhook
    from schema.security_policy import SecurityPolicy
    from schema.sso import SsoConnection


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
            id=strawberry.ID(row.id),
            slug=row.slug,
            name=row.name,
            plan=Plan(row.plan),
            created_at=row.created_at,
            row=row,
        )

    @strawberry.field
    async def parent(self, info: Info) -> Organization | None:
        row = await service.get_parent(info.context, self.row)
        return Organization.from_row(row) if row else None

    @strawberry.field(directives=[Scoped(), ListSize(assumed_size=10)])
    async def children(self, info: Info) -> list[Organization]:
        return [Organization.from_row(r) for r in await service.list_children(info.context, self.row)]

    @strawberry.field(**requires_scopes(Permission.BILLING_READ))
    def billing_email(self) -> str | None:
        return self.row.billing_email

    @strawberry.field(
        description="Members of the caller's own organization, oldest first; `first` is 1 to 100.",
        **list_size(
            requires_scopes(Permission.MEMBERS_READ),
            slicing_arguments=["first"],
            assumed_size=50,
            sized_fields=["edges"],
        ),
    )
    async def members(
        self, info: Info, first: int | None = 50, after: str | None = None
    ) -> Annotated[MembershipConnection, strawberry.lazy("schema.members")]:
        from schema.members import MembershipConnection

        page = await members_service.list_members(info.context, self.row.id, 50 if first is None else first, after)
        return MembershipConnection.from_page(page)

    @strawberry.field(
        description="The organization's invitations, newest first; `first` is 1 to 100, `status` filters.",
        **list_size(
            requires_scopes(Permission.MEMBERS_READ),
            slicing_arguments=["first"],
            assumed_size=50,
            sized_fields=["edges"],
        ),
    )
    async def invitations(
        self,
        info: Info,
        first: int | None = 50,
        after: str | None = None,
        status: Annotated[InvitationState, strawberry.lazy("schema.invitations")] | None = None,
    ) -> Annotated[InvitationConnection, strawberry.lazy("schema.invitations")]:
        from resolvers.invitations import list_invitations
        from schema.invitations import InvitationConnection, invitation_status

        page = await list_invitations(
            info.context,
            self.row.id,
            first=50 if first is None else first,
            after=after,
            status=invitation_status(status),
        )
        return InvitationConnection.from_page(page)

    @strawberry.field(
        description="The email domains the organization has claimed.",
        **list_size(requires_scopes(Permission.SSO_READ), assumed_size=10),
    )
    async def domains(self, info: Info) -> list[Annotated[EmailDomain, strawberry.lazy("schema.domains")]]:
        from resolvers.domains import list_domains
        from schema.domains import EmailDomain

        return [EmailDomain.from_row(r) for r in await list_domains(info.context, self.row.id)]

    @strawberry.field(
        description="The organization's limits and their use, in QuotaResource order. The rate rows "
        "(requests and cost) are listed when the gateway's admission step counts them.",
        **list_size(requires_scopes(Permission.QUOTAS_READ), assumed_size=7),
    )
    async def quotas(self, info: Info) -> list[Annotated[Quota, strawberry.lazy("schema.quotas")]]:
        from schema.quotas import Quota

        return [Quota.from_usage(r) for r in await quotas_service.organization_quotas(info.context, self.row)]

    @strawberry.field(
        description="The organization's API keys, oldest first; never their secrets.",
        **list_size(requires_scopes(Permission.APIKEYS_READ), assumed_size=50),
    )
    async def api_keys(self, info: Info) -> list[Annotated[ApiKey, strawberry.lazy("schema.api_keys")]]:
        from schema.api_keys import ApiKey

        return [ApiKey.from_row(r) for r in await api_keys_service.list_api_keys(info.context, self.row.id)]

    @strawberry.field(
        description="The organization's reports, newest first; `first` is 1 to 100.",
        **list_size(
            requires_scopes(Permission.REPORTS_READ),
            slicing_arguments=["first"],
            assumed_size=20,
            sized_fields=["edges"],
        ),
    )
    async def reports(
        self, info: Info, first: int | None = 20, after: str | None = None
    ) -> Annotated[ReportConnection, strawberry.lazy("schema.reports")]:
        from resolvers import reports as reports_service
        from schema.reports import ReportConnection

        page = await reports_service.list_reports(info.context, self.row.id, 20 if first is None else first, after)
        return ReportConnection.from_page(page)

    @strawberry.field(
        description="The organization's report schedules, oldest first (at most 50).",
        **list_size(requires_scopes(Permission.REPORTS_READ), assumed_size=10),
    )
    async def report_schedules(
        self, info: Info
    ) -> list[Annotated[ReportSchedule, strawberry.lazy("schema.report_schedules")]]:
        from resolvers.report_schedules import list_schedules
        from schema.report_schedules import ReportSchedule

        return [ReportSchedule.from_row(r) for r in await list_schedules(info.context, self.row.id)]

    @strawberry.field(
        description="The organization's single sign-on connections; never their secrets.",
        **list_size(requires_scopes(Permission.SSO_READ), assumed_size=2),
    )
    async def sso_connections(self, info: Info) -> list[Annotated[SsoConnection, strawberry.lazy("schema.sso")]]:
        from resolvers.sso import list_connections
        from schema.sso import SsoConnection

        return [SsoConnection.from_row(r) for r in await list_connections(info.context, self.row.id)]

    @strawberry.field(
        description="The organization's address blocks in force, newest first.",
        **list_size(requires_scopes(Permission.SECURITY_READ), assumed_size=50),
    )
    async def blocked_addresses(
        self, info: Info
    ) -> list[Annotated[AddressBlock, strawberry.lazy("schema.address_blocks")]]:
        from resolvers.address_blocks import blocked_addresses
        from schema.address_blocks import AddressBlock

        return [AddressBlock.from_row(r) for r in await blocked_addresses(info.context, self.row.id)]

    @strawberry.field(
        description="The organization's security policy (docs/security-policies.md).",
        **requires_scopes(Permission.SECURITY_READ),
    )
    async def security_policy(self, info: Info) -> Annotated[SecurityPolicy, strawberry.lazy("schema.security_policy")]:
        from schema.security_policy import organization_policy

        return await organization_policy(info, self.row.id)

    @strawberry.field(
        description="How long the organization's data is kept (docs/retention.md).",
        **requires_scopes(Permission.ORGANIZATION_READ),
    )
    async def retention(self, info: Info) -> Annotated[Retention, strawberry.lazy("schema.retention")]:
        from schema.retention import organization_retention

        return await organization_retention(info, self.row.id)

    @strawberry.field(
        description="The organization's webhooks for security events, oldest first; never their secrets.",
        **list_size(requires_scopes(Permission.SECURITY_READ), assumed_size=5),
    )
    async def webhooks(self, info: Info) -> list[Annotated[Webhook, strawberry.lazy("schema.security_events")]]:
        from resolvers.webhooks import list_webhooks
        from schema.security_events import Webhook

        return [Webhook.from_row(r) for r in await list_webhooks(info.context, self.row.id)]

    @strawberry.field(
        description='The organization\'s audit streams (docs/audit.md, "Streaming"), oldest first; never their '
        "secrets.",
        **list_size(requires_scopes(Permission.SECURITY_READ), assumed_size=5),
    )
    async def audit_streams(self, info: Info) -> list[Annotated[AuditStream, strawberry.lazy("schema.audit_streams")]]:
        from resolvers.audit_streams import list_streams
        from schema.audit_streams import AuditStream

        return [AuditStream.from_row(r) for r in await list_streams(info.context, self.row.id)]


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
    @strawberry.field(description="The caller's organization, or one below it by slug.", **scoped(authenticated()))
    async def organization(self, info: Info, slug: str | None = None) -> Organization | None:
        return Organization.from_row(await service.get_organization(info.context, slug))


@strawberry.type
class OrganizationMutation:
    @strawberry.mutation(
        description="Create an organization below the caller's; the caller becomes its owner.",
        **requires_scopes(Permission.ORGANIZATIONS_CREATE),
    )
    async def create_organization(self, info: Info, input: CreateOrganizationInput) -> Organization:
        new = NewOrganization(
            slug=input.slug, name=input.name, plan=(input.plan or Plan.FREE).value, billing_email=input.billing_email
        )
        return Organization.from_row(await service.create_organization(info.context, new))

    @strawberry.mutation(
        description="Change the caller's organization's name, billing email or MFA requirement.",
        **requires_scopes(Permission.ORGANIZATION_UPDATE),
    )
    async def update_organization(self, info: Info, input: UpdateOrganizationInput) -> Organization:
        changes = OrganizationChanges(name=input.name, billing_email=input.billing_email, require_mfa=input.require_mfa)
        return Organization.from_row(await service.update_organization(info.context, changes))

    @strawberry.mutation(
        description="Switch the caller's organization to another plan; its limits apply at once. A plan below "
        "current usage deletes nothing: further creations are refused until usage is under the limit.",
        **requires_scopes(Permission.PLAN_MANAGE),
    )
    async def change_plan(self, info: Info, plan: Plan) -> Organization:
        return Organization.from_row(await service.change_plan(info.context, plan.value))
