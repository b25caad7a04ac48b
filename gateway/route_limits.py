"""Per-address limits of the public HTTP routes: starting single sign-on, the OIDC callback, the SAML
metadata and assertion consumer service, report downloads (docs/limits.md, "Limits of the HTTP routes").

Each route has its own budget per client address (`ClientAddress`: the peer, or the client that
`X-Forwarded-For` names when the peer is a trusted proxy), apart from the admission limits that GraphQL
and the tenants spend. The limit is pure ASGI middleware on the route itself: it runs once the route
matched and before the endpoint reads anything, so the ACS refuses a caller over its limit before any
XML is parsed or any signature verified. Over the limit: 429 `RATE_LIMITED` with `Retry-After`,
`RateLimit-Policy` and `RateLimit`, the answer admission gives.

Counting is the `limits` library's moving window (a fixed window lets 2N through around its boundary,
security.md §6.3), through its asyncio API: in-process storage in embedded mode; in shared mode Redis,
on the gateway's own connection pool, so every process spends one budget. slowapi's `Limiter`, which the
architecture names for rate limiting, drives the same library but synchronously: with `redis://` storage
every check would block the event loop for a round trip (for the socket timeout when Redis hangs), and
it cannot take the asyncio storage (`async+redis://`: its synchronous strategies refuse it;
laurentS/slowapi#130). Its failure modes (raise, swallow, or an in-memory fallback that multiplies each
limit by the number of processes) do not fit `limits_on_redis_error` either.

When Redis fails, a route follows `limits_on_redis_error`: `closed` answers 503, `open` lets the request
through uncounted; both are logged and counted in `portcullis_rate_limiter_errors_total`. `limits`' Redis
moving window stamps each hit with its process's clock, so processes whose clocks differ by a few seconds
shift the window by as much (the admission windows use Redis's clock instead).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any

from limits import RateLimitItem, RateLimitItemPerMinute
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import MovingWindowRateLimiter
from limits.errors import StorageError
from starlette.middleware import Middleware
from starlette.types import ASGIApp, Receive, Scope, Send

from authz import PrincipalKind
from gateway.middleware import graphql_error, send_json
from gateway.rate_limit_audit import RateLimitAudit
from identity.redis_health import RedisHealth
from store.audit import ActorType, AuditAction, AuditEvent

log = logging.getLogger("portcullis.admission")

WINDOW_SECONDS = 60
KEY_PREFIX = "portcullis:route"

# (limit name, requests per minute and address) -> the middleware that enforces it on a route
RouteLimit = Callable[[str, int], list[Middleware]]
# (status, body, headers)
Refusal = tuple[int, dict[str, Any], list[tuple[bytes, bytes]]]


def unlimited(_name: str, _per_minute: int) -> list[Middleware]:
    return []


class RouteLimits:
    """One per app: called with a route's limit name and amount, it gives the middleware for that route."""

    def __init__(
        self,
        storage: Storage,
        *,
        fail_open: bool,
        audit: RateLimitAudit | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.limiter = MovingWindowRateLimiter(storage)
        self.fail_open = fail_open
        self.audit = audit
        self.clock = clock
        self.on_refused: Callable[[str], None] = lambda _name: None
        self.on_store_error: Callable[[str], None] = lambda _outcome: None
        self.redis_health = RedisHealth()

    @classmethod
    def build(cls, redis: Any, *, fail_open: bool, audit: RateLimitAudit | None = None) -> RouteLimits:
        """In the process without Redis; else on the Redis client's own connection pool."""
        storage: Storage
        if redis is None:
            storage = MemoryStorage()
        else:
            storage = RedisStorage(
                "async+redis://",
                implementation="redispy",
                wrap_exceptions=True,
                key_prefix=KEY_PREFIX,
                connection_pool=redis.connection_pool,
            )
        return cls(storage, fail_open=fail_open, audit=audit)

    def __call__(self, name: str, per_minute: int) -> list[Middleware]:
        return [Middleware(RouteLimitMiddleware, limits=self, name=name, per_minute=per_minute)]

    async def refusal(self, scope: Scope, name: str, item: RateLimitItem) -> Refusal | None:
        """None when the request's address has room on the route (and spends it); else the answer."""
        per_minute = item.amount
        state = scope.get("state", {})
        address = state.get("client_ip") or "unknown"
        try:
            hit = await self.limiter.hit(item, name, address)
            if hit:
                if self.redis_health.down_since is not None:
                    self.redis_health.ok("route-limits")
                return None
            reset, _ = await self.limiter.get_window_stats(item, name, address)
        except StorageError as exc:
            outcome = "admitted" if self.fail_open else "refused"
            # logged once per outage (identity/redis_health.py); each request is counted (on_store_error)
            self.redis_health.failed("route-limits", exc)
            self.on_store_error(outcome)
            if self.fail_open:
                return None
            return (
                503,
                graphql_error("The rate limiter is unavailable; retry shortly.", "INTERNAL", retryAfter=1),
                [(b"retry-after", b"1")],
            )
        retry = max(1, math.ceil(reset - self.clock()))
        self.on_refused(name)
        await self._audit(state, name, per_minute, address)
        headers = [
            (b"retry-after", str(retry).encode()),
            (b"ratelimit-policy", f'"{name}";q={per_minute};w={WINDOW_SECONDS}'.encode()),
            (b"ratelimit", f'"{name}";r=0;t={retry}'.encode()),
        ]
        return (
            429,
            graphql_error(f"Rate limit exceeded ({name}); retry in {retry} s.", "RATE_LIMITED", retryAfter=retry),
            headers,
        )

    async def _audit(self, state: dict[str, Any], name: str, per_minute: int, address: str) -> None:
        """Counted like admission's refusals: one entry per (tenant, limit key, minute)."""
        if self.audit is None:
            return
        principal = state.get("principal")
        subject = getattr(principal, "subject_id", None)
        kind = getattr(principal, "kind", None)
        event = AuditEvent(
            action=AuditAction.EXCESS_RATE_LIMIT_EXCEEDED,
            organization_id=getattr(principal, "organization_id", None),
            actor_type=(
                ActorType.API_KEY
                if kind is PrincipalKind.API_KEY
                else ActorType.USER
                if subject
                else ActorType.ANONYMOUS
            ),
            actor_id=subject,
            request_id=state.get("request_id"),
            ip=state.get("client_ip"),
            details={"limit": name, "per": per_minute, "windowSeconds": WINDOW_SECONDS},
        )
        try:
            await self.audit.refused(event, key=f"route:{name}:ip:{address}")
        except Exception:  # the refusal stands; only its audit count is lost, and that is logged
            log.exception(
                "rate-limit refusal not counted for the audit log", extra={"request_id": state.get("request_id")}
            )


class RouteLimitMiddleware:
    """One route's limit per client address (see the module docstring)."""

    def __init__(self, app: ASGIApp, *, limits: RouteLimits, name: str, per_minute: int) -> None:
        self.app = app
        self.limits = limits
        self.name = name
        self.item = RateLimitItemPerMinute(per_minute)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            refusal = await self.limits.refusal(scope, self.name, self.item)
            if refusal is not None:
                status, body, headers = refusal
                await send_json(send, status, body, headers=headers)
                return
        await self.app(scope, receive, send)
