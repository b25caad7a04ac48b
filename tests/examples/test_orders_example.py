"""The example orders service (examples/orders/): it answers only to the gateway's context tokens, and keeps
each organization's orders to that organization even when the gateway is bypassed or wrong.

Tokens are minted the way the gateway mints them (identity/context_tokens.py); each refused token differs
from an accepted one by the one property under test. The service runs in process, with no network.
"""

from __future__ import annotations

import io
import json
import time
import urllib.request
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from graphql import DirectiveNode, build_ast_schema, build_schema, lexicographic_sort_schema, parse, print_schema
from graphql.language import REMOVE, Visitor, visit
from jose import jwt

from examples.context_tokens import UNAUTHENTICATED, ContextTokenVerifier
from examples.orders.app import create_app, schema
from identity.tokens import KeyRing, generate_private_key_pem
from tests.examples.tokens import ISSUER, REFUSED, mint_token
from tests.examples.tokens import forged as forge

URL = "http://orders.test/graphql"
NAMED = frozenset({"orders:read", "orders:write", "orders:admin"})
SDL = Path(__file__).resolve().parents[2] / "examples" / "orders" / "orders.graphql"

ORDERS = "query($org: ID!, $first: Int) { orders(first: $first, organizationId: $org) { id customer total } }"
ORDER = "query($org: ID!, $id: ID!) { order(id: $id, organizationId: $org) { id status } }"
STATS = "query($org: ID!) { orderStats(organizationId: $org) { count revenue } }"
CREATE = (
    "mutation($org: ID!) { createOrder(organizationId: $org,"
    ' input: {customer: "Edsger", items: [{sku: "SKU-1", quantity: 2, price: 4.5}]}) { id total status } }'
)
CANCEL = "mutation($org: ID!, $id: ID!) { cancelOrder(id: $id, organizationId: $org) { id status } }"


@pytest.fixture(scope="module")
def keys() -> KeyRing:
    return KeyRing(generate_private_key_pem())


@pytest.fixture
async def client(keys: KeyRing) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(jwks=keys.jwks(), issuer=ISSUER)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://orders.test") as c:
        yield c


def mint(
    keys: KeyRing,
    org: str = "org-a",
    *,
    audience: str = "orders",
    issuer: str = ISSUER,
    clock: Callable[[], float] = time.time,
    permissions: frozenset[str] = frozenset({"orders:read", "orders:write"}),
) -> str:
    return mint_token(keys, org, audience=audience, named=NAMED, permissions=permissions, issuer=issuer, clock=clock)


def forged(keys: KeyRing, how: str) -> str | None:
    return forge(keys, how, mint)


async def gql(client: httpx.AsyncClient, token: str | None, query: str, **variables: Any) -> httpx.Response:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    return await client.post("/graphql", json={"query": query, "variables": variables}, headers=headers)


async def data(client: httpx.AsyncClient, token: str, query: str, **variables: Any) -> Any:
    response = await gql(client, token, query, **variables)
    assert response.status_code == 200, response.text
    body = response.json()
    assert "errors" not in body, body
    return body["data"]


def codes(response: httpx.Response) -> list[str]:
    return [e["extensions"]["code"] for e in response.json().get("errors", [])]


async def test_a_valid_token_reads_its_own_organizations_orders(client: httpx.AsyncClient, keys: KeyRing) -> None:
    token = mint(keys, "org-a")
    orders = (await data(client, token, ORDERS, org="org-a", first=5))["orders"]
    assert [o["id"] for o in orders] == [f"ord_org-a_{n}" for n in range(1, 6)]
    assert len((await data(client, token, ORDERS, org="org-a"))["orders"]) == 10
    assert len((await data(client, token, ORDERS, org="org-a", first=1000))["orders"]) == 25
    assert (await data(client, token, ORDER, org="org-a", id="ord_org-a_3"))["order"]["id"] == "ord_org-a_3"
    assert (await data(client, token, STATS, org="org-a"))["orderStats"]["count"] == 25
    # another organization's order, asked for in one's own: not there
    assert (await data(client, token, ORDER, org="org-a", id="ord_org-b_3"))["order"] is None


async def test_two_organizations_never_mix(client: httpx.AsyncClient, keys: KeyRing) -> None:
    a, b = mint(keys, "org-a"), mint(keys, "org-b")
    stats_b = (await data(client, b, STATS, org="org-b"))["orderStats"]
    created = (await data(client, a, CREATE, org="org-a"))["createOrder"]
    assert created == {"id": "ord_org-a_26", "total": 9.0, "status": "PENDING"}
    assert (await data(client, a, STATS, org="org-a"))["orderStats"]["count"] == 26
    assert (await data(client, b, STATS, org="org-b"))["orderStats"] == stats_b
    assert all(
        o["id"].startswith("ord_org-b_") for o in (await data(client, b, ORDERS, org="org-b", first=100))["orders"]
    )
    assert (await data(client, b, ORDER, org="org-b", id=created["id"]))["order"] is None
    assert (await data(client, b, CANCEL, org="org-b", id=created["id"]))["cancelOrder"] is None
    assert (await data(client, a, ORDER, org="org-a", id=created["id"]))["order"]["status"] == "PENDING"


@pytest.mark.parametrize("query", [ORDERS, STATS, CREATE], ids=["orders", "orderStats", "createOrder"])
async def test_an_organization_id_other_than_the_tokens_is_refused(
    client: httpx.AsyncClient, keys: KeyRing, query: str
) -> None:
    response = await gql(client, mint(keys, "org-a"), query, org="org-b")
    assert response.status_code == 200
    assert codes(response) == ["FORBIDDEN"]
    assert response.json()["data"] is None
    response = await gql(client, mint(keys, "org-a"), ORDER, org="org-b", id="ord_org-b_1")
    assert codes(response) == ["FORBIDDEN"]
    assert response.json()["data"] == {"order": None}


@pytest.mark.parametrize("how", REFUSED)
async def test_anything_but_a_valid_context_token_is_refused_before_graphql(
    client: httpx.AsyncClient, keys: KeyRing, how: str
) -> None:
    token = forged(keys, how)
    for query in (ORDERS, CREATE):
        response = await gql(client, token, query, org="org-a")
        assert response.status_code == 401
        assert response.json() == UNAUTHENTICATED
    # the refused createOrder never ran
    assert (await data(client, mint(keys), STATS, org="org-a"))["orderStats"]["count"] == 25


async def test_a_token_without_orders_write_cannot_create_or_cancel(client: httpx.AsyncClient, keys: KeyRing) -> None:
    reader = mint(keys, permissions=frozenset({"orders:read", "billing:read"}))
    assert jwt.get_unverified_claims(reader)["scope"] == "orders:read"
    response = await gql(client, reader, CREATE, org="org-a")
    assert codes(response) == ["FORBIDDEN"]
    assert response.json()["data"] is None
    response = await gql(client, reader, CANCEL, org="org-a", id="ord_org-a_1")
    assert codes(response) == ["FORBIDDEN"]
    assert (await data(client, reader, ORDER, org="org-a", id="ord_org-a_1"))["order"]["status"] != "CANCELLED"
    assert (await data(client, reader, STATS, org="org-a"))["orderStats"]["count"] == 25
    writer = mint(keys)
    assert (await data(client, writer, CANCEL, org="org-a", id="ord_org-a_1"))["cancelOrder"]["status"] == "CANCELLED"


async def test_internal_notes_need_orders_admin(client: httpx.AsyncClient, keys: KeyRing) -> None:
    query = 'query($org: ID!) { order(id: "ord_org-a_2", organizationId: $org) { internalNote } }'
    admin = mint(keys, permissions=NAMED)
    assert (await data(client, admin, query, org="org-a"))["order"] == {"internalNote": "note for ord_org-a_2"}
    response = await gql(client, mint(keys), query, org="org-a")
    assert codes(response) == ["FORBIDDEN"]
    assert response.json()["data"] == {"order": {"internalNote": None}}


async def test_health_and_what_is_not_graphql(client: httpx.AsyncClient, keys: KeyRing) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    assert (await client.get("/graphql", params={"query": "{ __typename }"})).status_code == 405
    response = await client.post(
        "/graphql",
        content=b"not json",
        headers={"Authorization": f"Bearer {mint(keys)}", "content-type": "application/json"},
    )
    assert response.status_code == 400
    assert "errors" in response.json()


def test_the_service_schema_is_the_sdl_without_the_gateways_directives() -> None:
    class Undirected(Visitor):
        def enter_directive(self, node: DirectiveNode, *_: Any) -> Any:
            return REMOVE

    mounted = build_ast_schema(visit(parse(SDL.read_text()), Undirected()))
    served = build_schema(schema.as_str())
    assert print_schema(lexicographic_sort_schema(served)) == print_schema(lexicographic_sort_schema(mounted))


async def test_the_jwks_is_fetched_once_and_again_at_most_once_a_minute_for_an_unknown_kid(
    keys: KeyRing, monkeypatch: pytest.MonkeyPatch
) -> None:
    new = KeyRing(generate_private_key_pem())
    published = {"keys": keys.jwks()["keys"]}
    fetched: list[str] = []

    def urlopen(url: str, timeout: float) -> io.BytesIO:
        fetched.append(url)
        return io.BytesIO(json.dumps(published).encode())

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    now = [1000.0]
    verifier = ContextTokenVerifier(
        jwks_url=f"{ISSUER}/.well-known/jwks.json", jwks=None, issuer=ISSUER, audience="orders", clock=lambda: now[0]
    )
    assert fetched == []
    assert (await verifier.verify(f"Bearer {mint(keys)}"))["org"] == "org-a"
    assert (await verifier.verify(f"Bearer {mint(keys, 'org-b')}"))["org"] == "org-b"
    assert fetched == [f"{ISSUER}/.well-known/jwks.json"]
    # the gateway rotates its key: within the minute an unknown kid is refused without a fetch
    published = new.jwks()
    assert await verifier.verify(f"Bearer {mint(new)}") is None
    now[0] += 30
    assert await verifier.verify(f"Bearer {mint(new)}") is None
    assert len(fetched) == 1
    now[0] += 31
    assert (await verifier.verify(f"Bearer {mint(new)}"))["org"] == "org-a"
    assert len(fetched) == 2
    # the keys the gateway no longer publishes are no longer accepted
    assert await verifier.verify(f"Bearer {mint(keys)}") is None
    assert len(fetched) == 2
