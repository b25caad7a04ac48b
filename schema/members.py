from __future__ import annotations

from datetime import datetime

import strawberry

from authz import Permission
from resolvers import members as service
from resolvers.members import Member, MemberPage
from schema.context import Info
from schema.directives import requires_scopes
from schema.pagination import Connection
from schema.sessions import MEMBER_SESSIONS_RULE, Session, sessions_of
from schema.users import User


@strawberry.type(name="Membership")
class Membership:
    id: strawberry.ID
    user: User
    role: str
    created_at: datetime

    @strawberry.field(description="The member's signed-in sessions in this organization.", **MEMBER_SESSIONS_RULE)
    async def sessions(self, info: Info) -> list[Session] | None:
        return await sessions_of(info, str(self.user.id))

    @classmethod
    def from_member(cls, m: Member) -> Membership:
        return cls(
            id=strawberry.ID(m.membership.id),
            user=User.from_row(m.user),
            role=m.membership.role,
            created_at=m.membership.created_at,
        )


@strawberry.type
class MembershipConnection(Connection[Membership]):
    @classmethod
    def from_page(cls, page: MemberPage) -> MembershipConnection:
        return cls.of(page, Membership.from_member)


@strawberry.type
class MemberMutation:
    @strawberry.mutation(
        description="Change a member's role; it applies from the member's next request.",
        **requires_scopes(Permission.MEMBERS_MANAGE),
    )
    async def update_member_role(self, info: Info, membership_id: strawberry.ID, role: str) -> Membership:
        return Membership.from_member(await service.update_member_role(info.context, str(membership_id), role))

    @strawberry.mutation(
        description="Remove a member and end their sessions in this organization.",
        **requires_scopes(Permission.MEMBERS_MANAGE),
    )
    async def remove_member(self, info: Info, membership_id: strawberry.ID) -> bool:
        return await service.remove_member(info.context, str(membership_id))
