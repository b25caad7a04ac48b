"""Turns a verified credential into the request's `Principal`, once, at the edge."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from authz import AuthMethod, Principal, PrincipalKind
from authz.security_policy import DEFAULT_POLICY, SecurityPolicy
from identity.api_keys import ApiKeyInfo, ApiKeyRejected, ApiKeyVerifier
from identity.browser_sessions import BrowserSessions
from identity.security_policies import PolicyCache
from identity.sessions import SessionCache, SessionInfo, load_session, touch_session
from identity.tokens import AccessTokens, TokenError
from store.db import Database
from store.single_flight import SingleFlight

# a Bearer session's last activity is written at most this often, and only while its organization's policy
# has an idle timeout (without one, a Bearer request writes nothing)
BEARER_TOUCH_SECONDS = 60


class AuthenticationError(Exception):
    """The credential is not acceptable; `reason` goes to logs and audit, never to the caller."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def principal_for_session(
    info: SessionInfo, *, client_ip: str | None, request_id: str | None, auth_time: float | None = None
) -> Principal:
    restricted = info.mfa_enrollment_required or info.password_change_required
    if auth_time is None and info.created_at is not None:
        auth_time = info.created_at.timestamp()
    return Principal(
        kind=PrincipalKind.USER,
        subject_id=info.user_id,
        organization_id=info.organization_id,
        roles=(info.role,),
        # a session restricted to MFA enrollment or a password change holds no permission at all, whatever
        # path asks
        permissions=frozenset() if restricted else info.permissions,
        auth_method=AuthMethod(info.auth_method),
        session_id=info.session_id,
        plan=info.plan,
        client_ip=client_ip,
        request_id=request_id,
        mfa_enrollment_required=info.mfa_enrollment_required,
        password_change_required=info.password_change_required,
        auth_time=auth_time,
    )


class Authenticator:
    def __init__(
        self,
        tokens: AccessTokens,
        sessions: SessionCache,
        db: Database,
        clock: Callable[[], float] = time.time,
        api_keys: ApiKeyVerifier | None = None,
        browser: BrowserSessions | None = None,
        policies: PolicyCache | None = None,
    ) -> None:
        self.api_keys = api_keys
        # each organization's security policy (identity.security_policies); None: every default
        self.policies = policies
        self.browser = browser
        self.tokens = tokens
        self.sessions = sessions
        self.db = db
        self.clock = clock
        self._session_loads: SingleFlight[SessionInfo | None] = SingleFlight()

    async def session_info(self, session_id: str) -> SessionInfo | None:
        info = self.sessions.get(session_id)
        if info is not None:
            return info
        epoch = self.sessions.epoch
        # the requests that miss the same session at once (its entry just expired) share one read
        return await self._session_loads.load((session_id, epoch), lambda: self._load_session(session_id, epoch))

    async def _load_session(self, session_id: str, epoch: int) -> SessionInfo | None:
        now = datetime.fromtimestamp(self.clock(), UTC)
        async with self.db.session() as db:
            info = await load_session(db, session_id, now)
        if info is not None:
            self.sessions.put(info, epoch)
        return info

    async def bearer(self, token: str, *, client_ip: str | None, request_id: str | None) -> Principal:
        try:
            claims = self.tokens.verify(token)
        except TokenError as exc:
            raise AuthenticationError(f"token: {exc.reason}") from None
        info = await self.session_info(claims.session_id)
        if info is None:
            raise AuthenticationError("session ended")
        if info.user_id != claims.subject or info.organization_id != claims.organization_id:
            raise AuthenticationError("token does not match its session")
        now = datetime.fromtimestamp(self.clock(), UTC)
        if info.expires_at <= now:
            raise AuthenticationError("session expired")
        await self._within_policy(info, now, idle_seconds=None, touch_seconds=BEARER_TOUCH_SECONDS)
        return principal_for_session(info, client_ip=client_ip, request_id=request_id, auth_time=claims.auth_time)

    async def policy(self, organization_id: str) -> SecurityPolicy:
        """The organization's security policy: a cache lookup while it is fresh."""
        if self.policies is None:
            return DEFAULT_POLICY
        return await self.policies.get(organization_id)

    async def _within_policy(
        self, info: SessionInfo, now: datetime, *, idle_seconds: int | None, touch_seconds: int
    ) -> None:
        """The organization's absolute lifetime and idle timeout (the shorter of `idle_seconds` and the
        policy's), the session's last activity kept fresh while an idle timeout applies."""
        policy = await self.policy(info.organization_id)
        hours = policy.session_max_lifetime_hours
        if hours is not None and info.created_at is not None and info.created_at + timedelta(hours=hours) <= now:
            raise AuthenticationError("session past the organization's lifetime")
        minutes = policy.session_idle_timeout_minutes
        limits = [s for s in (idle_seconds, minutes * 60 if minutes is not None else None) if s is not None]
        if not limits:
            return
        last_seen = info.last_seen_at or now
        if last_seen + timedelta(seconds=min(limits)) <= now:
            raise AuthenticationError("session idle")
        if last_seen + timedelta(seconds=touch_seconds) <= now:
            epoch = self.sessions.epoch
            async with self.db.transaction() as db:
                await touch_session(db, info.session_id, now)
            self.sessions.put(dataclasses.replace(info, last_seen_at=now), epoch)

    def cookie_session_id(self, cookie: str) -> str:
        """The session a session cookie names; `AuthenticationError` when its MAC does not verify."""
        if self.browser is None:
            raise AuthenticationError("session cookies are not configured")
        session_id = self.browser.session_id(cookie)
        if session_id is None:
            raise AuthenticationError("cookie: malformed or not ours")
        return session_id

    async def cookie(self, session_id: str, *, client_ip: str | None, request_id: str | None) -> Principal:
        """The principal of a browser session (idle and absolute timeouts), its last activity kept fresh."""
        assert self.browser is not None
        info = await self.session_info(session_id)
        if info is None:
            raise AuthenticationError("session ended")
        now = datetime.fromtimestamp(self.clock(), UTC)
        if info.expires_at <= now:
            raise AuthenticationError("session expired")
        policy = self.browser.policy
        await self._within_policy(
            info, now, idle_seconds=policy.idle_seconds, touch_seconds=policy.touch_interval_seconds
        )
        return principal_for_session(info, client_ip=client_ip, request_id=request_id)

    async def api_key(self, presented: str) -> ApiKeyInfo:
        """The verified key; `ApiKeyRejected` for anything that does not authenticate."""
        if self.api_keys is None:
            raise ApiKeyRejected("api keys are not configured")
        return await self.api_keys.verify(presented)
