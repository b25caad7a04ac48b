"""A loop that runs some work every few seconds in the background, and stops between two runs.

Stopping wakes the loop from its wait at once, and lets a run under way finish (it is cancelled only after a
grace period): a run cancelled in the middle would leave a database query behind, whose driver thread then
answers an event loop that may have closed, and would lose what the run had taken to write.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger("portcullis.background")


class Every:
    def __init__(self, seconds: float, work: Callable[[], Awaitable[object]], *, name: str, failure: str) -> None:
        self.seconds = seconds
        self.work = work
        self.name = name
        self.failure = failure  # the warning logged when a run fails; the loop goes on
        self._stopping: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self._task is not None

    def start(self) -> None:
        self._stopping = asyncio.Event()
        self._task = asyncio.create_task(self._loop(self._stopping), name=self.name)

    async def _loop(self, stopping: asyncio.Event) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), self.seconds)
            if stopping.is_set():
                return
            try:
                await self.work()
            except Exception:
                log.warning(self.failure, exc_info=True)

    async def stop(self, grace_seconds: float = 5.0) -> None:
        task, self._task = self._task, None
        if self._stopping is not None:
            self._stopping.set()
        if task is None:
            return
        _, late = await asyncio.wait([task], timeout=grace_seconds)
        for pending in late:
            pending.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
