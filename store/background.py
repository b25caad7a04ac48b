"""A loop that runs some work every few seconds in the background, sooner when woken, and stops between runs.

Stopping wakes the loop from its wait at once, and lets a run under way finish (it is cancelled only after a
grace period): a run cancelled in the middle would leave a database query behind, whose driver thread then
answers an event loop that may have closed, and would lose what the run had taken to write. The work may
look at `stopping` to end a long run early, between two of its steps.

Under the usage flush, the API keys' last use, the address blocks' reload, and the senders of mail, webhooks
and audit streams and the report scheduler (which run at once on start, and again whenever `wake` is called).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger("portcullis.background")


class Every:
    def __init__(
        self,
        seconds: float,
        work: Callable[[], Awaitable[object]],
        *,
        name: str,
        failure: str,
        run_first: bool = False,
        logger: logging.Logger = log,
    ) -> None:
        self.seconds = seconds
        self.work = work
        self.name = name
        self.failure = failure  # the warning logged (on `logger`, the owner's) when a run fails; the loop goes on
        self.log = logger
        self.run_first = run_first  # a run as soon as the loop starts, before the first wait
        self._wakeup = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self._task is not None

    @property
    def stopping(self) -> bool:
        return self._stopping

    def start(self) -> None:
        self._stopping = False
        self._wakeup = asyncio.Event()
        self._task = asyncio.create_task(self._loop(), name=self.name)

    def wake(self) -> None:
        """Run now (or, when a run is under way, once more as soon as it ends)."""
        self._wakeup.set()

    async def _loop(self) -> None:
        if not self.run_first:
            await self._pause()
        while not self._stopping:
            self._wakeup.clear()
            try:
                await self.work()
            except Exception:
                self.log.warning(self.failure, exc_info=True)
            if self._stopping:
                return
            await self._pause()

    async def _pause(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wakeup.wait(), self.seconds)

    async def stop(self, grace_seconds: float = 5.0) -> None:
        self._stopping = True
        self._wakeup.set()
        task, self._task = self._task, None
        if task is None:
            return
        _, late = await asyncio.wait([task], timeout=grace_seconds)
        for pending in late:
            pending.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
