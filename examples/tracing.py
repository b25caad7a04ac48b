"""The example services' side of a trace: each request they serve becomes a span of the caller's trace.

The gateway sends `traceparent` (and `tracestate`) with every forwarded request; a service that records spans
with that context as their parent shows up under the gateway's call in the same trace. `traced` wraps an ASGI
application so; `exporting_tracer` builds a tracer that sends spans over OTLP/HTTP (OpenTelemetry's SDK), as
`python -m examples.billing` and `python -m examples.orders` do when `OTEL_EXPORTER_OTLP_ENDPOINT` is set.
"""

from __future__ import annotations

import os

from opentelemetry.propagators.textmap import Getter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from starlette.types import ASGIApp, Message, Receive, Scope, Send

_PROPAGATOR = TraceContextTextMapPropagator()


class _Headers(Getter[Scope]):
    def get(self, carrier: Scope, key: str) -> list[str] | None:
        name = key.lower().encode()
        found = [v.decode("latin-1") for k, v in carrier["headers"] if k == name]
        return found or None

    def keys(self, carrier: Scope) -> list[str]:
        return [k.decode("latin-1") for k, _ in carrier["headers"]]


def traced(app: ASGIApp, tracer: Tracer) -> ASGIApp:
    """`app` with a SERVER span per HTTP request, the child of the caller's `traceparent` when it sends one."""

    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        context = _PROPAGATOR.extract(scope, getter=_Headers())
        name = f"{scope['method']} {scope['path']}"
        with tracer.start_as_current_span(name, context=context, kind=SpanKind.SERVER) as span:

            async def send_with_status(message: Message) -> None:
                if message["type"] == "http.response.start":
                    span.set_attribute("http.response.status_code", int(message["status"]))
                await send(message)

            await app(scope, receive, send_with_status)

    return wrapped


def exporting_tracer(service_name: str, endpoint: str) -> tuple[Tracer, TracerProvider]:
    """A tracer whose spans go to the OTLP/HTTP `endpoint` (a full URL, `.../v1/traces`)."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    return provider.get_tracer(service_name), provider


def traced_from_environment(app: ASGIApp, service_name: str) -> ASGIApp:
    """`app`, traced when `OTEL_EXPORTER_OTLP_ENDPOINT` names a collector (its `/v1/traces`)."""
    base = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    if not base:
        return app
    tracer, _ = exporting_tracer(service_name, base.rstrip("/") + "/v1/traces")
    return traced(app, tracer)
