"""The client of the team's upstream GraphQL services: one pooled HTTP session per upstream, a deadline and a
size limit on every answer, and a circuit breaker that makes a failing upstream fail fast for a while.

pyreqwest (Rust's reqwest, driven from asyncio), not aiohttp or httpx: forwarding is the gateway's hot path.
At one connection the gateway spends about a quarter less CPU per forwarded request with it than with
aiohttp's client, and its median latency is a fifth lower; with the event loop saturated the two are within
the noise of each other (docs/performance.md, "The upstream client"). aiohttp's client costs a tenth of
httpx's `AsyncClient`. The session is closed with the gateway (`Forwarder.close`, at shutdown).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import orjson
from pyreqwest.client import Client, ClientBuilder
from pyreqwest.exceptions import DecodeError, PyreqwestError
from pyreqwest.http import Url

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
USER_AGENT = "Portcullis"


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
        self._session: Client | None = None
        self._url = Url(config.url)  # parsed once, not per call
        self.requests = 0
        self.failures = 0
        self.in_flight = 0
        # told of every call: (upstream, outcome, seconds); outcome is ok, error, timeout, unavailable or
        # circuit_open (the gateway's metrics)
        self.observe: Callable[[str, str, float], None] | None = None

    @property
    def name(self) -> str:
        return self.config.name

    def _client(self) -> Client:
        session = self._session
        if session is None:
            session = (
                ClientBuilder()
                .max_connections(self.config.max_connections)
                .timeout(timedelta(seconds=self.config.timeout_seconds))
                .follow_redirects(False)  # a redirect is the upstream's answer, never followed
                .no_proxy()  # upstreams are reached directly, whatever HTTP_PROXY says
                .user_agent(USER_AGENT)
                .build()  # no cookie store: an upstream's cookies are never kept or replayed
            )
            self._session = session
        return session

    async def close(self) -> None:
        if self._session is not None:
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
        except DecodeError as exc:  # an answer that does not decode as its Content-Encoding says
            self._failed("answered a body that does not decode", exc)
            raise UpstreamError(f"The upstream {name} answered with an error.", upstream=name) from exc
        except PyreqwestError as exc:
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
        request = self._client().post(self._url).body_bytes(body).headers(headers).build_streamed()
        async with request as response:
            # counted as it is read, after any content coding is undone: a small compressed answer that inflates
            # past the limit is stopped there
            declared = response.get_header("content-length")
            if declared is not None and declared.isdigit() and int(declared) > limit:
                raise _TooLarge
            reader = response.body_reader
            chunks: list[Any] = []
            size = 0
            while (chunk := await reader.read_chunk()) is not None:
                size += len(chunk)
                if size > limit:
                    raise _TooLarge
                chunks.append(chunk)
            return response.status, b"".join(chunks)


def sendable_header_value(value: str) -> bool:
    """Whether a caller's header value may be forwarded: no control character but the tab (RFC 9110 field values;
    the client refuses to send one, so a caller's `forward_headers` value with one is left out, not an error)."""
    return not _CONTROL.search(value)


_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


class _TooLarge(Exception):
    pass


def _unavailable(message: str, upstream: str, outcome: str) -> UpstreamUnavailable:
    """The error the caller sees, with what happened kept for the metrics (not shown to the caller)."""
    error = UpstreamUnavailable(message, upstream=upstream)
    error.outcome = outcome  # type: ignore[attr-defined]
    return error
