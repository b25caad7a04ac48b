"""HTTP routes to a service the gateway did not write in Python: the example billing service on Node's `http`
module (examples/billing-node), verifying the gateway's context tokens with `jose` against the gateway's own
JWKS, fetched over HTTP."""

from __future__ import annotations

import contextlib
import hashlib
from pathlib import Path

import httpx

from examples.billing.app import download_sha256
from gateway.app import create_app
from tests.conftest import Tenant, login, make_settings, unavailable
from tests.examples.billing_node import billing_node_upstream
from tests.gateway.test_http_upstreams import ISSUER, routes_file
from tests.http_upstreams import serving
from tests.services import ServiceUnavailable, free_port


async def test_routes_reach_a_node_service_that_verifies_the_token_itself(
    database_url: str, signing_key: str, tenant: Tenant, tmp_path: Path
) -> None:
    port = free_port()
    gateway = f"http://127.0.0.1:{port}"
    with contextlib.ExitStack() as stack:
        try:
            node = stack.enter_context(billing_node_upstream(f"{gateway}/.well-known/jwks.json", ISSUER))
        except ServiceUnavailable as exc:
            unavailable(str(exc))
            return
        settings = make_settings(
            database_url, signing_key, upstreams_file=routes_file(tmp_path, node), public_url=ISSUER
        )
        stack.enter_context(serving(create_app(settings), lifespan="on", port=port))
        async with httpx.AsyncClient(base_url=gateway, timeout=30) as client:
            auth = {"authorization": f"Bearer {(await login(client, tenant))['accessToken']}"}
            invoice = f"inv-{tenant.org_id[:8]}-1"
            r = await client.get(f"/api/billing/invoices/{invoice}", headers=auth)
            assert r.status_code == 200, r.text
            assert (r.json()["id"], r.json()["organizationId"]) == (invoice, tenant.org_id)
            r = await client.post("/api/billing/invoices", json={"customer": "Ada", "amount": 3}, headers=auth)
            assert r.status_code == 201, r.text
            r = await client.get("/api/billing/downloads/300000", headers=auth)
            assert hashlib.sha256(r.content).hexdigest() == download_sha256(300_000)
            r = await client.post("/api/billing/echo", content=b"abc", headers=auth)
            echoed = r.json()
            assert echoed["claims"]["aud"] == "billing"
            assert echoed["bodyLength"] == 3
            assert "cookie" not in dict(echoed["headers"])
        # the service refuses a request that goes around the gateway with the client's own credential
        async with httpx.AsyncClient(base_url=node) as direct:
            assert (await direct.get(f"/invoices/{invoice}", headers=auth)).status_code == 401
