"""The browser's session cookie and its CSRF token.

A browser that signed in through SSO holds `__Host-portcullis`: the session id and an HMAC-SHA256 of it
under the cookie secret. Nothing else about the session travels; whether it still counts (revoked,
expired, idle, membership gone) is decided by the session row, exactly as for a Bearer token. The CSRF
token is a second HMAC of the session id (a different purpose label), handed to the page in the
readable cookie `__Host-portcullis-csrf` and sent back in `X-CSRF-Token` on every request that is not
a GET: a cross-site page can make the browser send the session cookie, but cannot read this value.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from dataclasses import dataclass
from datetime import datetime, timedelta

SESSION_COOKIE = "__Host-portcullis"
CSRF_COOKIE = "__Host-portcullis-csrf"
CSRF_HEADER = "x-csrf-token"
_SESSION_ID = re.compile(r"^[A-Za-z0-9\-]{1,36}$")
_MAX_COOKIE_LENGTH = 128


def _mac(secret: bytes, purpose: str, session_id: str) -> str:
    digest = hmac.new(secret, f"{purpose}:{session_id}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


@dataclass(frozen=True, slots=True)
class BrowserSessionPolicy:
    """Idle timeout (no request for this long ends the session) and absolute lifetime."""

    idle_seconds: int = 30 * 60
    absolute_seconds: int = 12 * 3600
    # last activity is written at most this often, so an active browser costs one write per interval
    touch_interval_seconds: int = 60

    def idle_expired(self, last_seen_at: datetime, now: datetime) -> bool:
        return last_seen_at + timedelta(seconds=self.idle_seconds) <= now

    def needs_touch(self, last_seen_at: datetime, now: datetime) -> bool:
        return last_seen_at + timedelta(seconds=self.touch_interval_seconds) <= now


class BrowserSessions:
    def __init__(self, secret: str, policy: BrowserSessionPolicy, *, secure: bool) -> None:
        if not secret:
            raise ValueError("a cookie secret is required")
        self._secret = secret.encode()
        self.policy = policy
        self.secure = secure

    def cookie_value(self, session_id: str) -> str:
        return f"{session_id}.{_mac(self._secret, 'session', session_id)}"

    def session_id(self, cookie: str) -> str | None:
        """The session the cookie names, when its MAC verifies; None for anything else."""
        if len(cookie) > _MAX_COOKIE_LENGTH:
            return None
        session_id, _, mac = cookie.partition(".")
        if not _SESSION_ID.match(session_id) or not mac:
            return None
        if not hmac.compare_digest(mac, _mac(self._secret, "session", session_id)):
            return None
        return session_id

    def csrf_token(self, session_id: str) -> str:
        return _mac(self._secret, "csrf", session_id)

    def csrf_ok(self, session_id: str, presented: str | None) -> bool:
        if not presented or len(presented) > _MAX_COOKIE_LENGTH:
            return False
        return hmac.compare_digest(presented, self.csrf_token(session_id))

    def set_cookie_headers(self, session_id: str) -> list[str]:
        """`Set-Cookie` values for a new session: the credential (HttpOnly) and the CSRF token (readable)."""
        secure = "; Secure" if self.secure else ""
        age = self.policy.absolute_seconds
        return [
            f"{SESSION_COOKIE}={self.cookie_value(session_id)}; Path=/; Max-Age={age}; HttpOnly; SameSite=Lax{secure}",
            f"{CSRF_COOKIE}={self.csrf_token(session_id)}; Path=/; Max-Age={age}; SameSite=Strict{secure}",
        ]

    def clear_cookie_headers(self) -> list[str]:
        secure = "; Secure" if self.secure else ""
        return [
            f"{SESSION_COOKIE}=; Path=/; Max-Age=0; HttpOnly; SameSite=Lax{secure}",
            f"{CSRF_COOKIE}=; Path=/; Max-Age=0; SameSite=Strict{secure}",
        ]
