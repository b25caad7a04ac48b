"""Turns a verified credential into the request's `Principal`, once, at the edge."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from datetime import UTC, datetime

from authz import AuthMethod, Principal, PrincipalKind
from identity.api_keys import ApiKeyInfo, ApiKeyRejected, ApiKeyVerifier
from identity.browser_sessions import BrowserSessions
from identity.sessions import SessionCache, SessionInfo, load_session, touch_session
from identity.tokens import AccessTokens, TokenError
from store.db import Database


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
    ) -> None:
        self.api_keys = api_keys
        self.browser = browser
        self.tokens = tokens
        self.sessions = sessions
        self.db = db
        self.clock = clock

    async def session_info(self, session_id: str) -> SessionInfo | None:
        info = self.sessions.get(session_id)
        if info is not None:
            return info
        epoch = self.sessions.epoch
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
        if info.expires_at.timestamp() <= self.clock():
            raise AuthenticationError("session expired")
        return principal_for_session(info, client_ip=client_ip, request_id=request_id, auth_time=claims.auth_time)

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
        last_seen = info.last_seen_at or now
        if policy.idle_expired(last_seen, now):
            raise AuthenticationError("session idle")
        if policy.needs_touch(last_seen, now):
            epoch = self.sessions.epoch
            async with self.db.transaction() as db:
                await touch_session(db, session_id, now)
            self.sessions.put(dataclasses.replace(info, last_seen_at=now), epoch)
        return principal_for_session(info, client_ip=client_ip, request_id=request_id)

    async def api_key(self, presented: str) -> ApiKeyInfo:
        """The verified key; `ApiKeyRejected` for anything that does not authenticate."""
        if self.api_keys is None:
            raise ApiKeyRejected("api keys are not configured")
        return await self.api_keys.verify(presented)
