"""Receivers of audit streams as a tenant would run them: an HTTP receiver (uvicorn in a thread) for the
WEBHOOK, JSON_LINES and SPLUNK_HEC kinds, and an asyncio syslog server (TCP or TLS) reading RFC 6587
octet-counted RFC 5424 messages. Each keeps what it received as JSON lines, as `portcullis audit
verify-stream FILE` reads them (`stored`), and the entries' sequences in arrival order.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from standardwebhooks import Webhook, WebhookVerificationError


@dataclass
class StreamReceiver:
    """`kind` says how a body is read: `webhook` (verified with `secret`), `json_lines` or `splunk_hec`.
    `mode`: `ok` (204), `fail` (500), `slow` (204 after `delay` seconds), or an HTTP status as text."""

    kind: str = "webhook"
    secret: str | None = None
    mode: str = "ok"
    delay: float = 0.0
    stored: list[str] = field(default_factory=list)
    requests: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    webhook_ids: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def sequences(self) -> list[int]:
        with self.lock:
            lines = [json.loads(s) for s in self.stored]
        return [n for line in lines for n in _sequences(line)]

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        with self.lock:
            self.requests.append((scope["path"], headers, body))
            mode, delay = self.mode, self.delay
        if mode == "slow":
            await asyncio.sleep(delay)
        elif mode != "ok":
            await _answer(send, 500 if mode == "fail" else int(mode))
            return
        await _answer(send, self.receive(body, headers))

    def receive(self, body: bytes, headers: dict[str, str]) -> int:
        if self.kind == "webhook":
            assert self.secret is not None
            try:
                Webhook(self.secret).verify(body, headers)
            except WebhookVerificationError as exc:
                with self.lock:
                    self.rejected.append(str(exc))
                return 401
            with self.lock:
                self.webhook_ids.append(headers["webhook-id"])
                self.stored.append(body.decode())
            return 204
        lines = [line for line in body.decode().split("\n") if line.strip()]
        with self.lock:
            self.stored.extend(lines)
        return 204


def _sequences(line: dict[str, Any]) -> list[int]:
    if "event" in line:
        return _sequences(line["event"])
    if "data" in line:
        return [r["sequence"] for r in line["data"]["entries"]]
    if line.get("type") == "audit.entry":
        return [int(line["sequence"])]
    return []


async def _answer(send: Any, status: int) -> None:
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b""})


@dataclass
class SyslogServer:
    """`mode`: `ok` (reads frames until the client closes), or `close` (closes each connection at once)."""

    mode: str = "ok"
    messages: list[str] = field(default_factory=list)  # each RFC 5424 message, whole
    stored: list[str] = field(default_factory=list)  # each message's MSG (the JSON line)
    connections: int = 0
    port: int = 0

    def sequences(self) -> list[int]:
        return [n for s in self.stored for n in _sequences(json.loads(s))]

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        if self.mode == "close":
            writer.close()
            return
        try:
            while True:
                length = await reader.readuntil(b" ")
                frame = await reader.readexactly(int(length[:-1]))
                message = frame.decode()
                self.messages.append(message)
                # <PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID SD MSG
                self.stored.append(message.split(" ", 7)[7])
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()


@contextlib.asynccontextmanager
async def syslog_server(tls: ssl.SSLContext | None = None) -> AsyncIterator[SyslogServer]:
    server = SyslogServer()
    listening = await asyncio.start_server(server.handle, "127.0.0.1", 0, ssl=tls)
    server.port = int(listening.sockets[0].getsockname()[1])
    try:
        yield server
    finally:
        listening.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(listening.wait_closed(), 2)
