"""The organization's security policy where sessions begin: password sign-in, single sign-on and refresh.

A sign-in from an address outside the organization's allowlist, or by a method it does not allow (a password
in an SSO-only organization, unless the member is a break-glass owner), is refused with the answer every
other refusal of that sign-in gets. A new session is kept within `maxConcurrentSessions` (the oldest ended,
or the sign-in refused) and lives no longer than `sessionMaxLifetimeHours`. A refresh the policy refuses
(address, method, lifetime, idle timeout) ends its session.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col, select

from authz.errors import BadUserInput, Forbidden
from authz.security_policy import ConcurrentSessionAction, SecurityPolicy, SignInMethod
from identity.security_events import SecurityEventKind, Severity, record_security_event
from identity.security_policies import load_policy
from identity.sessions import RefreshError, revoke_sessions
from identity.tokens import hash_opaque_token
from resolvers.deps import RequestContext
from store.models import AuthSession, RefreshToken, RefreshTokenFamily

ADDRESS_NOT_ALLOWED = "address_not_allowed"
METHOD_NOT_ALLOWED = "method_not_allowed"
SESSION_LIMIT = "session_limit"
REFUSALS = {
    ADDRESS_NOT_ALLOWED: "from an address outside the organization's allowlist",
    METHOD_NOT_ALLOWED: "by a sign-in method the organization does not allow",
    SESSION_LIMIT: "over the organization's limit of concurrent sessions",
}


class SessionLimitReached(Exception):
    """`maxConcurrentSessions` reached under REFUSE_NEW."""


def sign_in_refusal(policy: SecurityPolicy, *, method: str, user_id: str, client_ip: str | None) -> str | None:
    """Why the policy refuses this sign-in (`address_not_allowed`, `method_not_allowed`), or None."""
    if not policy.address_allowed(client_ip):
        return ADDRESS_NOT_ALLOWED
    if not policy.method_allowed(method, user_id=user_id):
        return METHOD_NOT_ALLOWED
    return None


async def record_refusal(
    ctx: RequestContext, *, organization_id: str, user_id: str | None, reason: str, method: str
) -> None:
    """A sign-in the policy refused, told to the organization's security people: a `sign_in_refused` event,
    committed on its own (the refused sign-in wrote nothing)."""
    async with ctx.services.db.transaction() as db:
        await record_security_event(
            db,
            organization_id=organization_id,
            kind=SecurityEventKind.SIGN_IN_REFUSED,
            severity=Severity.LOW if reason == SESSION_LIMIT else Severity.MEDIUM,
            summary=f"Sign-in refused {REFUSALS[reason]}",
            subject_id=user_id,
            client_ip=ctx.principal.client_ip,
            request_id=ctx.principal.request_id,
            details={"reason": reason, "method": method},
        )


def lifetime_seconds(policy: SecurityPolicy, default_seconds: int) -> int:
    """A new session's lifetime: the gateway's, or the policy's when that is shorter."""
    hours = policy.session_max_lifetime_hours
    return default_seconds if hours is None else min(default_seconds, hours * 3600)


async def active_sessions(
    db: AsyncSession, policy: SecurityPolicy, *, user_id: str, organization_id: str, now: datetime
) -> list[str]:
    """The member's sessions in the organization that still count, oldest first (past the policy's idle
    timeout or lifetime, a session no longer counts: the edge refuses it already)."""
    stmt = (
        select(col(AuthSession.id))
        .where(
            col(AuthSession.organization_id) == organization_id,
            col(AuthSession.user_id) == user_id,
            col(AuthSession.revoked_at).is_(None),
            col(AuthSession.expires_at) > now,
        )
        .order_by(col(AuthSession.created_at), col(AuthSession.id))
    )
    if policy.session_idle_timeout_minutes is not None:
        stmt = stmt.where(col(AuthSession.last_seen_at) > now - timedelta(minutes=policy.session_idle_timeout_minutes))
    if policy.session_max_lifetime_hours is not None:
        stmt = stmt.where(col(AuthSession.created_at) > now - timedelta(hours=policy.session_max_lifetime_hours))
    return list((await db.execute(stmt)).scalars().all())


def sessions_to_end(policy: SecurityPolicy, active: list[str]) -> list[str]:
    """The oldest sessions to end so a new one fits; `SessionLimitReached` under REFUSE_NEW."""
    limit = policy.max_concurrent_sessions
    if limit is None or len(active) < limit:
        return []
    if policy.concurrent_session_action is ConcurrentSessionAction.REFUSE_NEW:
        raise SessionLimitReached
    return active[: len(active) - limit + 1]


@dataclass(frozen=True, slots=True)
class _Refreshing:
    session_id: str
    organization_id: str
    user_id: str
    auth_method: str
    created_at: datetime
    last_seen_at: datetime


async def refresh_refusal(
    db: AsyncSession, refresh_token: str, *, client_ip: str | None, now: datetime
) -> RefreshError | None:
    """Before a refresh token is spent: the refusal (its session ended, in `db`) when the organization's
    policy no longer lets the session go on, or None."""
    row = (
        await db.execute(
            # tenant-scope: the session the presented refresh token belongs to, whatever its tenant
            select(AuthSession)
            .join(RefreshTokenFamily, col(RefreshTokenFamily.session_id) == col(AuthSession.id))
            .join(RefreshToken, col(RefreshToken.family_id) == col(RefreshTokenFamily.id))
            .where(col(RefreshToken.token_hash) == hash_opaque_token(refresh_token))
        )
    ).scalar_one_or_none()
    if row is None or row.revoked_at is not None:
        return None  # refused by the rotation itself, as before
    s = _Refreshing(row.id, row.organization_id, row.user_id, row.auth_method, row.created_at, row.last_seen_at)
    policy = await load_policy(db, s.organization_id)
    reason = sign_in_refusal(policy, method=s.auth_method, user_id=s.user_id, client_ip=client_ip)
    hours, minutes = policy.session_max_lifetime_hours, policy.session_idle_timeout_minutes
    if reason is None and hours is not None and s.created_at + timedelta(hours=hours) <= now:
        reason = "policy_lifetime"
    if reason is None and minutes is not None and s.last_seen_at + timedelta(minutes=minutes) <= now:
        reason = "policy_idle"
    if reason is None:
        return None
    await revoke_sessions(db, [s.session_id], reason=reason[:40], now=now)
    return RefreshError(reason, revoked_session_id=s.session_id)


def check_key_expiry(policy: SecurityPolicy, expires_at: datetime | None, now: datetime) -> None:
    """A new key under the policy: API keys allowed at all, and an expiry within `apiKeyMaxLifetimeDays`."""
    if SignInMethod.API_KEY not in policy.allowed_sign_in_methods:
        raise Forbidden("API keys are not allowed by the organization's security policy.")
    days = policy.api_key_max_lifetime_days
    if days is not None and (expires_at is None or expires_at > now + timedelta(days=days)):
        raise BadUserInput(
            f"expiresAt is required and at most {days} days ahead (the organization's apiKeyMaxLifetimeDays)",
            field="expiresAt",
        )


def capped_key_expiry(policy: SecurityPolicy, expires_at: datetime | None, now: datetime) -> datetime | None:
    """A rotated key's expiry: its own, or `apiKeyMaxLifetimeDays` from now when that comes first (or it had none)."""
    days = policy.api_key_max_lifetime_days
    if days is None:
        return expires_at
    cap = now + timedelta(days=days)
    return cap if expires_at is None or expires_at > cap else expires_at
