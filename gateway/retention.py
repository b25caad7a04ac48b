"""The pruning job: every gateway process runs one (started with the other workers, gateway/workers.py).

Every `PORTCULLIS_RETENTION_POLL_SECONDS` (the first time one poll after start-up) it tries to take the
`retention` lease (`job_leases`, one UPDATE; shared mode too). The process that gets it signs and stores an
audit checkpoint when the newest is older than `PORTCULLIS_RETENTION_CHECKPOINT_SECONDS`, then deletes what
is past each tenant's retention in batches of `PORTCULLIS_RETENTION_BATCH_SIZE` rows (resolvers/pruning.py),
renewing the lease before each tenant, and releases it. Any other process finds the lease held and waits
for its next poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from datetime import timedelta

from resolvers.deps import Services
from resolvers.pruning import BATCH, ensure_checkpoint, prune, release_lease, take_lease

log = logging.getLogger("portcullis.retention")


class RetentionPruner:
    def __init__(
        self,
        services: Services,
        *,
        poll_seconds: float = 3600.0,
        lease_seconds: float = 600.0,
        checkpoint_seconds: float = 86_400.0,
        batch_size: int = BATCH,
    ) -> None:
        self.services = services
        self.poll_seconds = poll_seconds
        self.lease = timedelta(seconds=lease_seconds)
        self.checkpoint_every = timedelta(seconds=checkpoint_seconds)
        self.batch_size = batch_size
        self.holder = uuid.uuid4().hex
        self._stopping = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._stopping = False
        self._task = asyncio.create_task(self._run(), name="portcullis-retention")

    async def stop(self) -> None:
        self._stopping = True
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task

    async def _run(self) -> None:
        # the first pass one poll after start-up: a restart does not prune (or checkpoint) on its way up
        while not self._stopping:
            await asyncio.sleep(self.poll_seconds)
            try:
                await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("retention pass failed", exc_info=True)

    async def _held(self) -> bool:
        return not self._stopping and await take_lease(self.services.db, self.holder, self.services.now(), self.lease)

    async def run_once(self) -> dict[str, int] | None:
        """One pass under the lease: rows deleted per kind, or None when another process holds it."""
        db, keys = self.services.db, self.services.tokens.keys
        if not await take_lease(db, self.holder, self.services.now(), self.lease):
            return None
        try:
            await ensure_checkpoint(db, keys, self.services.now(), self.checkpoint_every)
            counts = await prune(db, keys, self.services.now(), batch=self.batch_size, still_held=self._held)
            if any(counts.values()):
                log.info("retention pass", extra={"deleted": counts})
            return counts
        finally:
            await release_lease(db, self.holder, self.services.now())
