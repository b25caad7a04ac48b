"""A GraphQL upstream for the forwarding tests: a real HTTP server on a free port of 127.0.0.1 (a thread of the
test process) that executes what it receives with graphql-core against an SDL and in-memory data, and records
every request it gets (headers and body) so that tests can check what left the gateway.

`answer` replaces the executed answer with something else (a status, a content type, raw bytes, a delay), to
play an upstream that misbehaves.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from graphql import build_schema, graphql_sync

from schema.upstreams.sdl import PLAN_ENUM, PRELUDE

ORDERS_SDL = """
type Query {
  orders(first: Int = 10, organizationId: ID!): [Order!]! @requiresScopes(scopes: [["orders:read"]])
    @listSize(slicingArguments: ["first"])
  order(id: ID!, organizationId: ID!): Order @requiresScopes(scopes: [["orders:read"]])
  orderStats(organizationId: ID!): OrderStats @requiresScopes(scopes: [["orders:read"]]) @requiresPlan(plan: ENTERPRISE)
  search(term: String!, organizationId: ID!): [SearchResult!]! @requiresScopes(scopes: [["orders:read"]])
  node(id: ID!): Node @authenticated
  unruled: String
}
type Mutation {
  createOrder(input: CreateOrderInput!, organizationId: ID!): Order! @requiresScopes(scopes: [["orders:write"]])
  cancelOrder(id: ID!, organizationId: ID!): Order @requiresScopes(scopes: [["orders:write"]])
}
interface Node { id: ID! }
union SearchResult = Order | Customer
enum OrderStatus { PENDING PAID SHIPPED CANCELLED }
type Order implements Node {
  id: ID!
  total: Float!
  status: OrderStatus!
  customer: String!
  items(first: Int): [LineItem!]!
  internalNote: String @requiresScopes(scopes: [["orders:admin"]])
}
type Customer implements Node { id: ID! name: String! }
type LineItem { sku: String! quantity: Int! }
type OrderStats { count: Int! revenue: Float! recent(first: Int = 2, organizationId: ID!): [Order!]! }
input CreateOrderInput { customer: String! items: [LineItemInput!]! status: OrderStatus = PENDING }
input LineItemInput { sku: String! quantity: Int! }
"""


def orders_of(org: str, n: int = 12) -> list[dict[str, Any]]:
    return [
        {
            "__typename": "Order",
            "id": f"{org}-o{i}",
            "total": 10.0 * i,
            "status": ["PENDING", "PAID", "SHIPPED"][i % 3],
            "customer": f"customer {i} of {org}",
            "items": [{"sku": f"sku-{i}", "quantity": i}],
            "internalNote": f"note {i}",
        }
        for i in range(1, n + 1)
    ]


@dataclass
class Received:
    headers: dict[str, str]
    body: dict[str, Any]

    @property
    def query(self) -> str:
        return str(self.body.get("query", ""))

    @property
    def variables(self) -> dict[str, Any]:
        return dict(self.body.get("variables") or {})


@dataclass
class Answer:
    status: int = 200
    content_type: str = "application/json"
    body: bytes | None = None  # raw bytes instead of the executed result
    data: Any = None  # a JSON value to send instead of the executed result
    delay: float = 0.0
    chunked: bool = False  # sent in chunks, with no Content-Length: its size is known only by reading it
    gzip: bool = False  # sent compressed (`Content-Encoding: gzip`): its Content-Length is the compressed size
    # a `Content-Encoding` sent with the body left as it is (a coding the body does not have)
    claimed_encoding: str | None = None


class _Resolvers:
    """Root resolvers over in-memory orders, by organization."""

    def __init__(self, created: dict[str, list[dict[str, Any]]]) -> None:
        self.created = created

    def orders(self, _info: Any, organizationId: str, first: int = 10) -> list[dict[str, Any]]:
        return (orders_of(organizationId) + self.created.get(organizationId, []))[: max(first, 0)]

    def order(self, _info: Any, id: str, organizationId: str) -> dict[str, Any] | None:
        return next((o for o in self.orders(_info, organizationId, 100) if o["id"] == id), None)

    def orderStats(self, _info: Any, organizationId: str) -> dict[str, Any]:
        orders = self.orders(_info, organizationId, 100)

        def recent(_info: Any, organizationId: str, first: int = 2) -> list[dict[str, Any]]:
            return self.orders(_info, organizationId, first)

        return {"count": len(orders), "revenue": sum(o["total"] for o in orders), "recent": recent}

    def search(self, _info: Any, term: str, organizationId: str) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = [o for o in self.orders(_info, organizationId, 3)]
        found.append({"__typename": "Customer", "id": f"{organizationId}-c1", "name": f"{term} customer"})
        return found

    def node(self, _info: Any, id: str) -> dict[str, Any] | None:
        return {"__typename": "Customer", "id": id, "name": "someone"}

    def unruled(self, _info: Any) -> str:
        return "never reachable"

    def createOrder(self, _info: Any, input: dict[str, Any], organizationId: str) -> dict[str, Any]:
        mine = self.created.setdefault(organizationId, [])
        order = {
            "__typename": "Order",
            "id": f"{organizationId}-new{len(mine) + 1}",
            "total": float(sum(i["quantity"] for i in input["items"])),
            "status": input.get("status", "PENDING"),
            "customer": input["customer"],
            "items": input["items"],
            "internalNote": None,
        }
        mine.append(order)
        return order

    def cancelOrder(self, _info: Any, id: str, organizationId: str) -> dict[str, Any] | None:
        order = self.order(_info, id, organizationId)
        if order is not None:
            order = {**order, "status": "CANCELLED"}
        return order


def _type_resolver(value: Any, _info: Any, _abstract: Any) -> str | None:
    return value.get("__typename") if isinstance(value, dict) else None


class GraphQLUpstream:
    """`url` answers POSTed GraphQL requests; `received` holds every request; `answer` overrides the answer."""

    def __init__(self, sdl: str = ORDERS_SDL) -> None:
        self.schema = build_schema("\n".join([sdl, *PRELUDE.values(), PLAN_ENUM]))
        self.received: list[Received] = []
        self.created: dict[str, list[dict[str, Any]]] = {}
        self.answer: Callable[[Received], Answer | None] | None = None
        self.lock = threading.Lock()
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length)
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = {}
                received = Received({k.lower(): v for k, v in self.headers.items()}, body)
                with upstream.lock:
                    upstream.received.append(received)
                override = upstream.answer(received) if upstream.answer is not None else None
                if override is not None and override.delay:
                    time.sleep(override.delay)
                if override is not None and (override.body is not None or override.data is not None):
                    payload = override.body if override.body is not None else json.dumps(override.data).encode()
                    self._send(
                        override.status,
                        override.content_type,
                        payload,
                        chunked=override.chunked,
                        compressed=override.gzip,
                        claimed_encoding=override.claimed_encoding,
                    )
                    return
                result = graphql_sync(
                    upstream.schema,
                    str(body.get("query", "")),
                    root_value=_Resolvers(upstream.created),
                    variable_values=body.get("variables"),
                    operation_name=body.get("operationName"),
                    type_resolver=_type_resolver,
                )
                out: dict[str, Any] = {"data": result.data}
                if result.errors:
                    out["errors"] = [e.formatted for e in result.errors]
                status = override.status if override is not None else 200
                self._send(status, "application/json", json.dumps(out).encode())

            def _send(
                self,
                status: int,
                content_type: str,
                payload: bytes,
                *,
                chunked: bool = False,
                compressed: bool = False,
                claimed_encoding: str | None = None,
            ) -> None:
                try:
                    self.send_response(status)
                    self.send_header("content-type", content_type)
                    if compressed:
                        payload = gzip.compress(payload)
                        self.send_header("content-encoding", "gzip")
                    elif claimed_encoding is not None:
                        self.send_header("content-encoding", claimed_encoding)
                    if not chunked:
                        self.send_header("content-length", str(len(payload)))
                        self.end_headers()
                        self.wfile.write(payload)
                        return
                    self.send_header("transfer-encoding", "chunked")
                    self.end_headers()
                    for start in range(0, len(payload), 65_536):
                        piece = payload[start : start + 65_536]
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                    self.wfile.write(b"0\r\n\r\n")
                except (BrokenPipeError, ConnectionResetError):
                    pass

        class Server(ThreadingHTTPServer):
            request_queue_size = 256  # many callers at once (the listen backlog)

        self.server = Server(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self.url = f"http://127.0.0.1:{self.port}/graphql"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> GraphQLUpstream:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def last(self) -> Received:
        assert self.received, "the upstream received nothing"
        return self.received[-1]


@contextlib.contextmanager
def graphql_upstream(sdl: str = ORDERS_SDL) -> Iterator[GraphQLUpstream]:
    upstream = GraphQLUpstream(sdl).start()
    try:
        yield upstream
    finally:
        upstream.stop()


ORDERS_PERMISSIONS = """
[[permission]]
name = "orders:read"
description = "Read orders"
roles = ["owner", "admin", "manager", "analyst", "viewer"]

[[permission]]
name = "orders:write"
description = "Create and cancel orders"
roles = ["owner", "admin", "manager"]

[[permission]]
name = "orders:admin"
description = "Read internal notes"
roles = ["owner"]
"""


def orders_file(url: str, *, expose_errors: bool = False, timeout: float = 5, extra: str = "") -> str:
    return f"""{ORDERS_PERMISSIONS}
[[upstream]]
name = "orders"
url = "{url}"
schema = "orders.graphql"
timeout_seconds = {timeout}
forward_headers = ["accept-language"]
expose_errors = {"true" if expose_errors else "false"}
[upstream.presets]
organizationId = "organization.id"
{extra}"""
