"""An example HTTP (REST) upstream behind the gateway: billing, whose invoices are kept per organization and
answered only to a context token.

The gateway forwards the requests under its public prefix (`/api/billing`, upstreams.toml beside this file)
with the prefix stripped and the caller's credentials replaced by a context token (contract.md, "Context
token"), verified here (examples/context_tokens.py, audience `billing`) before any route runs. Like the orders
example, the service checks again what the gateway already enforced (the caller's organization, and
`billing:write` to create): a service behind a gateway still trusts only what it has verified itself.

Besides invoices it serves what a forwarding gateway must get right, for its tests to watch: bodies streamed
both ways (`/uploads`, `/downloads/{size}`), what arrived (`/echo`), a cookie (`/session`), an answer cut short
(`/truncated`), a slow one (`/slow`) and hop-by-hop headers (`/hop`). examples/billing-node serves the same.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import re
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from examples.context_tokens import UNAUTHENTICATED, ContextTokenVerifier

AUDIENCE = "billing"
CHUNK = 64 * 1024
MAX_DOWNLOAD = 1 << 30
MAX_SLOW_SECONDS = 30.0
MAX_CUSTOMER = 200
MAX_AMOUNT = 1_000_000_000
MAX_JSON_BODY = 64 * 1024
TRUNCATED_DECLARED = 1_000_000
TRUNCATED_SENT = 100_000
DOWNLOAD_SEED = b"portcullis billing downloads"
# what every download repeats: a client computes the expected bytes and digest without asking (download_sha256)
BLOCK = hashlib.shake_256(DOWNLOAD_SEED).digest(CHUNK)
CUSTOMERS = ("Ada Lovelace", "Grace Hopper", "Alan Turing", "Barbara Liskov", "Ken Thompson")
STATUSES = ("paid", "open", "overdue")
HOP_HEADERS = {
    "Connection": "X-Custom-Hop",
    "X-Custom-Hop": "1",
    "Keep-Alive": "timeout=5",
    "Proxy-Authenticate": "Basic",
    "X-Billing": "yes",
}
SIZE = re.compile(r"[0-9]{1,10}")

Claims = dict[str, Any]
Handler = Callable[[Request, Claims], Awaitable[Response]]
Sleep = Callable[[float], Awaitable[None]]


def download_chunks(size: int) -> Iterator[bytes]:
    """The `size` bytes `GET /downloads/{size}` sends, as it sends them: BLOCK over and over, in chunks of
    64 KiB, the last one cut short."""
    for start in range(0, size, CHUNK):
        yield BLOCK[: min(CHUNK, size - start)]


def download_sha256(size: int) -> str:
    """The hex SHA-256 of the `size` bytes `GET /downloads/{size}` sends."""
    digest = hashlib.sha256()
    for chunk in download_chunks(size):
        digest.update(chunk)
    return digest.hexdigest()


def invoice_id(org: str, n: int) -> str:
    """The id of an organization's `n`th invoice: its three seeded ones are 1 to 3."""
    return f"inv-{org[:8]}-{n}"


def error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"errors": [{"message": message, "extensions": {"code": code}}]}, status_code=status)


@dataclass(frozen=True)
class Invoice:
    id: str
    organization_id: str
    customer: str
    amount: int | float
    status: str

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "organizationId": self.organization_id,
            "customer": self.customer,
            "amount": self.amount,
            "currency": "EUR",
            "status": self.status,
        }


def seeded_invoice(org: str, n: int) -> Invoice:
    return Invoice(invoice_id(org, n), org, CUSTOMERS[n % len(CUSTOMERS)], round(n * 125.5, 2), STATUSES[n % 3])


class Invoices:
    """Invoices per organization, in memory: an organization seen for the first time gets three seeded ones."""

    def __init__(self) -> None:
        self._by_org: dict[str, list[Invoice]] = {}

    def of(self, org: str) -> list[Invoice]:
        if org not in self._by_org:
            self._by_org[org] = [seeded_invoice(org, n) for n in range(1, 4)]
        return self._by_org[org]

    def find(self, org: str, id: str) -> Invoice | None:
        return next((i for i in self.of(org) if i.id == id), None)

    def create(self, org: str, customer: str, amount: int | float) -> Invoice:
        invoices = self.of(org)
        invoice = Invoice(invoice_id(org, len(invoices) + 1), org, customer, amount, "open")
        invoices.append(invoice)
        return invoice


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is no JSON number")


def invoice_input(body: bytes) -> tuple[str, int | float]:
    """The customer and amount of a new invoice, from `{"customer": string, "amount": number}` and nothing else;
    ValueError with the reason otherwise."""
    try:
        data = json.loads(body, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:
        raise ValueError("the body is not JSON") from exc
    if not isinstance(data, dict) or set(data) != {"customer", "amount"}:
        raise ValueError('the body must be {"customer": string, "amount": number}')
    customer, amount = data["customer"], data["amount"]
    if not isinstance(customer, str) or not customer.strip() or len(customer) > MAX_CUSTOMER:
        raise ValueError(f"customer must be a string of 1 to {MAX_CUSTOMER} characters")
    if isinstance(amount, bool) or not isinstance(amount, int | float) or not 0 < amount <= MAX_AMOUNT:
        raise ValueError(f"amount must be a number above 0, at most {MAX_AMOUNT}")
    return customer, amount


async def json_body(request: Request) -> bytes | None:
    """The request's body, or None when it is over MAX_JSON_BODY bytes (read to its end all the same)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size <= MAX_JSON_BODY:
            chunks.append(chunk)
    return None if size > MAX_JSON_BODY else b"".join(chunks)


class CutShort(Response):
    """Declares TRUNCATED_DECLARED bytes, sends TRUNCATED_SENT and ends without finishing the response: the
    server (uvicorn) then closes the connection, as when an upstream dies mid-answer."""

    def __init__(self) -> None:
        headers = {"Content-Length": str(TRUNCATED_DECLARED)}
        super().__init__(media_type="application/octet-stream", headers=headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        body = b"".join(download_chunks(TRUNCATED_SENT))
        await send({"type": "http.response.body", "body": body, "more_body": True})


async def streamed(size: int) -> AsyncIterator[bytes]:
    for chunk in download_chunks(size):
        yield chunk


async def healthz(_: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def uploads(request: Request, _: Claims) -> Response:
    digest, size = hashlib.sha256(), 0
    async for chunk in request.stream():
        digest.update(chunk)
        size += len(chunk)
    return JSONResponse({"bytes": size, "sha256": digest.hexdigest()})


async def downloads(request: Request, _: Claims) -> Response:
    text = request.path_params["size"]
    if not SIZE.fullmatch(text) or int(text) > MAX_DOWNLOAD:
        return error(400, "BAD_REQUEST", f"size must be a whole number of bytes, at most {MAX_DOWNLOAD}")
    size = int(text)
    headers = {"Content-Length": str(size)}
    return StreamingResponse(streamed(size), media_type="application/octet-stream", headers=headers)


async def echo(request: Request, claims: Claims) -> Response:
    raw_path = request.scope.get("raw_path")
    seen: dict[str, Any] = {
        "method": request.method,
        "path": request.scope["path"],
        "rawPath": raw_path.decode("latin-1") if isinstance(raw_path, bytes) else request.scope["path"],
        "query": request.scope["query_string"].decode("latin-1"),
        "headers": [[k.decode("latin-1").lower(), v.decode("latin-1")] for k, v in request.headers.raw],
        "claims": claims,
    }
    if request.method == "POST":
        seen["bodyLength"] = sum([len(chunk) async for chunk in request.stream()])
    return JSONResponse(seen)


async def session(_: Request, __: Claims) -> Response:
    cookie = f"billing_session={secrets.token_urlsafe(18)}; HttpOnly; Path=/"
    return JSONResponse({"status": "ok"}, headers={"Set-Cookie": cookie})


async def truncated(_: Request, __: Claims) -> Response:
    return CutShort()


async def hop(_: Request, __: Claims) -> Response:
    return JSONResponse({"status": "ok"}, headers=HOP_HEADERS)


def create_app(
    verifier: ContextTokenVerifier, *, invoices: Invoices | None = None, sleep: Sleep = asyncio.sleep
) -> Starlette:
    """The billing service trusting the context tokens `verifier` accepts (its audience should be `billing`)."""
    store = Invoices() if invoices is None else invoices

    def guarded(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            claims = await verifier.verify(request.headers.get("authorization", ""))
            if claims is None:
                return JSONResponse(UNAUTHENTICATED, status_code=401, headers={"WWW-Authenticate": "Bearer"})
            return await handler(request, claims)

        return endpoint

    async def list_invoices(_: Request, claims: Claims) -> Response:
        return JSONResponse([i.as_json() for i in store.of(claims["org"])])

    async def get_invoice(request: Request, claims: Claims) -> Response:
        invoice = store.find(claims["org"], request.path_params["id"])
        if invoice is None:
            return error(404, "NOT_FOUND", "no such invoice")
        return JSONResponse(invoice.as_json())

    async def create_invoice(request: Request, claims: Claims) -> Response:
        if "billing:write" not in claims["scope"].split():
            return error(403, "FORBIDDEN", "creating an invoice needs the billing:write scope")
        body = await json_body(request)
        if body is None:
            return error(413, "PAYLOAD_TOO_LARGE", f"the body is over {MAX_JSON_BODY} bytes")
        try:
            customer, amount = invoice_input(body)
        except ValueError as exc:
            return error(400, "BAD_REQUEST", str(exc))
        invoice = store.create(claims["org"], customer, amount)
        return JSONResponse(invoice.as_json(), status_code=201, headers={"Location": f"/invoices/{invoice.id}"})

    async def slow(request: Request, _: Claims) -> Response:
        try:
            seconds = float(request.query_params.get("seconds", "1"))
        except ValueError:
            seconds = -1.0
        if not (math.isfinite(seconds) and seconds >= 0):
            return error(400, "BAD_REQUEST", "seconds must be a number of seconds, 0 or more")
        seconds = min(seconds, MAX_SLOW_SECONDS)
        await sleep(seconds)
        return JSONResponse({"slept": seconds})

    routes = [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/invoices", guarded(list_invoices), methods=["GET"]),
        Route("/invoices", guarded(create_invoice), methods=["POST"]),
        Route("/invoices/{id}", guarded(get_invoice), methods=["GET"]),
        Route("/uploads", guarded(uploads), methods=["POST"]),
        Route("/downloads/{size}", guarded(downloads), methods=["GET"]),
        Route("/echo", guarded(echo), methods=["GET", "POST"]),
        Route("/session", guarded(session), methods=["GET"]),
        Route("/truncated", guarded(truncated), methods=["GET"]),
        Route("/slow", guarded(slow), methods=["GET"]),
        Route("/hop", guarded(hop), methods=["GET"]),
    ]
    return Starlette(routes=routes)
