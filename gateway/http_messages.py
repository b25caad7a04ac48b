"""What crosses an HTTP route: which headers go up to the upstream and come back to the client, and the
client's body as the upstream reads it (gateway/http_proxy.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from starlette.types import Receive, Scope, Send

from authz import Principal
from authz.errors import ErrorCode
from gateway.middleware import graphql_error, send_json
from schema.limits.admission import EXPLAIN_HEADER

CHUNK = 64 * 1024
PREFETCH_BYTES = 1024 * 1024
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"trailers",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-connection",
    }
)
# the client's headers that never reach an upstream (C-138), beside the hop-by-hop ones: its credentials,
# what the gateway sets itself, and what would mislead the upstream about who is calling
NOT_FORWARDED = frozenset(
    {
        b"host",
        b"content-length",
        b"authorization",
        b"cookie",
        b"x-api-key",
        b"x-csrf-token",
        b"forwarded",
        b"x-forwarded-for",
        b"x-forwarded-host",
        b"x-forwarded-proto",
        b"x-forwarded-prefix",
        b"x-real-ip",
        b"x-request-id",
        b"expect",
        b"traceparent",
        b"tracestate",
        EXPLAIN_HEADER.encode(),
    }
)
# the upstream's headers that the gateway's own take the place of
NOT_RETURNED = frozenset(
    {
        b"date",
        b"server",
        b"x-request-id",
        b"x-content-type-options",
        b"x-frame-options",
        b"referrer-policy",
        b"cross-origin-opener-policy",
        b"strict-transport-security",
    }
)


class BodyTooLarge(Exception):
    pass


class RequestBody:
    """The client's request body, read as the upstream takes it and counted against the route's limit; a
    first part may be read ahead (`prefetch`) and is then sent first."""

    def __init__(self, receive: Receive, limit: int) -> None:
        self.receive = receive
        self.limit = limit
        self.received = 0
        self.head: list[bytes] = []
        self.ended = False
        self.too_large = False
        self.client_gone = False

    async def _next(self) -> bytes:
        message = await self.receive()
        if message["type"] == "http.disconnect":
            self.client_gone = True
            raise ConnectionResetError("the client went away")
        chunk: bytes = message.get("body", b"")
        self.received += len(chunk)
        if self.received > self.limit:
            self.too_large = True
            raise BodyTooLarge
        if not message.get("more_body", False):
            self.ended = True
        return chunk

    async def prefetch(self, size: int) -> None:
        while not self.ended and self.received <= size:
            self.head.append(await self._next())

    def head_bytes(self) -> bytes:
        return b"".join(self.head)

    async def rest(self) -> AsyncIterator[bytes]:
        head, self.head = self.head, []
        for chunk in head:
            if chunk:
                yield chunk
        while not self.ended:
            chunk = await self._next()
            if chunk:
                yield chunk


def single(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return value  # type: ignore[no-any-return]
    return None


def returned(raw: Any, allow_set_cookie: bool) -> list[tuple[bytes, bytes]]:
    """The upstream's headers as the client gets them: no hop-by-hop header (nor one its `Connection` names),
    none the gateway sets itself, `Set-Cookie` only where the route allows it."""
    named = {
        token.strip().lower().encode()
        for name, value in raw
        if name.lower() == b"connection"
        for token in value.decode("latin-1").split(",")
    }
    out: list[tuple[bytes, bytes]] = []
    for name, value in raw:
        lower = name.lower()
        if lower in HOP_BY_HOP or lower in named or lower in NOT_RETURNED:
            continue
        if lower == b"set-cookie" and not allow_set_cookie:
            continue
        out.append((lower, value))
    if not any(k == b"content-security-policy" for k, _ in out) and any(
        k == b"content-type" and v.lower().startswith(b"text/html") for k, v in out
    ):
        # a page of the team's own: never framed elsewhere; what it loads is its own business (the gateway's
        # strict default would break it, GraphiQL's would open it to unpkg.com)
        out.append((b"content-security-policy", b"frame-ancestors 'none'"))
    return out


async def too_large(send: Send, limit: int) -> None:
    await send_json(send, 413, graphql_error(f"Request body exceeds {limit} bytes.", ErrorCode.BAD_USER_INPUT.value))


async def unavailable(send: Send, upstream: str, principal: Principal, status: int) -> None:
    await send_json(
        send,
        status,
        graphql_error(
            f"The upstream {upstream} is unavailable.",
            ErrorCode.UPSTREAM_UNAVAILABLE.value,
            upstream=upstream,
            requestId=principal.request_id,
        ),
    )
