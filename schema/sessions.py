from __future__ import annotations

from datetime import UTC, datetime

import strawberry

from authz import Permission
from resolvers import sessions as service
from resolvers.sessions import SessionView
from schema.context import Info
from schema.directives import authenticated, requires_scopes


@strawberry.type(name="Session", description="A signed-in session: a bearer token's or a browser cookie's.")
class Session:
    id: strawberry.ID
    device: str = strawberry.field(description="A readable summary of the client's User-Agent.")
    ip_address: str | None
    method: str = strawberry.field(description="How the person signed in: password, oidc or saml.")
    created_at: datetime = strawberry.field(description="When the person signed in (a reauthenticate renews it).")
    last_seen_at: datetime
    current: bool = strawberry.field(description="Whether this is the session asking.")

    @classmethod
    def from_view(cls, v: SessionView) -> Session:
        return cls(
            id=strawberry.ID(v.id),
            device=v.device,
            ip_address=v.ip_address,
            method=v.method,
            created_at=v.created_at,
            last_seen_at=v.last_seen_at,
            current=v.current,
        )


@strawberry.type
class Reauthenticated:
    access_token: str
    expires_at: datetime
    auth_time: datetime


@strawberry.type
class SessionMutation:
    @strawberry.mutation(
        description="End one of your own sessions (any organization); NOT_FOUND for any other id.", **authenticated()
    )
    async def revoke_session(self, info: Info, id: strawberry.ID) -> bool:
        return await service.revoke_session(info.context, str(id))

    @strawberry.mutation(description="End every session of yours but this one; how many ended.", **authenticated())
    async def revoke_other_sessions(self, info: Info) -> int:
        return await service.revoke_other_sessions(info.context)

    @strawberry.mutation(
        description="End every session a member holds in this organization; how many ended.",
        **requires_scopes(Permission.SECURITY_MANAGE),
    )
    async def revoke_member_sessions(self, info: Info, member_id: strawberry.ID) -> int:
        return await service.revoke_member_sessions(info.context, str(member_id))

    @strawberry.mutation(
        description="Prove your password (and `totp`, once enrolled) again: this session counts as signed in now, "
        "for mutations that need a recent sign-in. Returns a new access token for the session.",
        **authenticated(),
    )
    async def reauthenticate(self, info: Info, password: str, totp: str | None = None) -> Reauthenticated:
        r = await service.reauthenticate(info.context, password, totp)
        return Reauthenticated(
            access_token=r.access_token,
            expires_at=datetime.fromtimestamp(r.claims.expires_at, UTC),
            auth_time=r.auth_time,
        )


async def my_sessions(info: Info) -> list[Session]:
    return [Session.from_view(v) for v in await service.list_my_sessions(info.context)]


async def sessions_of(info: Info, user_id: str) -> list[Session]:
    return [Session.from_view(v) for v in await service.member_sessions(info.context, user_id)]


MEMBER_SESSIONS_RULE = requires_scopes(Permission.SECURITY_READ)
