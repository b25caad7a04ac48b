"""A webhook receiver as a tenant would write one: every request verified with the `standardwebhooks`
library's own verifier (`Webhook(secret).verify(body, headers)`), and each message id remembered, so a
second arrival of an id is recognised as a replay (and answered 200 without acting on it twice).

Served for real by uvicorn in a thread (`tests.http_upstreams.serving`). `mode` decides the answer:
`ok` (204), `fail` (500), `slow` (204 after `delay` seconds).
"""

from __future__ import annotations

import asyncio
import json
import threading
from dataclasses import dataclass, field
from typing import Any

from standardwebhooks import Webhook, WebhookVerificationError


@dataclass
class Arrival:
    message_id: str
    headers: dict[str, str]
    body: bytes
    payload: dict[str, Any]


@dataclass
class Receiver:
    secret: str | None = None
    mode: str = "ok"
    delay: float = 0.0
    accepted: list[Arrival] = field(default_factory=list)  # verified, first arrival of its id
    replays: list[Arrival] = field(default_factory=list)  # verified, an id seen before
    rejected: list[str] = field(default_factory=list)  # the verifier's refusals
    attempts: int = 0  # every request, whatever became of it
    lock: threading.Lock = field(default_factory=threading.Lock)

    def ids(self) -> list[str]:
        with self.lock:
            return [a.message_id for a in self.accepted]

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
            self.attempts += 1
            mode, delay = self.mode, self.delay
        if mode == "fail":
            await _answer(send, 500)
            return
        if mode == "slow":
            await asyncio.sleep(delay)
        status = self.receive(body, headers)
        await _answer(send, status)

    def receive(self, body: bytes, headers: dict[str, str]) -> int:
        """What the receiver does with one request: 401 unless verified, 200 for a replay, 204 otherwise."""
        assert self.secret is not None, "the receiver needs the webhook's secret"
        try:
            payload = Webhook(self.secret).verify(body, headers)
        except WebhookVerificationError as exc:
            with self.lock:
                self.rejected.append(str(exc))
            return 401
        arrival = Arrival(headers["webhook-id"], headers, body, payload)
        with self.lock:
            if arrival.message_id in {a.message_id for a in self.accepted}:
                self.replays.append(arrival)
                return 200
            self.accepted.append(arrival)
        return 204


async def _answer(send: Any, status: int) -> None:
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": json.dumps({"status": status}).encode()})
