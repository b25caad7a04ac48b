"""An example upstream behind the gateway: orders, kept per organization, answered only to a context token.

The gateway forwards each request with `Authorization: Bearer <context token>`, an RS256 JWT signed with a key
of its JWKS (contract.md, "Context token"). This service verifies the token (examples/context_tokens.py)
before any GraphQL runs, and its resolvers check again what the gateway already enforced (the caller's scope
and organization): a service behind a gateway still trusts only what it has verified itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

import strawberry
from cross_web import HTTPException
from graphql import GraphQLError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from strawberry.asgi import GraphQL

from examples.context_tokens import UNAUTHENTICATED, ContextTokenVerifier


@strawberry.enum
class OrderStatus(Enum):
    PENDING = "PENDING"
    PAID = "PAID"
    SHIPPED = "SHIPPED"
    CANCELLED = "CANCELLED"


@dataclass(frozen=True)
class Context:
    claims: dict[str, Any]
    store: Store


Info = strawberry.Info[Context, None]


def caller_org(info: Info, scope: str, organization_id: str | None = None) -> str:
    """The caller's organization, once the token's scope holds `scope` and the preset `organizationId`
    (filled by the gateway) is the token's `org`: a refusal here means the gateway was bypassed or wrong."""
    claims = info.context.claims
    if scope not in claims["scope"].split():
        raise GraphQLError(f"this operation needs the {scope} scope", extensions={"code": "FORBIDDEN"})
    if organization_id is not None and organization_id != claims["org"]:
        raise GraphQLError("organizationId is not the caller's organization", extensions={"code": "FORBIDDEN"})
    return str(claims["org"])


@strawberry.type
class LineItem:
    sku: str
    quantity: int


@strawberry.type
class Order:
    id: strawberry.ID
    total: float
    status: OrderStatus
    customer: str
    items: list[LineItem]

    @strawberry.field
    def internal_note(self, info: Info) -> str | None:
        caller_org(info, "orders:admin")
        return f"note for {self.id}"


@strawberry.type
class OrderStats:
    count: int
    revenue: float  # of the orders not cancelled


@strawberry.input
class LineItemInput:
    sku: str
    quantity: int
    price: float


@strawberry.input
class CreateOrderInput:
    customer: str
    items: list[LineItemInput]


CUSTOMERS = ("Ada Lovelace", "Grace Hopper", "Alan Turing", "Barbara Liskov", "Ken Thompson")


def seeded_order(org: str, n: int) -> Order:
    items = [LineItem(sku=f"SKU-{(n * 7 + i) % 50:03d}", quantity=1 + (n + i) % 3) for i in range(1 + n % 3)]
    return Order(
        id=strawberry.ID(f"ord_{org[:8]}_{n}"),
        total=round(sum(item.quantity * 12.5 for item in items) + n * 0.99, 2),
        status=list(OrderStatus)[n % 4],
        customer=CUSTOMERS[n % len(CUSTOMERS)],
        items=items,
    )


class Store:
    """Orders per organization, in memory: an organization seen for the first time gets 25 seeded orders."""

    def __init__(self) -> None:
        self._by_org: dict[str, list[Order]] = {}

    def orders(self, org: str) -> list[Order]:
        if org not in self._by_org:
            self._by_org[org] = [seeded_order(org, n) for n in range(1, 26)]
        return self._by_org[org]

    def find(self, org: str, order_id: str) -> Order | None:
        return next((o for o in self.orders(org) if o.id == order_id), None)


@strawberry.type
class Query:
    @strawberry.field
    def orders(self, info: Info, *, first: int | None = 10, organization_id: strawberry.ID) -> list[Order]:
        org = caller_org(info, "orders:read", organization_id)
        return info.context.store.orders(org)[: max(0, min(10 if first is None else first, 100))]

    @strawberry.field
    def order(self, info: Info, id: strawberry.ID, organization_id: strawberry.ID) -> Order | None:
        return info.context.store.find(caller_org(info, "orders:read", organization_id), id)

    @strawberry.field
    def order_stats(self, info: Info, organization_id: strawberry.ID) -> OrderStats:
        orders = info.context.store.orders(caller_org(info, "orders:read", organization_id))
        revenue = sum(o.total for o in orders if o.status is not OrderStatus.CANCELLED)
        return OrderStats(count=len(orders), revenue=round(revenue, 2))


@strawberry.type
class Mutation:
    @strawberry.mutation
    def create_order(self, info: Info, input: CreateOrderInput, organization_id: strawberry.ID) -> Order:
        org = caller_org(info, "orders:write", organization_id)
        orders = info.context.store.orders(org)
        if not input.items or any(item.quantity < 1 for item in input.items):
            raise GraphQLError("an order needs items of quantity 1 or more", extensions={"code": "BAD_USER_INPUT"})
        order = Order(
            id=strawberry.ID(f"ord_{org[:8]}_{len(orders) + 1}"),
            total=round(sum(item.quantity * item.price for item in input.items), 2),
            status=OrderStatus.PENDING,
            customer=input.customer,
            items=[LineItem(sku=item.sku, quantity=item.quantity) for item in input.items],
        )
        orders.append(order)
        return order

    @strawberry.mutation
    def cancel_order(self, info: Info, id: strawberry.ID, organization_id: strawberry.ID) -> Order | None:
        order = info.context.store.find(caller_org(info, "orders:write", organization_id), id)
        if order is not None:
            order.status = OrderStatus.CANCELLED
        return order


schema = strawberry.Schema(query=Query, mutation=Mutation)


def create_app(
    *, jwks_url: str | None = None, jwks: Mapping[str, Any] | None = None, issuer: str, audience: str = "orders"
) -> Starlette:
    verifier = ContextTokenVerifier(jwks_url=jwks_url, jwks=jwks, issuer=issuer, audience=audience)
    store = Store()
    view: GraphQL[Context, None] = GraphQL(schema, graphql_ide=None, allow_queries_via_get=False)

    async def graphql(request: Request) -> Response:
        claims = await verifier.verify(request.headers.get("authorization", ""))
        if claims is None:
            return JSONResponse(UNAUTHENTICATED, status_code=401, headers={"WWW-Authenticate": "Bearer"})
        try:
            return await view.run(request, context=Context(claims, store))
        except HTTPException as exc:  # a body that is no GraphQL request
            return JSONResponse({"errors": [{"message": exc.reason}]}, status_code=exc.status_code)

    async def healthz(_: Request) -> Response:
        return JSONResponse({"status": "ok"})

    return Starlette(routes=[Route("/graphql", graphql, methods=["POST"]), Route("/healthz", healthz)])
