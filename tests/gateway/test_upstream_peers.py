"""The gateway fronting the example upstreams, each a real server verifying the context token on its own: the
Python one (examples/orders, Strawberry under uvicorn) and a Node one (examples/orders-yoga, GraphQL Yoga with
`jose`)."""

from __future__ import annotations

import contextlib
import shutil
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from examples.orders.app import create_app as create_orders_app
from gateway.app import create_app
from identity.tokens import AccessTokens, KeyRing
from tests.conftest import Tenant, error_codes, gql, login, make_settings, make_tenant, running, unavailable
from tests.examples.yoga import yoga_upstream
from tests.services import ServiceUnavailable, free_port

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "orders"
ISSUER = "http://127.0.0.1:8000"


@contextlib.contextmanager
def python_upstream(jwks: dict[str, Any]) -> Iterator[str]:
    port = free_port()
    config = uvicorn.Config(
        create_orders_app(jwks=jwks, issuer=ISSUER), host="127.0.0.1", port=port, log_level="warning", lifespan="off"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "the example upstream did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}/graphql"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(params=["python", "yoga"])
def peer(request: pytest.FixtureRequest, signing_key: str) -> Iterator[str]:
    jwks = KeyRing(signing_key).jwks()
    if request.param == "python":
        with python_upstream(jwks) as url:
            yield url
        return
    try:
        with yoga_upstream(jwks, ISSUER) as url:
            yield url
    except ServiceUnavailable as exc:
        unavailable(str(exc))


@pytest.fixture
async def gateway(database_url: str, signing_key: str, peer: str, tmp_path: Path) -> AsyncIterator[Any]:
    shutil.copy(EXAMPLE / "orders.graphql", tmp_path / "orders.graphql")
    text = (EXAMPLE / "upstreams.toml").read_text().replace("http://127.0.0.1:9100/graphql", peer)
    (tmp_path / "upstreams.toml").write_text(text)
    settings = make_settings(database_url, signing_key, upstreams_file=tmp_path / "upstreams.toml", public_url=ISSUER)
    app = create_app(settings)
    async with running(app) as client:
        app.state.client = client
        yield app


async def test_the_gateway_fronts_the_example_upstream(gateway: Any, database_url: str, tenant: Tenant) -> None:
    client = gateway.state.client
    other = await make_tenant(database_url, slug="globex", email="owner@globex.test")
    seen: dict[str, set[str]] = {}
    for t in (tenant, other):
        token = (await login(client, t))["accessToken"]
        r = await gql(client, "{ orders(first: 3) { id total status customer } }", token=token)
        body = r.json()
        assert "errors" not in body, body
        assert len(body["data"]["orders"]) == 3
        seen[t.org_id] = {o["id"] for o in body["data"]["orders"]}
        created = await gql(
            client,
            'mutation { createOrder(input: {customer: "Ada", items: [{sku: "k", quantity: 1, price: 2.5}]}) '
            "{ id customer status } }",
            token=token,
        )
        assert created.json()["data"]["createOrder"]["customer"] == "Ada", created.text
        stats = await gql(client, "{ orderStats { count } }", token=token)
        assert stats.json()["data"]["orderStats"]["count"] >= 1, stats.text
    assert seen[tenant.org_id].isdisjoint(seen[other.org_id])


async def test_the_example_upstream_refuses_a_token_it_cannot_trust(
    peer: str, tenant: Tenant, signing_key: str
) -> None:
    """What the gateway sends is a bearer token the upstream checks itself: anything else is refused there, the
    caller's own access token (signed by the same key) included."""
    access, _ = AccessTokens(KeyRing(signing_key), issuer=ISSUER, audience="portcullis").issue(
        subject=tenant.user_id, organization_id=tenant.org_id, session_id="s"
    )
    async with httpx.AsyncClient() as client:
        for authorization in (None, "Bearer nonsense", f"Bearer {access}"):
            headers = {"authorization": authorization} if authorization else {}
            r = await client.post(peer, json={"query": "{ __typename }"}, headers=headers)
            assert r.status_code == 401
            assert error_codes(r.json()) == ["UNAUTHENTICATED"]
