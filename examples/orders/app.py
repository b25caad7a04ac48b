"""An example upstream behind the gateway: orders, kept per organization, answered only to a context token.

The gateway forwards each request with `Authorization: Bearer <context token>`, an RS256 JWT signed with a key
of its JWKS (contract.md, "Context token"). This service verifies the token before any GraphQL runs, and its
resolvers check again what the gateway already enforced (the caller's scope and organization): a service
behind a gateway still trusts only what it has verified itself.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

import strawberry
from cross_web import HTTPException
from graphql import GraphQLError
from jose import jwk, jwt
from jose.exceptions import JOSEError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from strawberry.asgi import GraphQL

ALGORITHM = "RS256"
CONTEXT_TYP = "portcullis-context+jwt"
MAX_LIFETIME = 60
JWKS_REFETCH_SECONDS = 60
UNAUTHENTICATED = {"errors": [{"message": "invalid context token", "extensions": {"code": "UNAUTHENTICATED"}}]}
log = logging.getLogger("orders")


class ContextTokenVerifier:
    """Checks the gateway's context tokens against its JWKS: fetched at first use, and again (at most once a
    minute) when a token names a key not in hand, as after the gateway rotates its signing key."""

    def __init__(
        self,
        *,
        jwks_url: str | None,
        jwks: Mapping[str, Any] | None,
        issuer: str,
        audience: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if (jwks_url is None) == (jwks is None):
            raise ValueError("give exactly one of jwks_url and jwks")
        if jwks_url is not None and not jwks_url.startswith(("http://", "https://")):
            raise ValueError("jwks_url must be an http(s) URL")
        self.jwks_url, self.issuer, self.audience, self.clock = jwks_url, issuer, audience, clock
        self._keys = self._load(jwks) if jwks is not None else {}
        self._fetched_at = -float("inf")
        self._lock = asyncio.Lock()

    @staticmethod
    def _load(jwks: Mapping[str, Any]) -> dict[str, Any]:
        return {k["kid"]: jwk.construct(k, ALGORITHM) for k in jwks["keys"] if k.get("kty") == "RSA"}

    def _fetch(self) -> dict[str, Any]:
        assert self.jwks_url is not None
        with urllib.request.urlopen(self.jwks_url, timeout=5) as response:  # noqa: S310 (http(s) only, see __init__)
            return self._load(json.load(response))

    async def _key(self, kid: str) -> Any:
        if kid not in self._keys and self.jwks_url is not None:
            async with self._lock:
                if kid not in self._keys and self.clock() - self._fetched_at >= JWKS_REFETCH_SECONDS:
                    self._fetched_at = self.clock()
                    try:
                        self._keys = await run_in_threadpool(self._fetch)
                    except (OSError, ValueError, KeyError, TypeError, JOSEError) as exc:
                        log.warning("cannot fetch the gateway's JWKS from %s: %s", self.jwks_url, exc)
        return self._keys.get(kid)

    async def verify(self, authorization: str) -> dict[str, Any] | None:
        """The claims of a valid context token for this service, or None for anything else."""
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token:
            return None
        try:
            header = jwt.get_unverified_header(token)
            kid = header.get("kid")
            if header.get("alg") != ALGORITHM or header.get("typ") != CONTEXT_TYP or not isinstance(kid, str):
                return None
            key = await self._key(kid)
            if key is None:
                return None
            claims = jwt.decode(
                token,
                key,
                algorithms=[ALGORITHM],
                audience=self.audience,
                issuer=self.issuer,
                options={f"require_{c}": True for c in ("exp", "iat", "aud", "iss", "sub")},
            )
        except (JOSEError, ValueError, TypeError):  # python-jose raises the last two for malformed claims
            return None
        exp, iat, org, scope = (claims.get(c) for c in ("exp", "iat", "org", "scope"))
        if claims["aud"] != self.audience or not (isinstance(exp, int) and isinstance(iat, int)):
            return None  # a list `aud` that merely contains ours, or times that are not NumericDates
        if not 0 < exp - iat <= MAX_LIFETIME or not (isinstance(org, str) and org and isinstance(scope, str)):
            return None
        return claims


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
