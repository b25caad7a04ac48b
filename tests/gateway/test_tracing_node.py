"""One trace through the gateway and the example billing service on Node (examples/billing-node), which continues
it with OpenTelemetry's JS SDK: its SERVER span, sent over OTLP/HTTP to the same receiver as the gateway's, is the
child of the gateway's `upstream billing` CLIENT span, in the trace of the trusted caller."""

from __future__ import annotations

import contextlib
from pathlib import Path

import httpx

from gateway.app import create_app
from tests.conftest import Tenant, login, make_settings, unavailable
from tests.examples.billing_node import billing_node_upstream
from tests.gateway.test_http_upstreams import ISSUER, routes_file
from tests.gateway.test_tracing import CALLER_SPAN, CALLER_TRACE, CLIENT, SERVER, TRACEPARENT
from tests.http_upstreams import serving
from tests.otlp import otlp_receiver
from tests.services import ServiceUnavailable, free_port


async def test_the_node_service_continues_the_gateways_trace(
    database_url: str, signing_key: str, tenant: Tenant, tmp_path: Path
) -> None:
    port = free_port()
    gateway = f"http://127.0.0.1:{port}"
    invoice = f"inv-{tenant.org_id[:8]}-1"
    with otlp_receiver() as receiver:
        intake = receiver.url.removesuffix("/v1/traces")
        with contextlib.ExitStack() as stack:
            node_env = {
                "OTEL_EXPORTER_OTLP_ENDPOINT": intake,
                # no export on the timer within the test: only the flush at SIGTERM can send the service's span
                "OTEL_BSP_SCHEDULE_DELAY": "600000",
            }
            try:
                node = stack.enter_context(
                    billing_node_upstream(f"{gateway}/.well-known/jwks.json", ISSUER, env=node_env)
                )
            except ServiceUnavailable as exc:
                unavailable(str(exc))
                return
            settings = make_settings(
                database_url,
                signing_key,
                upstreams_file=routes_file(tmp_path, node),
                public_url=ISSUER,
                otel_exporter_otlp_endpoint=receiver.url,
                trace_trusted_callers=["127.0.0.1/32"],
            )
            stack.enter_context(serving(create_app(settings), lifespan="on", port=port))
            async with httpx.AsyncClient(base_url=gateway, timeout=30) as client:
                auth = {"authorization": f"Bearer {(await login(client, tenant))['accessToken']}"}
                r = await client.get(
                    f"/api/billing/invoices/{invoice}",
                    headers={**auth, "traceparent": TRACEPARENT, "tracestate": "vendor=1"},
                )
                assert r.status_code == 200, r.text
                assert r.json()["id"] == invoice
        # the gateway stopped, then the service (SIGTERM): each sent what it still held as it stopped
        served_name = f"GET /invoices/{invoice}"
        receiver.wait_for(
            lambda got: {"upstream billing", served_name} <= {s.name for s in got if s.trace_id == CALLER_TRACE}
        )
        named = {s.name: s for s in receiver.trace(CALLER_TRACE)}
    edge = named["GET /api/billing/invoices/{id}"]
    assert (edge.kind, edge.parent_id, edge.service) == (SERVER, CALLER_SPAN, "portcullis")
    call = named["upstream billing"]
    assert (call.kind, call.parent_id, call.service) == (CLIENT, edge.span_id, "portcullis")
    served = named[served_name]
    assert (served.service, served.kind, served.parent_id) == ("billing-node", SERVER, call.span_id)
    assert served.attributes["http.response.status_code"] == 200
