"""Signed-in sessions, refresh-token families and the per-process session cache.

An access token names its session (`sid`); the session decides whether the token still counts. The
cache keeps what a request needs (user, organization, role, the role's permissions, plan) for a short
time and is emptied the moment any process announces a change (see `revocation`): for one session (its
id), for every session of a user (`user:<id>`, after a role change) or of an organization (`org:<id>`,
after a custom role changed). A value loaded while such an announcement was in flight is never stored,
so a revoked session or a withdrawn permission cannot be resurrected by a slow read.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import select as sa_select
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col, select

from authz import AuthMethod, RoleDefinition, is_builtin_role, is_permission, resolve_permissions
from identity.password_history import password_expired
from identity.tokens import hash_opaque_token, new_refresh_token
from store.models import (
    AuthSession,
    Membership,
    Organization,
    RefreshToken,
    RefreshTokenFamily,
    Role,
    User,
)
from store.scoping import tenant_select
from store.security import SecurityPolicyRow

USER_KEY = "user:"
ORG_KEY = "org:"


def user_key(user_id: str) -> str:
    """The revocation key that drops every cached session of a user."""
    return USER_KEY + user_id


def org_key(organization_id: str) -> str:
    """The revocation key that drops every cached session in an organization."""
    return ORG_KEY + organization_id


@dataclass(frozen=True, slots=True)
class SessionInfo:
    session_id: str
    user_id: str
    organization_id: str
    role: str
    plan: str
    auth_method: str
    expires_at: datetime
    permissions: frozenset[str] = frozenset()
    mfa_enrollment_required: bool = False
    last_seen_at: datetime | None = None
    # a password session whose password is older than the organization's passwordMaxAgeDays: only
    # changePassword (and `me`, `logout`) until it is changed
    password_change_required: bool = False
    # when the person signed in to this session: the `auth_time` of its tokens and of its cookie
    created_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class SessionPolicy:
    absolute_lifetime_seconds: int = 14 * 24 * 3600
    refresh_idle_seconds: int = 7 * 24 * 3600


class SessionCache:
    def __init__(
        self, ttl_seconds: float = 30.0, max_entries: int = 50_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.ttl = ttl_seconds
        self.max_entries = max_entries
        self.clock = clock
        self._entries: dict[str, tuple[float, SessionInfo]] = {}
        self.epoch = 0

    def get(self, session_id: str) -> SessionInfo | None:
        entry = self._entries.get(session_id)
        if entry is None:
            return None
        if self.clock() > entry[0]:
            self._entries.pop(session_id, None)
            return None
        return entry[1]

    def put(self, info: SessionInfo, epoch: int) -> None:
        if epoch != self.epoch:
            return
        if len(self._entries) >= self.max_entries:
            self._entries.clear()
        self._entries[info.session_id] = (self.clock() + self.ttl, info)

    def invalidate(self, keys: list[str]) -> None:
        """Drop sessions by id, every session of `user:<id>` or `org:<id>`, or everything (`*`)."""
        self.epoch += 1
        if "*" in keys:
            self._entries.clear()
            return
        users = {k.removeprefix(USER_KEY) for k in keys if k.startswith(USER_KEY)}
        orgs = {k.removeprefix(ORG_KEY) for k in keys if k.startswith(ORG_KEY)}
        for sid in keys:
            self._entries.pop(sid, None)
        if users or orgs:
            stale = [
                sid for sid, (_, info) in self._entries.items() if info.user_id in users or info.organization_id in orgs
            ]
            for sid in stale:
                self._entries.pop(sid, None)


def role_definition(row: Role) -> RoleDefinition:
    """A stored custom role as `authz` sees it; a permission name no longer in the vocabulary grants nothing."""
    return RoleDefinition(
        name=row.name,
        permissions=frozenset(p for p in row.permissions if is_permission(p)),
        inherits=tuple(row.inherits),
        description=row.description,
    )


async def load_custom_roles(db: AsyncSession, organization_id: str) -> dict[str, RoleDefinition]:
    """Every custom role of one organization, by name."""
    rows = await db.execute(tenant_select(Role, organization_id))
    return {row.name: role_definition(row) for row in rows.scalars().all()}


async def role_permissions(db: AsyncSession, organization_id: str, role: str) -> frozenset[str]:
    """What a member holding `role` in the organization may do; an unknown role grants nothing."""
    if is_builtin_role(role):
        return resolve_permissions(role, {})
    return resolve_permissions(role, await load_custom_roles(db, organization_id))


async def load_session(db: AsyncSession, session_id: str, now: datetime) -> SessionInfo | None:
    """The session if it still counts: not revoked, not expired, user active and still a member."""
    row = (
        await db.execute(
            sa_select(
                col(AuthSession.id),
                col(AuthSession.user_id),
                col(AuthSession.organization_id),
                col(AuthSession.auth_method),
                col(AuthSession.expires_at),
                col(Membership.role),
                col(Organization.plan),
                col(Organization.require_mfa),
                col(User.mfa_enabled),
                col(AuthSession.last_seen_at),
                col(AuthSession.created_at),
                col(User.password_changed_at),
                col(User.created_at),
                col(SecurityPolicyRow.password_max_age_days),
            )
            .join(User, col(User.id) == col(AuthSession.user_id))
            .join(
                Membership,
                (col(Membership.user_id) == col(AuthSession.user_id))
                & (col(Membership.organization_id) == col(AuthSession.organization_id)),
            )
            .join(Organization, col(Organization.id) == col(AuthSession.organization_id))
            .outerjoin(SecurityPolicyRow, col(SecurityPolicyRow.organization_id) == col(AuthSession.organization_id))
            .where(
                col(AuthSession.id) == session_id,
                col(AuthSession.revoked_at).is_(None),
                col(AuthSession.expires_at) > now,
                col(User.is_active).is_(True),
            )
        )
    ).first()
    if row is None:
        return None
    password_session = row[3] == AuthMethod.PASSWORD.value
    return SessionInfo(
        session_id=row[0],
        user_id=row[1],
        organization_id=row[2],
        auth_method=row[3],
        expires_at=row[4],
        role=row[5],
        plan=row[6],
        permissions=await role_permissions(db, row[2], row[5]),
        # SSO sessions are exempt: the identity provider is where their second factor is enforced
        mfa_enrollment_required=bool(row[7]) and not row[8] and password_session,
        last_seen_at=row[9],
        created_at=row[10],
        password_change_required=password_session and password_expired(row[11] or row[12], row[13], now),
    )


@dataclass(frozen=True, slots=True)
class IssuedSession:
    session: AuthSession
    refresh_token: str


async def create_session(
    db: AsyncSession,
    *,
    user_id: str,
    organization_id: str,
    auth_method: str,
    client_ip: str | None,
    user_agent: str | None,
    policy: SessionPolicy,
    now: datetime,
    auth_time: float | None = None,
) -> IssuedSession:
    """A session and its first refresh token. `created_at` is when the person signed in (its tokens'
    `auth_time`): now, or `auth_time` for a session opened by someone already signed in (joining an
    organization is no new sign-in, and must not make an old one fresh)."""
    session = AuthSession(
        organization_id=organization_id,
        user_id=user_id,
        auth_method=auth_method,
        client_ip=client_ip,
        user_agent=(user_agent or "")[:256] or None,
        created_at=min(now, datetime.fromtimestamp(auth_time, UTC)) if auth_time is not None else now,
        last_seen_at=now,
        expires_at=now + timedelta(seconds=policy.absolute_lifetime_seconds),
    )
    family = RefreshTokenFamily(organization_id=organization_id, session_id=session.id, user_id=user_id, created_at=now)
    db.add(session)
    await db.flush()
    db.add(family)
    await db.flush()
    token = await _add_refresh_token(db, family, session, policy, now)
    return IssuedSession(session=session, refresh_token=token)


async def create_browser_session(
    db: AsyncSession,
    *,
    user_id: str,
    organization_id: str,
    auth_method: str,
    client_ip: str | None,
    user_agent: str | None,
    lifetime_seconds: int,
    now: datetime,
) -> AuthSession:
    """A session held by a browser's cookie: no refresh token, it lives as long as the cookie."""
    session = AuthSession(
        organization_id=organization_id,
        user_id=user_id,
        auth_method=auth_method,
        client_ip=client_ip,
        user_agent=(user_agent or "")[:256] or None,
        created_at=now,
        last_seen_at=now,
        expires_at=now + timedelta(seconds=lifetime_seconds),
    )
    db.add(session)
    await db.flush()
    return session


async def touch_session(db: AsyncSession, session_id: str, now: datetime) -> None:
    await db.execute(update(AuthSession).where(col(AuthSession.id) == session_id).values(last_seen_at=now))


async def _add_refresh_token(
    db: AsyncSession, family: RefreshTokenFamily, session: AuthSession, policy: SessionPolicy, now: datetime
) -> str:
    token = new_refresh_token()
    expires = min(now + timedelta(seconds=policy.refresh_idle_seconds), session.expires_at)
    db.add(
        RefreshToken(
            organization_id=family.organization_id,
            family_id=family.id,
            token_hash=hash_opaque_token(token),
            created_at=now,
            expires_at=expires,
        )
    )
    await db.flush()
    return token


class RefreshError(Exception):
    def __init__(self, reason: str, revoked_session_id: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.revoked_session_id = revoked_session_id


async def rotate_refresh_token(
    db: AsyncSession, token: str, *, policy: SessionPolicy, now: datetime
) -> tuple[AuthSession, str]:
    """Spend a refresh token and issue its successor in the same family.

    Presenting a token that was already spent means it was stolen or replayed: the whole family and
    its session are revoked (`RefreshError` with `revoked_session_id`). The caller commits the
    revocation even though the request fails.
    """
    row = (
        await db.execute(
            select(RefreshToken, RefreshTokenFamily, AuthSession)
            .join(RefreshTokenFamily, col(RefreshTokenFamily.id) == col(RefreshToken.family_id))
            .join(AuthSession, col(AuthSession.id) == col(RefreshTokenFamily.session_id))
            .where(col(RefreshToken.token_hash) == hash_opaque_token(token))
        )
    ).first()
    if row is None:
        raise RefreshError("unknown")
    rt, family, session = row
    if family.revoked_at is not None or session.revoked_at is not None:
        raise RefreshError("revoked")
    spent = await db.execute(
        update(RefreshToken)
        .where(col(RefreshToken.id) == rt.id, col(RefreshToken.used_at).is_(None))
        .values(used_at=now)
    )
    if (getattr(spent, "rowcount", 0) or 0) != 1:
        await revoke_sessions(db, [session.id], reason="refresh_reuse", now=now)
        raise RefreshError("reused", revoked_session_id=session.id)
    if rt.expires_at <= now or session.expires_at <= now:
        raise RefreshError("expired")
    session.last_seen_at = now
    db.add(session)
    new_token = await _add_refresh_token(db, family, session, policy, now)
    return session, new_token


async def revoke_sessions(db: AsyncSession, session_ids: list[str], *, reason: str, now: datetime) -> None:
    if not session_ids:
        return
    await db.execute(
        update(AuthSession)
        .where(col(AuthSession.id).in_(session_ids), col(AuthSession.revoked_at).is_(None))
        .values(revoked_at=now, revoked_reason=reason)
    )
    await db.execute(
        update(RefreshTokenFamily)
        .where(
            col(RefreshTokenFamily.session_id).in_(session_ids),
            col(RefreshTokenFamily.revoked_at).is_(None),
        )
        .values(revoked_at=now, revoked_reason=reason)
    )


async def active_session_ids(
    db: AsyncSession, user_id: str, *, except_id: str | None = None, organization_id: str | None = None
) -> list[str]:
    stmt = select(AuthSession.id).where(col(AuthSession.user_id) == user_id, col(AuthSession.revoked_at).is_(None))
    if except_id is not None:
        stmt = stmt.where(col(AuthSession.id) != except_id)
    if organization_id is not None:
        stmt = stmt.where(col(AuthSession.organization_id) == organization_id)
    return list((await db.execute(stmt)).scalars().all())
