"""Traces across services: the gateway's spans exported over OTLP/HTTP to a real receiver (tests/otlp.py), W3C
trace context accepted from trusted callers only, and the same trace id in the upstream's `traceparent`, the
log lines and the audit entries of the request."""

from __future__ import annotations

import io
import json
import logging
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from examples.tracing import exporting_tracer
from gateway.app import create_app
from gateway.logs import JsonFormatter
from tests.conftest import Tenant, gql, login, make_settings, sql
from tests.gateway.test_http_upstreams import ISSUER, routes_file
from tests.http_upstreams import Billing, billing_service, serving
from tests.otlp import ReceivedSpan, Receiver, draw, otlp_receiver
from tests.upstreams import ORDERS_SDL, GraphQLUpstream, graphql_upstream, orders_file

CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"
SERVER, CLIENT = 2, 3  # the protobuf's SpanKind values


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with otlp_receiver() as r:
        yield r


@pytest.fixture
def billing(signing_key: str, receiver: Receiver) -> Iterator[Billing]:
    """The billing service continuing the gateway's traces, its spans sent to the same receiver."""
    tracer, provider = exporting_tracer("billing", receiver.url)
    with billing_service(signing_key, ISSUER, tracer) as upstream:
        yield upstream
    provider.shutdown()


@pytest.fixture
def orders() -> Iterator[GraphQLUpstream]:
    with graphql_upstream() as u:
        yield u


def upstreams_file(tmp_path: Path, billing: Billing, orders: GraphQLUpstream) -> Path:
    path = routes_file(tmp_path, billing.url)
    (tmp_path / "orders.graphql").write_text(ORDERS_SDL)
    path.write_text(path.read_text() + "\n" + orders_file(orders.url, timeout=3))
    return path


@pytest.fixture
async def gateway(
    database_url: str, signing_key: str, billing: Billing, orders: GraphQLUpstream, receiver: Receiver, tmp_path: Path
) -> AsyncIterator[str]:
    settings = make_settings(
        database_url,
        signing_key,
        upstreams_file=upstreams_file(tmp_path, billing, orders),
        public_url=ISSUER,
        otel_exporter_otlp_endpoint=receiver.url,
        trace_trusted_callers=["127.0.0.1/32"],
    )
    with serving(create_app(settings), lifespan="on") as url:
        yield url


def by_name(spans: list[ReceivedSpan]) -> dict[str, ReceivedSpan]:
    return {s.name: s for s in spans}


async def test_one_trace_through_the_edge_and_both_kinds_of_upstream(
    gateway: str, billing: Billing, orders: GraphQLUpstream, receiver: Receiver, tenant: Tenant, database_url: str
) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logging.getLogger("portcullis").addHandler(handler)
    try:
        async with httpx.AsyncClient(base_url=gateway, timeout=30) as client:
            auth = {"authorization": f"Bearer {(await login(client, tenant))['accessToken']}"}
            r = await client.post(
                "/api/billing/invoices",
                json={"customer": "Ada", "amount": 5},
                headers={**auth, "traceparent": TRACEPARENT, "tracestate": "vendor=1"},
            )
            assert r.status_code == 201, r.text
            request_id = r.headers["x-request-id"]
            g = await gql(client, "{ orders(first: 1) { id } }", token=auth["authorization"][7:])
            assert g.json()["data"]["orders"], g.text
    finally:
        logging.getLogger("portcullis").removeHandler(handler)
    spans = receiver.wait_for(
        lambda got: {"upstream orders", "upstream billing", "POST /invoices"} <= {s.name for s in got}
    )
    routed = receiver.trace(CALLER_TRACE)
    named = by_name(routed)
    edge = named["POST /api/billing/invoices"]
    # the trusted caller's trace is continued: the edge span is the child of its span
    assert (edge.kind, edge.parent_id, edge.service) == (SERVER, CALLER_SPAN, "portcullis")
    assert edge.attributes["portcullis.request_id"] == request_id
    assert edge.attributes["http.response.status_code"] == 201
    assert edge.attributes["http.route"] == "/api/billing/invoices"
    for child in ("authenticate", "admission", "authorize", "upstream billing"):
        assert named[child].parent_id == edge.span_id, child
    call = named["upstream billing"]
    assert call.kind == CLIENT
    assert call.attributes["http.response.status_code"] == 201
    assert any(s.name == "db transaction" for s in routed)
    picture = os.environ.get("PORTCULLIS_TEST_TRACE_PICTURE")
    if picture:  # docs/observability.md's picture is drawn from this trace
        draw(
            picture,
            receiver.trace(CALLER_TRACE),
            "POST /api/billing/invoices: one trace through the gateway and the service",
        )
    # the upstream got the call's span as its parent, with the caller's tracestate
    received = [r for r in billing.recorder.received if r.path == "/invoices"][-1]
    assert received.headers["traceparent"] == f"00-{CALLER_TRACE}-{call.span_id}-01"
    assert received.headers["tracestate"] == "vendor=1"
    # and recorded its own span there: the example service continues the trace
    served = next(s for s in spans if s.name == "POST /invoices")
    assert (served.service, served.trace_id, served.parent_id) == ("billing", CALLER_TRACE, call.span_id)
    # the audit entry and the log lines of the request name the same trace
    details = sql(database_url, "SELECT details FROM audit_log WHERE action = 'upstream_request'")[0][0]
    assert CALLER_TRACE in str(details)
    signed_in = next(json.loads(line) for line in stream.getvalue().splitlines() if "authn_login_success" in line)
    login_edge = next(s for s in spans if s.attributes.get("portcullis.request_id") == signed_in["request_id"])
    assert signed_in["trace_id"] == login_edge.trace_id
    # the GraphQL operation, with no traceparent, is a trace of its own, carried to the orders service
    orders_call = next(s for s in spans if s.name == "upstream orders")
    graphql_edge = next(s for s in spans if s.span_id == orders_call.parent_id)
    assert (graphql_edge.name, graphql_edge.parent_id) == ("POST /graphql", "")
    assert graphql_edge.trace_id != CALLER_TRACE
    version, trace_id, parent_id, flags = orders.last().headers["traceparent"].split("-")
    assert (version, trace_id, parent_id) == ("00", graphql_edge.trace_id, orders_call.span_id)
    assert int(flags, 16) & 1  # sampled


async def test_an_untrusted_callers_trace_is_linked_and_a_malformed_one_replaced(
    database_url: str, signing_key: str, billing: Billing, receiver: Receiver, tenant: Tenant, tmp_path: Path
) -> None:
    settings = make_settings(
        database_url,
        signing_key,
        upstreams_file=routes_file(tmp_path, billing.url),
        public_url=ISSUER,
        otel_exporter_otlp_endpoint=receiver.url,
        trace_trusted_callers=["10.0.0.0/8"],
    )
    with serving(create_app(settings), lifespan="on") as url:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            auth = {"authorization": f"Bearer {(await login(client, tenant))['accessToken']}"}
            invoice = f"/api/billing/invoices/inv-{tenant.org_id[:8]}-1"
            for traceparent in (TRACEPARENT, "00-xyz-00f067aa0ba902b7-01", f"00-{'0' * 32}-{CALLER_SPAN}-01"):
                r = await client.get(invoice, headers={**auth, "traceparent": traceparent})
                assert r.status_code == 200
    spans = receiver.wait_for(lambda got: sum(s.name == "GET /api/billing/invoices/{id}" for s in got) == 3)
    edges = [s for s in spans if s.name == "GET /api/billing/invoices/{id}"]
    assert all(s.trace_id != CALLER_TRACE and s.parent_id == "" for s in edges)
    assert edges[0].links == [(CALLER_TRACE, CALLER_SPAN)]  # a new trace, linked to the caller's
    assert edges[1].links == edges[2].links == []  # malformed: replaced, nothing to link
    sent = [r.headers["traceparent"] for r in billing.recorder.received if r.path.startswith("/invoices/")]
    assert [t.split("-")[1] for t in sent] == [s.trace_id for s in edges]


async def test_without_an_endpoint_nothing_is_exported_and_the_trace_still_travels(
    database_url: str, signing_key: str, billing: Billing, receiver: Receiver, tenant: Tenant, tmp_path: Path
) -> None:
    settings = make_settings(
        database_url,
        signing_key,
        upstreams_file=routes_file(tmp_path, billing.url),
        public_url=ISSUER,
        trace_trusted_callers=["127.0.0.1/32"],
    )
    with serving(create_app(settings), lifespan="on") as url:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            auth = {"authorization": f"Bearer {(await login(client, tenant))['accessToken']}"}
            invoice = f"/api/billing/invoices/inv-{tenant.org_id[:8]}-1"
            assert (await client.get(invoice, headers={**auth, "traceparent": TRACEPARENT})).status_code == 200
            assert (await client.get(invoice, headers=auth)).status_code == 200
    continued, fresh = [r.headers["traceparent"].split("-") for r in billing.recorder.received[-2:]]
    assert continued[1] == CALLER_TRACE
    assert continued[2] != CALLER_SPAN  # the gateway's own place in the trace
    assert fresh[1] != CALLER_TRACE
    assert len(fresh[1]) == 32
    assert receiver.posts == 0


async def test_a_collector_that_never_answers_never_delays_a_request(
    database_url: str, signing_key: str, billing: Billing, tenant: Tenant, tmp_path: Path
) -> None:
    import socket
    import time

    with socket.socket() as silent:  # accepts connections into its backlog and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)
        endpoint = f"http://127.0.0.1:{silent.getsockname()[1]}/v1/traces"
        settings = make_settings(
            database_url,
            signing_key,
            upstreams_file=routes_file(tmp_path, billing.url),
            public_url=ISSUER,
            otel_exporter_otlp_endpoint=endpoint,
        )
        with serving(create_app(settings), lifespan="on") as url:
            async with httpx.AsyncClient(base_url=url, timeout=30) as client:
                auth = {"authorization": f"Bearer {(await login(client, tenant))['accessToken']}"}
                invoice = f"/api/billing/invoices/inv-{tenant.org_id[:8]}-1"
                slowest = 0.0
                for _ in range(200):  # more spans than one batch, while the export waits on the collector
                    started = time.perf_counter()
                    assert (await client.get(invoice, headers=auth)).status_code == 200
                    slowest = max(slowest, time.perf_counter() - started)
    assert slowest < 1.0, f"a request took {slowest:.2f} s"
