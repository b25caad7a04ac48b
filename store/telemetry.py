"""The request's trace as every floor sees it: its id (in log lines and audit entries), what an outgoing call
carries as `traceparent`, and child spans.

The edge (gateway/tracing.py) sets these at the start of each request. When traces are exported it also sets
the tracer, and `span()` opens a real child span of the current one (OpenTelemetry's API); when they are not,
`span()` is a shared no-op and the request still has a trace id (the caller's, from a trusted `traceparent`,
or a new one) that logs, audit entries and upstreams share. The trace continues across services either way.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer


@dataclass(frozen=True, slots=True)
class EdgeTrace:
    """The request's place in its trace when no span is recorded: the ids an upstream's `traceparent` names."""

    trace_id: str  # 32 lowercase hex digits
    span_id: str  # 16
    flags: str  # 2
    tracestate: str | None = None


current_trace_id: ContextVar[str | None] = ContextVar("portcullis_trace_id", default=None)
current_tracer: ContextVar[Tracer | None] = ContextVar("portcullis_tracer", default=None)
current_edge: ContextVar[EdgeTrace | None] = ContextVar("portcullis_edge_trace", default=None)

_NOTHING: contextlib.nullcontext[None] = contextlib.nullcontext()


def span(
    name: str, *, kind: SpanKind = SpanKind.INTERNAL, attributes: Mapping[str, Any] | None = None
) -> contextlib.AbstractContextManager[Span | None]:
    """A child span of the current one for the block, when traces are exported; nothing otherwise."""
    tracer = current_tracer.get()
    if tracer is None:
        return _NOTHING
    return tracer.start_as_current_span(name, kind=kind, attributes=attributes)


def start_span(name: str, attributes: Mapping[str, Any] | None = None) -> Span | None:
    """A child span that ends when its owner says (`end_span`), for work that no block encloses."""
    tracer = current_tracer.get()
    return None if tracer is None else tracer.start_span(name, attributes=attributes)


def end_span(span: Span | None, *, failed: bool = False) -> None:
    if span is not None:
        if failed:
            span.set_status(Status(StatusCode.ERROR))
        span.end()


@contextlib.contextmanager
def failing(span: Span | None) -> Iterator[None]:
    """Marks the span failed when the block raises."""
    try:
        yield
    except BaseException:
        if span is not None:
            span.set_status(Status(StatusCode.ERROR))
        raise


def propagation_headers() -> dict[str, str]:
    """`traceparent` (and `tracestate`) for a call made now: the current span's, or the request's own ids."""
    if current_tracer.get() is not None:
        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            headers = {
                "traceparent": f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"
            }
            state = context.trace_state.to_header()
            if state:
                headers["tracestate"] = state
            return headers
    edge = current_edge.get()
    if edge is None:
        return {}
    headers = {"traceparent": f"00-{edge.trace_id}-{edge.span_id}-{edge.flags}"}
    if edge.tracestate:
        headers["tracestate"] = edge.tracestate
    return headers
