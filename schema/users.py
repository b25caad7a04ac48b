from __future__ import annotations

from datetime import datetime
from enum import Enum

import strawberry

from resolvers import users as service
from schema.api_keys import ApiKey
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


@strawberry.enum(description="What kind of credential the caller signed in with.")
class ViewerKind(Enum):
    USER = "user"
    API_KEY = "api_key"


@strawberry.type(
    description="The caller. A person (`kind: USER`, `user` set) or an API key (`kind: API_KEY`, `apiKey` set): "
    "a key is no person, so `user` is null for it."
)
class Viewer:
    kind: ViewerKind
    user: User | None = strawberry.field(description="The signed-in person; null when the caller is an API key.")
    api_key: ApiKey | None = strawberry.field(description="The calling API key; null when the caller is a person.")
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
            kind=ViewerKind.API_KEY if v.api_key is not None else ViewerKind.USER,
            user=User.from_row(v.user) if v.user is not None else None,
            api_key=ApiKey.from_row(v.api_key) if v.api_key is not None else None,
            organization=Organization.from_row(v.organization),
            role=v.role,
            permissions=v.permissions,
            auth_method=v.auth_method,
        )

    @strawberry.field(description="The caller's effective permissions.", **authenticated())
    async def permissions(self, info: Info) -> list[str]:
        return await service.list_permissions(info.context)
