from __future__ import annotations

from datetime import datetime

import strawberry

from resolvers import users as service
from schema.context import Info
from schema.directives import authenticated
from schema.organizations import Organization
from schema.sessions import Session, my_sessions
from store.models import User as UserRow


@strawberry.type(name="User")
class User:
    id: strawberry.ID
    email: str
    name: str | None
    mfa_enabled: bool
    last_login_at: datetime | None
    email_verified: bool

    @classmethod
    def from_row(cls, row: UserRow) -> User:
        return cls(
            id=strawberry.ID(row.id),
            email=row.email,
            name=row.name,
            mfa_enabled=row.mfa_enabled,
            last_login_at=row.last_login_at,
            email_verified=row.email_verified_at is not None,
        )


@strawberry.type
class Viewer:
    user: User
    organization: Organization
    role: str
    permissions: list[str]
    auth_method: str

    @strawberry.field(description="Your signed-in sessions, in every organization, the most recent first.")
    async def sessions(self, info: Info) -> list[Session]:
        return await my_sessions(info)


@strawberry.type
class UserQuery:
    @strawberry.field(
        description="Who the caller is, in which organization, with which permissions.", **authenticated()
    )
    async def me(self, info: Info) -> Viewer:
        v = await service.get_viewer(info.context)
        return Viewer(
            user=User.from_row(v.user),
            organization=Organization.from_row(v.organization),
            role=v.role,
            permissions=v.permissions,
            auth_method=v.auth_method,
        )

    @strawberry.field(description="The caller's effective permissions.", **authenticated())
    async def permissions(self, info: Info) -> list[str]:
        return await service.list_permissions(info.context)
