"""The example orders service on GraphQL Yoga (examples/orders-yoga), a Node upstream verifying the gateway's
context tokens with `jose`: the same guarantees as the Python example, from a second implementation.

Tokens are minted the way the gateway mints them (identity/context_tokens.py), through the Python example's
helpers; the service runs as a real node process on loopback, one per module. Tests that change orders use an
organization of their own, so they do not depend on each other's order.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from graphql import (
    DirectiveNode,
    build_ast_schema,
    build_client_schema,
    get_introspection_query,
    lexicographic_sort_schema,
    parse,
    print_schema,
)
from graphql.language import REMOVE, Visitor, visit
from jose import jwt

from identity.tokens import KeyRing, generate_private_key_pem
from tests.conftest import unavailable
from tests.examples.test_orders_example import CANCEL, CREATE, NAMED, ORDER, ORDERS, SDL, STATS, forged, mint
from tests.examples.tokens import ISSUER, REFUSED
from tests.examples.yoga import yoga_upstream
from tests.services import ServiceUnavailable

UNAUTHENTICATED = {"errors": [{"message": "invalid context token", "extensions": {"code": "UNAUTHENTICATED"}}]}
FULL = (
    "query($org: ID!, $first: Int) { orders(first: $first, organizationId: $org)"
    " { id total status customer items { sku quantity } } }"
)


@pytest.fixture(scope="module")
def keys() -> KeyRing:
    return KeyRing(generate_private_key_pem())


@pytest.fixture(scope="module")
def yoga(keys: KeyRing) -> Iterator[httpx.Client]:
    try:
        with yoga_upstream(keys.jwks(), ISSUER) as url, httpx.Client(base_url=url.removesuffix("/graphql")) as client:
            yield client
    except ServiceUnavailable as exc:
        unavailable(str(exc))


def fresh_org() -> str:
    return f"org-{uuid.uuid4().hex[:8]}"


def gql(client: httpx.Client, token: str | None, query: str, **variables: Any) -> httpx.Response:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    return client.post("/graphql", json={"query": query, "variables": variables}, headers=headers)


def data(client: httpx.Client, token: str, query: str, **variables: Any) -> Any:
    response = gql(client, token, query, **variables)
    assert response.status_code == 200, response.text
    body = response.json()
    assert "errors" not in body, body
    return body["data"]


def errors(response: httpx.Response) -> list[tuple[str, str]]:
    return [(e["message"], e["extensions"]["code"]) for e in response.json().get("errors", [])]


def test_a_valid_token_reads_its_own_organizations_orders(yoga: httpx.Client, keys: KeyRing) -> None:
    org = fresh_org()
    token = mint(keys, org)
    orders = data(yoga, token, FULL, org=org, first=4)["orders"]
    assert orders == [
        {
            "id": f"{org}-y{n}",
            "total": n * 10,
            "status": ["PENDING", "PAID", "SHIPPED"][(n - 1) % 3],
            "customer": f"customer {n}",
            "items": [{"sku": f"sku-{n}", "quantity": n}],
        }
        for n in range(1, 5)
    ]
    assert len(data(yoga, token, ORDERS, org=org)["orders"]) == 10
    assert len(data(yoga, token, ORDERS, org=org, first=1000)["orders"]) == 25
    assert data(yoga, token, ORDER, org=org, id=f"{org}-y3")["order"] == {"id": f"{org}-y3", "status": "SHIPPED"}
    assert data(yoga, token, STATS, org=org)["orderStats"] == {"count": 25, "revenue": 3250}
    # another organization's order, asked for in one's own: not there
    assert data(yoga, token, ORDER, org=org, id="org-b-y3")["order"] is None


def test_two_organizations_never_mix(yoga: httpx.Client, keys: KeyRing) -> None:
    a, b = fresh_org(), fresh_org()
    token_a, token_b = mint(keys, a), mint(keys, b)
    stats_b = data(yoga, token_b, STATS, org=b)["orderStats"]
    created = data(yoga, token_a, CREATE, org=a)["createOrder"]
    assert created == {"id": f"{a}-y26", "total": 9, "status": "PENDING"}
    assert data(yoga, token_a, STATS, org=a)["orderStats"]["count"] == 26
    assert data(yoga, token_b, STATS, org=b)["orderStats"] == stats_b
    assert all(o["id"].startswith(f"{b}-y") for o in data(yoga, token_b, ORDERS, org=b, first=100)["orders"])
    assert data(yoga, token_b, ORDER, org=b, id=created["id"])["order"] is None
    assert data(yoga, token_b, CANCEL, org=b, id=created["id"])["cancelOrder"] is None
    assert data(yoga, token_a, ORDER, org=a, id=created["id"])["order"]["status"] == "PENDING"


@pytest.mark.parametrize("query", [ORDERS, STATS, CREATE], ids=["orders", "orderStats", "createOrder"])
def test_an_organization_id_other_than_the_tokens_is_refused(yoga: httpx.Client, keys: KeyRing, query: str) -> None:
    org, other = fresh_org(), fresh_org()
    response = gql(yoga, mint(keys, org), query, org=other)
    assert response.status_code == 200
    assert errors(response) == [("organization mismatch", "FORBIDDEN")]
    assert response.json()["data"] is None
    response = gql(yoga, mint(keys, org), ORDER, org=other, id=f"{other}-y1")
    assert errors(response) == [("organization mismatch", "FORBIDDEN")]
    assert response.json()["data"] == {"order": None}
    # nothing was created, in either organization
    assert data(yoga, mint(keys, org), STATS, org=org)["orderStats"]["count"] == 25
    assert data(yoga, mint(keys, other), STATS, org=other)["orderStats"]["count"] == 25


def refused_headers(keys: KeyRing, how: str) -> dict[str, str]:
    """The Authorization header of a refused request: the Python example's forged tokens, and two more."""
    match how:
        case "minted in the future":
            return {"Authorization": f"Bearer {mint(keys, clock=lambda: time.time() + 120)}"}
        case "basic scheme":
            return {"Authorization": f"Basic {mint(keys)}"}
    token = forged(keys, how)
    return {} if token is None else {"Authorization": f"Bearer {token}"}


@pytest.mark.parametrize("how", [*REFUSED, "minted in the future", "basic scheme"])
def test_anything_but_a_valid_context_token_is_refused_before_graphql(
    yoga: httpx.Client, keys: KeyRing, how: str
) -> None:
    headers = refused_headers(keys, how)  # for org-a, which no other test here changes
    for query in (ORDERS, CREATE):
        response = yoga.post("/graphql", json={"query": query, "variables": {"org": "org-a"}}, headers=headers)
        assert response.status_code == 401
        assert response.json() == UNAUTHENTICATED
        assert response.headers["www-authenticate"] == "Bearer"
    # the refused createOrder never ran
    assert data(yoga, mint(keys), STATS, org="org-a")["orderStats"]["count"] == 25


def test_a_token_without_orders_write_cannot_create_or_cancel(yoga: httpx.Client, keys: KeyRing) -> None:
    org = fresh_org()
    reader = mint(keys, org, permissions=frozenset({"orders:read", "billing:read"}))
    assert jwt.get_unverified_claims(reader)["scope"] == "orders:read"
    response = gql(yoga, reader, CREATE, org=org)
    assert errors(response) == [("this operation needs the orders:write scope", "FORBIDDEN")]
    assert response.json()["data"] is None
    response = gql(yoga, reader, CANCEL, org=org, id=f"{org}-y1")
    assert errors(response) == [("this operation needs the orders:write scope", "FORBIDDEN")]
    assert data(yoga, reader, ORDER, org=org, id=f"{org}-y1")["order"]["status"] == "PENDING"
    assert data(yoga, reader, STATS, org=org)["orderStats"]["count"] == 25
    writer = mint(keys, org)
    assert data(yoga, writer, CANCEL, org=org, id=f"{org}-y1")["cancelOrder"]["status"] == "CANCELLED"
    assert data(yoga, writer, STATS, org=org)["orderStats"] == {"count": 25, "revenue": 3240}


def test_a_token_without_orders_read_cannot_read(yoga: httpx.Client, keys: KeyRing) -> None:
    org = fresh_org()
    nothing = mint(keys, org, permissions=frozenset({"billing:read"}))
    assert jwt.get_unverified_claims(nothing)["scope"] == ""
    for query in (ORDERS, STATS):
        response = gql(yoga, nothing, query, org=org)
        assert errors(response) == [("this operation needs the orders:read scope", "FORBIDDEN")]


def test_internal_notes_need_orders_admin(yoga: httpx.Client, keys: KeyRing) -> None:
    org = fresh_org()
    query = "query($org: ID!, $id: ID!) { order(id: $id, organizationId: $org) { internalNote } }"
    admin = mint(keys, org, permissions=NAMED)
    assert data(yoga, admin, query, org=org, id=f"{org}-y2")["order"] == {"internalNote": "note 2"}
    response = gql(yoga, mint(keys, org), query, org=org, id=f"{org}-y2")
    assert errors(response) == [("this operation needs the orders:admin scope", "FORBIDDEN")]
    assert response.json()["data"] == {"order": {"internalNote": None}}


def test_health_and_what_is_not_graphql(yoga: httpx.Client, keys: KeyRing) -> None:
    assert yoga.get("/healthz").json() == {"status": "ok"}
    assert yoga.get("/graphql", params={"query": "{ __typename }"}).status_code == 405
    assert yoga.post("/elsewhere", json={"query": "{ __typename }"}).status_code == 404
    response = yoga.post(
        "/graphql",
        content=b"not json",
        headers={"Authorization": f"Bearer {mint(keys)}", "content-type": "application/json"},
    )
    assert response.status_code == 400
    assert "errors" in response.json()


def test_the_service_schema_is_the_sdl_without_the_gateways_directives(yoga: httpx.Client, keys: KeyRing) -> None:
    class Undirected(Visitor):
        def enter_directive(self, node: DirectiveNode, *_: Any) -> Any:
            return REMOVE

    mounted = build_ast_schema(visit(parse(Path(SDL).read_text()), Undirected()))
    served = build_client_schema(data(yoga, mint(keys), get_introspection_query()))
    assert print_schema(lexicographic_sort_schema(served)) == print_schema(lexicographic_sort_schema(mounted))
