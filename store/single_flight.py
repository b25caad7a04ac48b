"""One load for many callers: the callers that miss a cache for the same key while its load is running wait
for that load instead of starting their own.

A per-process cache with a lifetime (the sessions, the security policies) is missed by every request in
flight at the moment an entry expires: under load, dozens of identical database reads at once, each taking a
connection of the pool. `SingleFlight.load` runs the first caller's load as a task of its own and hands its
result (or its exception) to every caller of the same key until it ends; a caller that goes away (cancelled)
leaves the load running for the others. The key names what the load reads *and* the cache's state it was
started in (an epoch bumped by every invalidation), so that a caller that arrives after an invalidation never
receives a value read before it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

V = TypeVar("V")


class SingleFlight(Generic[V]):
    def __init__(self) -> None:
        self._loads: dict[Hashable, asyncio.Future[V]] = {}

    def __len__(self) -> int:
        """Loads running now."""
        return len(self._loads)

    async def load(self, key: Hashable, load: Callable[[], Awaitable[V]]) -> V:
        running = self._loads.get(key)
        if running is None:
            running = asyncio.ensure_future(load())
            self._loads[key] = running
            running.add_done_callback(lambda done: self._ended(key, done))
        return await asyncio.shield(running)

    def _ended(self, key: Hashable, done: asyncio.Future[V]) -> None:
        if self._loads.get(key) is done:
            del self._loads[key]
        if not done.cancelled():
            done.exception()  # retrieved here too: a load whose every caller went away is not reported unread
