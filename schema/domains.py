"""Claimed email domains in the schema: `Organization.domains`, `claimDomain`, `releaseDomain`."""

from __future__ import annotations

from datetime import datetime

import strawberry

from authz import Permission
from resolvers import domains as service
from schema.context import Info
from schema.directives import requires_scopes
from store.models import EmailDomain as EmailDomainRow


@strawberry.type(
    name="EmailDomain",
    description="An email domain the organization has claimed: its identity "
    "providers may create accounts at addresses there.",
)
class EmailDomain:
    domain: str
    claimed_at: datetime

    @classmethod
    def from_row(cls, row: EmailDomainRow) -> EmailDomain:
        return cls(domain=row.domain, claimed_at=row.claimed_at)


@strawberry.type
class DomainMutation:
    @strawberry.mutation(
        description="Claim an email domain for the organization (the first claim wins; a platform operator can "
        "reassign it). Its identity providers may then provision accounts at that domain.",
        **requires_scopes(Permission.SSO_MANAGE),
    )
    async def claim_domain(self, info: Info, domain: str) -> EmailDomain:
        return EmailDomain.from_row(await service.claim_domain(info.context, domain))

    @strawberry.mutation(
        description="Give up the organization's claim on an email domain.", **requires_scopes(Permission.SSO_MANAGE)
    )
    async def release_domain(self, info: Info, domain: str) -> bool:
        return await service.release_domain(info.context, domain)
