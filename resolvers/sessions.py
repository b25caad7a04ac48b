"""The sessions a person can see and end, an administrator's view of a member's, and signing in again.

A person sees every signed-in session of their own (bearer tokens and browser cookies alike, in every
organization they belong to: the sessions are theirs, not a tenant's) and ends any of them; an id that is
not one of their own sessions answers NOT_FOUND, exactly as an unknown id. An administrator holding
`security:read` sees a member's sessions in the administrator's organization only, and with
`security:manage` ends them. Every revocation is announced on the revocation bus after the commit, so every
process refuses the session on its next request.

`reauthenticate` proves the password (and the second factor, once enrolled) again inside the current
session: the session's sign-in time (`created_at`, the `auth_time` of its tokens and cookie) becomes now,
which is what a fresh-authentication rule asks for. Its lifetime does not start again.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import update
from sqlmodel import col, select

from authz import AuthMethod, PrincipalKind
from authz.errors import INVALID_CREDENTIALS, BadUserInput, Forbidden, NotFound, Unauthenticated
from identity.passwords import MAX_BYTES
from identity.security_policies import load_policy
from identity.sessions import revoke_sessions
from identity.tokens import AccessClaims
from identity.user_agents import describe
from resolvers import mfa
from resolvers.deps import RequestContext
from store.audit import AuditAction
from store.models import AuthSession, Membership, User
from store.scoping import tenant_select

SESSION_NOT_FOUND = "Session not found."
MAX_SESSIONS_LISTED = 100


@dataclass(frozen=True, slots=True)
class SessionView:
    id: str
    device: str
    ip_address: str | None
    method: str
    created_at: datetime
    last_seen_at: datetime
    current: bool


def _view(row: AuthSession, current_id: str | None) -> SessionView:
    return SessionView(
        id=row.id,
        device=describe(row.user_agent),
        ip_address=row.client_ip,
        method=row.auth_method,
        created_at=row.created_at,
        last_seen_at=row.last_seen_at,
        current=row.id == current_id,
    )


def _person(ctx: RequestContext) -> tuple[str, str]:
    """The signed-in person and their session; an API key has no sessions of its own."""
    principal = ctx.principal
    if principal.kind is PrincipalKind.API_KEY:
        raise Forbidden("An API key has no sessions: sessions are ended by the person signed in.")
    if principal.subject_id is None or principal.session_id is None:
        raise Unauthenticated("Authentication required.")
    return principal.subject_id, principal.session_id


async def _own_active(ctx: RequestContext, user_id: str) -> list[AuthSession]:
    # tenant-scope: the verified caller's own sessions, by the caller's user id, in every organization
    db = await ctx.db()
    rows = await db.execute(
        select(AuthSession)
        .where(
            col(AuthSession.user_id) == user_id,
            col(AuthSession.revoked_at).is_(None),
            col(AuthSession.expires_at) > ctx.services.now(),
        )
        .order_by(col(AuthSession.last_seen_at).desc(), col(AuthSession.id))
        .limit(MAX_SESSIONS_LISTED)
    )
    return list(rows.scalars().all())


async def list_my_sessions(ctx: RequestContext) -> list[SessionView]:
    if ctx.principal.kind is PrincipalKind.API_KEY or ctx.principal.session_id is None:
        return []
    user_id, session_id = _person(ctx)
    return [_view(row, session_id) for row in await _own_active(ctx, user_id)]


def _announce(ctx: RequestContext, session_ids: list[str]) -> None:
    async def announce() -> None:
        await ctx.services.revocations.publish(session_ids)

    ctx.after_commit.append(announce)


async def revoke_session(ctx: RequestContext, session_id: str) -> bool:
    """End one of the caller's own sessions (the current one included: that is a logout)."""
    user_id, current = _person(ctx)
    if not session_id or len(session_id) > 36:
        raise NotFound(SESSION_NOT_FOUND)
    db = await ctx.db()
    # tenant-scope: only a session of the verified caller's own user id is found
    row = (
        await db.execute(
            select(AuthSession).where(
                col(AuthSession.id) == session_id,
                col(AuthSession.user_id) == user_id,
                col(AuthSession.revoked_at).is_(None),
            )
        )
    ).scalar_one_or_none()
    if row is None:
        raise NotFound(SESSION_NOT_FOUND)
    await revoke_sessions(db, [row.id], reason="revoked_by_user", now=ctx.services.now())
    ctx.audit(
        AuditAction.AUTHN_SESSION_REVOKED,
        organization_id=row.organization_id,
        resource_type="session",
        resource_id=row.id,
        details={"current": row.id == current, "device": describe(row.user_agent)},
    )
    _announce(ctx, [row.id])
    return True


async def revoke_other_sessions(ctx: RequestContext) -> int:
    """End every session of the caller but the current one; how many ended."""
    user_id, current = _person(ctx)
    # tenant-scope: every session of the verified caller's own user id, whatever the organization
    db = await ctx.db()
    others = await db.execute(
        select(AuthSession.id).where(
            col(AuthSession.user_id) == user_id,
            col(AuthSession.revoked_at).is_(None),
            col(AuthSession.id) != current,
        )
    )
    ended = sorted(others.scalars().all())
    await revoke_sessions(db, ended, reason="revoked_by_user", now=ctx.services.now())
    ctx.audit(
        AuditAction.AUTHN_SESSION_REVOKED,
        resource_type="user",
        resource_id=user_id,
        details={"sessionsEnded": len(ended), "keptCurrent": True},
    )
    _announce(ctx, ended)
    return len(ended)


async def member_sessions(ctx: RequestContext, user_id: str) -> list[SessionView]:
    """A member's active sessions in the caller's organization (security:read)."""
    org_id = ctx.principal.organization_id
    if org_id is None:
        return []
    db = await ctx.db()
    rows = await db.execute(
        tenant_select(AuthSession, org_id)
        .where(
            col(AuthSession.user_id) == user_id,
            col(AuthSession.revoked_at).is_(None),
            col(AuthSession.expires_at) > ctx.services.now(),
        )
        .order_by(col(AuthSession.last_seen_at).desc(), col(AuthSession.id))
        .limit(MAX_SESSIONS_LISTED)
    )
    return [_view(row, ctx.principal.session_id) for row in rows.scalars().all()]


async def revoke_member_sessions(ctx: RequestContext, membership_id: str) -> int:
    """End every session a member holds in the caller's organization (security:manage); how many ended."""
    org_id = ctx.principal.organization_id
    if org_id is None or not membership_id or len(membership_id) > 36:
        raise NotFound("Membership not found.")
    db = await ctx.db()
    member = (
        await db.execute(tenant_select(Membership, org_id).where(col(Membership.id) == membership_id))
    ).scalar_one_or_none()
    if member is None:
        raise NotFound("Membership not found.")
    ended = list(
        (
            await db.execute(
                select(AuthSession.id).where(
                    col(AuthSession.organization_id) == org_id,
                    col(AuthSession.user_id) == member.user_id,
                    col(AuthSession.revoked_at).is_(None),
                )
            )
        )
        .scalars()
        .all()
    )
    await revoke_sessions(db, ended, reason="revoked_by_admin", now=ctx.services.now())
    ctx.audit(
        AuditAction.MEMBER_SESSIONS_REVOKED,
        resource_type="membership",
        resource_id=member.id,
        details={"userId": member.user_id, "sessionsEnded": len(ended)},
    )
    _announce(ctx, ended)
    return len(ended)


@dataclass(frozen=True, slots=True)
class Reauthenticated:
    auth_time: datetime
    # a new access token for the session (its refresh token stays valid, and now refreshes to this auth_time)
    access_token: str
    claims: AccessClaims


async def reauthenticate(ctx: RequestContext, password: str, totp: str | None) -> Reauthenticated:
    """Prove the password (and the second factor) again: the current session counts as signed in now."""
    user_id, session_id = _person(ctx)
    if len(password.encode("utf-8", "surrogatepass")) > MAX_BYTES:
        raise BadUserInput("password is too long", field="password")
    code = mfa.parse(totp, "totp")
    services, principal = ctx.services, ctx.principal
    org_id = principal.organization_id
    if org_id is None:
        raise Unauthenticated("Authentication required.")
    async with services.db.transaction() as read:
        user = await read.get(User, user_id)
        policy = await load_policy(read, org_id)
    if user is None or not user.is_active:
        raise Unauthenticated("Authentication required.")
    if not policy.method_allowed(AuthMethod.PASSWORD.value, user_id=user_id):
        raise Forbidden("This organization does not allow password sign-in: sign in again through single sign-on.")
    attempt = await services.throttle.begin(user.email, principal.client_ip, principal.organization_id)
    if not attempt.allowed:
        await services.hasher.burn()
        raise Unauthenticated(INVALID_CREDENTIALS)
    if not await services.hasher.verify(user.password_hash, password):
        await services.throttle.failed(attempt)
        raise Unauthenticated(INVALID_CREDENTIALS)
    refusal = await mfa.check_login_code(ctx, user, code, principal.organization_id)
    if refusal is not None:
        await services.throttle.failed(attempt)
        raise mfa.refuse(refusal)
    await services.throttle.succeeded(attempt)
    now = services.now()
    db = await ctx.db()
    # tenant-scope: the verified caller's own current session
    renewed = await db.execute(
        update(AuthSession)
        .where(
            col(AuthSession.id) == session_id,
            col(AuthSession.user_id) == user_id,
            col(AuthSession.revoked_at).is_(None),
        )
        .values(created_at=now, last_seen_at=now)
    )
    if (getattr(renewed, "rowcount", 0) or 0) != 1:
        raise Unauthenticated("Authentication required.")
    # the same proof as a sign-in, so the same token a sign-in gives (a browser may ignore it)
    token, claims = services.tokens.issue(subject=user_id, organization_id=org_id, session_id=session_id)
    ctx.audit(AuditAction.AUTHN_REAUTHENTICATED, resource_type="session", resource_id=session_id)
    _announce(ctx, [session_id])
    return Reauthenticated(auth_time=now, access_token=token, claims=claims)
