"""The client of the team's upstream GraphQL services: one pooled HTTP session per upstream, a deadline and a
size limit on every answer, and a circuit breaker that makes a failing upstream fail fast for a while.

aiohttp, not httpx: forwarding is the gateway's hot path, and aiohttp's client costs a tenth of httpx's
`AsyncClient` per request on this workload (docs/performance.md).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from authz.errors import UpstreamError, UpstreamUnavailable

log = logging.getLogger("portcullis.upstreams")

# never forwarded, whatever `forward_headers` says (C-138): the caller's credentials and hop-by-hop headers
NEVER_FORWARDED: frozenset[str] = frozenset(
    {
        "authorization",
        "cookie",
        "x-api-key",
        "proxy-authorization",
        "connection",
        "keep-alive",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        "content-type",
        "x-forwarded-for",
        "forwarded",
        "x-request-id",
        "traceparent",
        "tracestate",
    }
)
DEFAULT_MAX_RESPONSE_BYTES = 10 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class UpstreamConfig:
    """One GraphQL upstream, as the upstreams file declares it (docs/upstreams.md)."""

    name: str
    url: str
    sdl: str
    timeout_seconds: float = 5.0
    max_connections: int = 64
    forward_headers: tuple[str, ...] = ()
    expose_errors: bool = False
    presets: Mapping[str, str] = field(default_factory=dict)
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES
    failure_threshold: int = 5
    open_seconds: float = 10.0


class CircuitBreaker:
    """Closed until `threshold` failures in a row; then open (every call fails at once) for `open_seconds`;
    then one trial call is let through: its success closes the circuit, its failure opens it again."""

    def __init__(self, threshold: int, open_seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.threshold = threshold
        self.open_seconds = open_seconds
        self.clock = clock
        self.failures = 0
        self.opened_at: float | None = None
        self.trial_running = False
        self.times_opened = 0

    @property
    def state(self) -> str:
        if self.opened_at is None:
            return "closed"
        return "half-open" if self.clock() - self.opened_at >= self.open_seconds else "open"

    def allow(self) -> bool:
        state = self.state
        if state == "closed":
            return True
        if state == "half-open" and not self.trial_running:
            self.trial_running = True
            return True
        return False

    def succeeded(self) -> None:
        self.failures = 0
        self.opened_at = None
        self.trial_running = False

    def failed(self) -> None:
        self.failures += 1
        self.trial_running = False
        if self.opened_at is not None or self.failures >= self.threshold:
            if self.opened_at is None:
                self.times_opened += 1
            self.opened_at = self.clock()


class UpstreamClient:
    """Posts GraphQL requests to one upstream. `post` answers the decoded response object (`data` and/or
    `errors`), or raises `UpstreamUnavailable` (no answer: deadline, connection, open circuit) or
    `UpstreamError` (an answer that is not a GraphQL response: a 5xx, HTML, invalid JSON, too large)."""

    def __init__(self, config: UpstreamConfig) -> None:
        self.config = config
        self.breaker = CircuitBreaker(config.failure_threshold, config.open_seconds)
        self._session: aiohttp.ClientSession | None = None
        self._timeout = aiohttp.ClientTimeout(total=config.timeout_seconds)
        self.requests = 0
        self.failures = 0
        self.in_flight = 0
        # told of every call: (upstream, outcome, seconds); outcome is ok, error, timeout, unavailable or
        # circuit_open (the gateway's metrics)
        self.observe: Callable[[str, str, float], None] | None = None

    @property
    def name(self) -> str:
        return self.config.name

    def _client(self) -> aiohttp.ClientSession:
        session = self._session
        if session is None or session.closed:
            connector = aiohttp.TCPConnector(limit=self.config.max_connections, ttl_dns_cache=300)
            session = aiohttp.ClientSession(
                connector=connector,
                timeout=self._timeout,
                json_serialize=lambda v: orjson.dumps(v).decode(),
                cookie_jar=aiohttp.DummyCookieJar(),  # an upstream's cookies are never kept or replayed
                auto_decompress=True,
            )
            self._session = session
        return session

    async def close(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None

    async def post(self, body: bytes, headers: Mapping[str, str]) -> dict[str, Any]:
        started = time.perf_counter()
        outcome = "error"
        self.in_flight += 1
        try:
            decoded = await self._post(body, headers)
            outcome = "ok"
            return decoded
        except UpstreamUnavailable as exc:
            outcome = getattr(exc, "outcome", "unavailable")
            raise
        finally:
            self.in_flight -= 1
            if self.observe is not None:
                self.observe(self.config.name, outcome, time.perf_counter() - started)

    async def _post(self, body: bytes, headers: Mapping[str, str]) -> dict[str, Any]:
        name = self.config.name
        if not self.breaker.allow():
            raise _unavailable(f"The upstream {name} is unavailable.", name, "circuit_open")
        self.requests += 1
        try:
            status, raw = await self._send(body, headers)
        except TimeoutError as exc:
            self._failed("timed out", exc)
            raise _unavailable(f"The upstream {name} did not answer in time.", name, "timeout") from exc
        except aiohttp.ClientError as exc:
            self._failed("connection failed", exc)
            raise _unavailable(f"The upstream {name} is unavailable.", name, "unavailable") from exc
        except _TooLarge as exc:
            self.breaker.succeeded()  # it answered; the answer is the problem
            raise UpstreamError(f"The upstream {name} answered too much.", upstream=name) from exc
        if status >= 500:
            self._failed(f"answered {status}", None)
        else:
            self.breaker.succeeded()
        try:
            decoded = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            log.warning("upstream %s answered %s with a body that is not JSON", name, status)
            raise UpstreamError(f"The upstream {name} answered with an error.", upstream=name) from exc
        if not isinstance(decoded, dict) or not ("data" in decoded or "errors" in decoded):
            log.warning("upstream %s answered %s with JSON that is not a GraphQL response", name, status)
            raise UpstreamError(f"The upstream {name} answered with an error.", upstream=name)
        if status >= 400 and not decoded.get("errors"):
            raise UpstreamError(f"The upstream {name} answered with an error.", upstream=name)
        return decoded

    def _failed(self, what: str, exc: BaseException | None) -> None:
        self.failures += 1
        was = self.breaker.state
        self.breaker.failed()
        log.warning("upstream %s %s%s", self.config.name, what, f": {type(exc).__name__}" if exc else "")
        if was == "closed" and self.breaker.state == "open":
            log.error("upstream %s: circuit opened after %d failures", self.config.name, self.breaker.failures)

    async def _send(self, body: bytes, headers: Mapping[str, str]) -> tuple[int, bytes]:
        limit = self.config.max_response_bytes
        async with self._client().post(self.config.url, data=body, headers=headers, allow_redirects=False) as response:
            declared = response.content_length
            if declared is not None and declared > limit:
                raise _TooLarge
            if declared is not None and "content-encoding" not in response.headers:
                # the parser stops at the declared length: the answer is read in one call (a compressed one is
                # counted as it is inflated, below)
                return response.status, await response.read()
            chunks: list[bytes] = []
            size = 0
            async for chunk in response.content.iter_any():
                size += len(chunk)
                if size > limit:
                    raise _TooLarge
                chunks.append(chunk)
            return response.status, b"".join(chunks)


class _TooLarge(Exception):
    pass


def _unavailable(message: str, upstream: str, outcome: str) -> UpstreamUnavailable:
    """The error the caller sees, with what happened kept for the metrics (not shown to the caller)."""
    error = UpstreamUnavailable(message, upstream=upstream)
    error.outcome = outcome  # type: ignore[attr-defined]
    return error
