"""Real HTTP servers for the HTTP routes' tests: an ASGI application under uvicorn (httptools, as `serve` runs
the gateway) on a free port of 127.0.0.1, in a thread of the test process; what an upstream received, as it
arrived; and requests written byte for byte on a socket, where an HTTP client would normalize the path or
refuse to send a malformed request."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from opentelemetry.trace import Tracer
from starlette.types import ASGIApp, Receive, Scope, Send

from examples.billing.app import AUDIENCE
from examples.billing.app import create_app as billing_app
from examples.context_tokens import ContextTokenVerifier
from examples.tracing import traced
from identity.tokens import KeyRing
from tests.services import free_port


@contextlib.contextmanager
def serving(app: ASGIApp, *, lifespan: str = "auto", port: int = 0) -> Iterator[str]:
    """`app` served at the URL this yields (on `port`, or a free one), until the block ends."""
    port = port or free_port()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        http="httptools",
        loop="asyncio",
        lifespan=lifespan,
        log_level="warning",
        proxy_headers=False,  # as `portcullis serve`: the gateway decides which forwarded addresses it trusts
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the server on port {port} did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(15)


@dataclass
class Received:
    method: str
    path: str
    raw_path: bytes
    query: bytes
    headers: dict[str, str]


@dataclass
class Recorder:
    """Wraps an upstream application and keeps every request's method, path and headers as it arrived."""

    app: ASGIApp
    received: list[Received] = field(default_factory=list)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            self.received.append(
                Received(
                    scope["method"],
                    scope["path"],
                    scope.get("raw_path") or b"",
                    scope.get("query_string") or b"",
                    {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]},
                )
            )
        await self.app(scope, receive, send)

    def paths(self) -> list[str]:
        return [r.path for r in self.received if r.path != "/healthz"]


def raw_request(url: str, request: bytes, timeout: float = 10.0) -> bytes:
    """Writes `request` as it is to the server at `url` and reads until the server closes or stops answering."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(request)
        chunks: list[bytes] = []
        with contextlib.suppress(TimeoutError, ConnectionResetError):
            sock.settimeout(2.0)
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
    return b"".join(chunks)


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1]) if response.startswith(b"HTTP/1.1 ") else 0


def get(path: str, headers: dict[str, Any] | None = None) -> bytes:
    lines = [f"GET {path} HTTP/1.1", "Host: gateway.test", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class Billing:
    """The example billing service (examples/billing) trusting the tokens of `issuer` signed with `signing_key`,
    behind a `Recorder`; `/cookie/session` is its `/session` under another path (for a route that lets the
    cookie through)."""

    def __init__(self, signing_key: str, issuer: str) -> None:
        verifier = ContextTokenVerifier(
            jwks_url=None, jwks=KeyRing(signing_key).jwks(), issuer=issuer, audience=AUDIENCE
        )
        self.app = billing_app(verifier)
        self.recorder = Recorder(self._routed)
        self.url = ""

    async def _routed(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/cookie/session":
            scope = {**scope, "path": "/session", "raw_path": b"/session"}
        await self.app(scope, receive, send)


@contextlib.contextmanager
def billing_service(signing_key: str, issuer: str, tracer: Tracer | None = None) -> Iterator[Billing]:
    """The billing service served; its requests traced with `tracer` when given (examples/tracing.py)."""
    upstream = Billing(signing_key, issuer)
    with serving(upstream.recorder if tracer is None else traced(upstream.recorder, tracer)) as url:
        upstream.url = url
        yield upstream
