"""Traces: one span for each request at the edge, W3C trace context in and out, OTLP/HTTP export.

`RequestContextMiddleware` is the edge's outermost layer: it names the request (its id) and places it in its
trace. A `traceparent` from a trusted caller (an address of
`PORTCULLIS_TRACE_TRUSTED_CALLERS`, or of the trusted proxies when that is empty) is continued, with its
`tracestate`; one from any other caller starts a new trace that links to it; a malformed one (or two) is
replaced by a new trace. The request's trace id reaches every log line and audit entry of the request
(store/telemetry.py) and every upstream as `traceparent`.

With an OTLP endpoint (`PORTCULLIS_OTEL_EXPORTER_OTLP_ENDPOINT`, or the standard
`OTEL_EXPORTER_OTLP_ENDPOINT`), the spans are recorded: the request (`SERVER`), and as its children
authentication, admission, authorization, each upstream call (`CLIENT`) and each database transaction. A
`BatchSpanProcessor` sends them from a thread of its own and drops spans rather than wait when its queue is
full: export never blocks a request. Without an endpoint nothing is recorded and no span is made.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import random
import re
import time
from collections.abc import Iterable
from typing import Any

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    Tracer,
    TraceState,
    set_span_in_context,
)
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from authz.errors import ErrorCode
from gateway.access_log import AccessLog
from gateway.admission import rate_limit_headers
from gateway.metrics import RequestMetrics
from gateway.middleware import SecurityHeaders, assign_request_id, graphql_error, request_state, send_json
from schema.extensions import MASKED_MESSAGE
from store.telemetry import EdgeTrace, current_edge, current_trace_id, current_tracer

log = logging.getLogger("portcullis.tracing")

_TRACEPARENT = re.compile(rb"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_TRACESTATE_MAX = 512
# span names: the gateway's own fixed paths by name, any other path by its method alone (a route that matches
# renames its span after its template); a path never makes a name of its own
_NAMED_PATHS = frozenset({"/graphql", "/healthz", "/readyz", "/metrics", "/.well-known/jwks.json"})


def otlp_traces_endpoint(own: str | None) -> str | None:
    """The URL spans are posted to: `PORTCULLIS_OTEL_EXPORTER_OTLP_ENDPOINT` as it is, or the standard
    `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` as it is, or `OTEL_EXPORTER_OTLP_ENDPOINT` with `/v1/traces` added
    (the OTLP exporter specification's rule); None: nothing is exported."""
    if own:
        return own
    traces = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    if traces:
        return traces
    base = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    return base.rstrip("/") + "/v1/traces" if base else None


class Tracing:
    """The process's tracing: the tracer when spans are exported (None otherwise) and whom to believe."""

    def __init__(self, *, endpoint: str | None, service_name: str, trusted: Iterable[str]) -> None:
        self.trusted = [ipaddress.ip_network(n, strict=False) for n in trusted]
        self.endpoint = endpoint
        self.provider: TracerProvider | None = None
        self.tracer: Tracer | None = None
        if endpoint:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint, timeout=5)))
            self.provider = provider
            self.tracer = provider.get_tracer("portcullis")

    def trusts(self, address: str | None) -> bool:
        if address is None or not self.trusted:
            return False
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self.trusted)

    def shutdown(self) -> None:
        """Sends what is queued, then stops (blocking: call it off the event loop)."""
        if self.provider is not None:
            self.provider.shutdown()


def parse_traceparent(scope: Scope) -> tuple[SpanContext | None, bytes | None]:
    """The caller's span context from exactly one well-formed `traceparent` (and its `tracestate`), or None."""
    parents = [v for k, v in scope["headers"] if k == b"traceparent"]
    if len(parents) != 1:
        return None, None
    match = _TRACEPARENT.fullmatch(parents[0].strip())
    if match is None or match.group(1) == b"ff" or (match.group(1) == b"00" and len(parents[0].strip()) != 55):
        return None, None
    trace_id, span_id = int(match.group(2), 16), int(match.group(3), 16)
    if trace_id == 0 or span_id == 0:
        return None, None
    states = [v for k, v in scope["headers"] if k == b"tracestate"]
    state = b",".join(states) if states and sum(len(s) for s in states) <= _TRACESTATE_MAX else None
    try:
        trace_state = TraceState.from_header([state.decode("latin-1")]) if state else TraceState()
    except ValueError:
        trace_state = TraceState()
    context = SpanContext(
        trace_id, span_id, is_remote=True, trace_flags=TraceFlags(int(match.group(4), 16) & 1), trace_state=trace_state
    )
    return context, state


class RequestContextMiddleware:
    """The outermost layer of the edge: the request's id (`X-Request-ID`, gateway/middleware.py), its trace (see
    the module), its place in the request metrics (`metrics`), and its access log line (`access_log`,
    gateway/access_log.py). It holds the edge's one wrapper of `send`, which records the answer's status in
    `state["response_status"]` for the layers inside (none of them wraps `send`) and adds to the answer the
    request id, the `RateLimit` headers of its admission (every admitted answer carries them,
    gateway/admission.py) and the security headers (`security`). An exception that escapes before the answer
    started is answered here as the contract's masked `INTERNAL` error, with those headers."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        tracing: Tracing,
        security: SecurityHeaders,
        metrics: RequestMetrics | None = None,
        access_log: AccessLog | None = None,
    ) -> None:
        self.app = app
        self.tracing = tracing
        self.security = security
        self.metrics = metrics
        self.access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = request_state(scope)
        request_id = assign_request_id(scope, state)
        header = (b"x-request-id", request_id.encode())
        security = self.security
        started = time.perf_counter()

        async def edge_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                state["response_status"] = int(message["status"])
                headers = [*message.get("headers", ()), header]
                decision = state.get("admission")
                if decision is not None and decision.admitted and not any(k == b"ratelimit" for k, _ in headers):
                    headers += rate_limit_headers(decision)
                security.add_to(headers)
                message["headers"] = headers
            await send(message)

        metrics = self.metrics
        if metrics is not None:
            metrics.in_flight += 1
        try:
            caller, tracestate = parse_traceparent(scope)
            client = scope.get("client")
            trusted = caller is not None and self.tracing.trusts(client[0] if client else None)
            if self.tracing.tracer is None:
                await self._unrecorded(scope, receive, edge_send, caller if trusted else None, tracestate)
            else:
                await self._recorded(scope, receive, edge_send, caller, trusted)
        finally:
            seconds = time.perf_counter() - started
            status = state.get("response_status") or 500  # no answer started: what the edge sends
            if metrics is not None:
                metrics.in_flight -= 1
                metrics.observe(state, scope["path"], status, seconds)
            if self.access_log is not None:
                self.access_log.record(scope, state, status, seconds)

    async def _guarded(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self.app(scope, receive, send)
        except Exception as exc:
            state = scope["state"]
            if state.get("response_status") is not None:
                raise
            rid = state.get("request_id")
            log.error("unexpected error in a route", exc_info=exc, extra={"request_id": rid})
            await send_json(send, 500, graphql_error(MASKED_MESSAGE, ErrorCode.INTERNAL.value, requestId=rid))

    async def _recorded(
        self, scope: Scope, receive: Receive, send: Send, caller: SpanContext | None, trusted: bool
    ) -> None:
        tracer = self.tracing.tracer
        assert tracer is not None
        method: str = scope["method"]
        path: str = scope["path"]
        name = f"{method} {path}" if path in _NAMED_PATHS else method
        parent = set_span_in_context(NonRecordingSpan(caller)) if trusted and caller is not None else None
        links = [Link(caller, {"portcullis.link": "untrusted caller"})] if caller is not None and not trusted else None
        state = scope["state"]
        attributes: dict[str, Any] = {
            "http.request.method": method,
            "url.path": path,
            "portcullis.request_id": state["request_id"],
        }
        started = tracer.start_as_current_span(
            name, context=parent, kind=SpanKind.SERVER, links=links, attributes=attributes
        )
        with started as span:
            context = span.get_span_context()
            trace_id = state["trace_id"] = f"{context.trace_id:032x}"
            trace_token = current_trace_id.set(trace_id)
            tracer_token = current_tracer.set(tracer)
            state["span"] = span
            try:
                await self._guarded(scope, receive, send)
            finally:
                status = state.get("response_status") or 500
                span.set_attribute("http.response.status_code", status)
                if status >= 500:
                    span.set_status(Status(StatusCode.ERROR))
                principal = state.get("principal")
                if principal is not None and principal.organization_id:
                    span.set_attribute("portcullis.organization_id", principal.organization_id)
                current_tracer.reset(tracer_token)
                current_trace_id.reset(trace_token)

    async def _unrecorded(
        self, scope: Scope, receive: Receive, send: Send, caller: SpanContext | None, state: bytes | None
    ) -> None:
        span_id = f"{random.getrandbits(64) or 1:016x}"
        if caller is not None:
            tracestate = state.decode("latin-1") if state else None
            edge = EdgeTrace(f"{caller.trace_id:032x}", span_id, f"{int(caller.trace_flags):02x}", tracestate)
        else:
            edge = EdgeTrace(f"{random.getrandbits(128) or 1:032x}", span_id, "00")
        scope["state"]["trace_id"] = edge.trace_id
        trace_token = current_trace_id.set(edge.trace_id)
        edge_token = current_edge.set(edge)
        try:
            await self._guarded(scope, receive, send)
        finally:
            current_edge.reset(edge_token)
            current_trace_id.reset(trace_token)
