"""Invitations in the schema: `addMember` invites, `resendInvitation`, `revokeInvitation`,
`Organization.invitations`, and `acceptInvitation` (schema/auth.py)."""

from __future__ import annotations

from datetime import datetime
from enum import Enum

import strawberry

from authz import Permission
from resolvers import invitations as service
from resolvers.invitations import InvitationPage, InvitationStatus, status_of
from schema.context import Info
from schema.directives import requires_scopes
from schema.members import Membership
from schema.pagination import Connection
from store.models import Invitation as InvitationRow


@strawberry.enum(name="InvitationStatus")
class InvitationState(Enum):
    PENDING = "pending"
    ACCEPTED = "accepted"
    REVOKED = "revoked"
    EXPIRED = "expired"


@strawberry.type(name="Invitation", description="An offer of membership to an address; never its token.")
class Invitation:
    id: strawberry.ID
    email: str
    role: str
    status: InvitationState
    created_at: datetime
    expires_at: datetime
    sent_at: datetime | None
    send_count: int
    accepted_at: datetime | None
    revoked_at: datetime | None

    @classmethod
    def from_row(cls, row: InvitationRow, now: datetime) -> Invitation:
        return cls(
            id=strawberry.ID(row.id),
            email=row.email,
            role=row.role,
            status=InvitationState(status_of(row, now).value),
            created_at=row.created_at,
            expires_at=row.expires_at,
            sent_at=row.sent_at,
            send_count=row.send_count,
            accepted_at=row.accepted_at,
            revoked_at=row.revoked_at,
        )


@strawberry.type
class InvitationConnection(Connection[Invitation]):
    @classmethod
    def from_page(cls, page: InvitationPage) -> InvitationConnection:
        return cls.of(page, lambda row: Invitation.from_row(row, page.now))


@strawberry.type
class MemberAdded:
    invitation: Invitation = strawberry.field(
        description="The invitation sent to the address; the person becomes a member by accepting it."
    )
    membership: Membership | None = strawberry.field(
        default=None,
        deprecation_reason="A member joins only by accepting the invitation: always null.",
    )
    invitation_token: str | None = strawberry.field(
        default=None,
        deprecation_reason="The invitation's token reaches the invitee by email only: always null.",
    )


def invitation_status(value: InvitationState | None) -> InvitationStatus | None:
    return InvitationStatus(value.value) if value is not None else None


@strawberry.type
class InvitationMutation:
    @strawberry.mutation(
        description="Invite an address to the organization with a role: the invitation goes to the address by "
        "email, and the same answer comes back whether or not the address has an account.",
        **requires_scopes(Permission.MEMBERS_MANAGE),
    )
    async def add_member(self, info: Info, email: str, role: str) -> MemberAdded:
        row = await service.add_member(info.context, email, role)
        return MemberAdded(invitation=Invitation.from_row(row, info.context.services.now()))

    @strawberry.mutation(
        description="Send an invitation again with a new link (the previous one stops working) and seven more days.",
        **requires_scopes(Permission.MEMBERS_MANAGE),
    )
    async def resend_invitation(self, info: Info, id: strawberry.ID) -> Invitation:
        row = await service.resend_invitation(info.context, str(id))
        return Invitation.from_row(row, info.context.services.now())

    @strawberry.mutation(
        description="Withdraw a pending invitation; its link stops working.",
        **requires_scopes(Permission.MEMBERS_MANAGE),
    )
    async def revoke_invitation(self, info: Info, id: strawberry.ID) -> Invitation:
        row = await service.revoke_invitation(info.context, str(id))
        return Invitation.from_row(row, info.context.services.now())
