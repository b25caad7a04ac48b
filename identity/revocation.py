"""Pushes "this session is over" to every gateway process.

Embedded mode has one process, so the local bus calls the subscribers directly. Shared mode publishes
on a Redis channel that every process listens to (its own messages included), so a logout through one
process is refused by all of them as soon as the message lands.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from identity.redis_health import RedisHealth

Subscriber = Callable[[list[str]], None]
CHANNEL = "portcullis:revocations"


class RevocationBus(Protocol):
    def subscribe(self, subscriber: Subscriber) -> None: ...
    async def publish(self, session_ids: Iterable[str]) -> None: ...
    async def start(self) -> None: ...
    async def stop(self) -> None: ...


class LocalRevocationBus:
    def __init__(self) -> None:
        self._subscribers: list[Subscriber] = []

    def subscribe(self, subscriber: Subscriber) -> None:
        self._subscribers.append(subscriber)

    async def publish(self, session_ids: Iterable[str]) -> None:
        ids = list(session_ids)
        if ids:
            for s in self._subscribers:
                s(ids)

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None


class RedisRevocationBus(LocalRevocationBus):
    def __init__(self, redis: Any, health: RedisHealth | None = None) -> None:
        super().__init__()
        self._redis = redis
        self.health = health or RedisHealth()
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()

    async def publish(self, session_ids: Iterable[str]) -> None:
        ids = list(session_ids)
        if not ids:
            return
        # invalidate here at once, then tell the others
        await super().publish(ids)
        await self._redis.publish(CHANNEL, ",".join(ids))

    async def start(self) -> None:
        self._task = asyncio.create_task(self._listen(), name="portcullis-revocation-listener")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ready.wait(), timeout=5)

    async def _listen(self) -> None:
        while True:
            try:
                pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
                await pubsub.subscribe(CHANNEL)
                self.health.ok("revocation-bus")
                self._ready.set()
                async for message in pubsub.listen():
                    data = message.get("data")
                    if isinstance(data, bytes):
                        data = data.decode()
                    if isinstance(data, str) and data:
                        for s in self._subscribers:
                            s(data.split(","))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # A lost subscription may have missed messages: drop everything cached. Logged once per
                # outage (identity/redis_health.py), however often the reconnection fails.
                self.health.failed("revocation-bus", exc)
                for s in self._subscribers:
                    s(["*"])
                await asyncio.sleep(0.5)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
