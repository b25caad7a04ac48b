"""Rate-limit refusals in the audit log: one entry per (tenant, limited key, minute) with the count, not
one per refused request, so that a flood of refusals cannot flood the log.

Refusals are counted in memory and written by a task of the gateway's own every few seconds, once their
minute has ended (and at shutdown, the current one too). In shared mode (Redis) every process adds its
count to one Redis key per (tenant, key, minute); the process that saw the minute's first refusal writes
the entry with the total, so one row per minute remains however many processes refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from redis.exceptions import RedisError

from identity.redis_health import RedisHealth
from store.audit import AuditAction, AuditEvent, AuditResult, AuditTrail, clean_text, iso

log = logging.getLogger("portcullis.audit")


@dataclass
class _Refusals:
    count: int
    first: AuditEvent


class RateLimitAudit:
    """`refused(...)` only counts; `flush()` writes the minutes that have ended (with `everything=True`,
    the current one too); `start()` and `stop()` run and end the task that flushes."""

    def __init__(self, trail: AuditTrail, *, redis: Any = None, clock: Callable[[], float] | None = None) -> None:
        self.trail = trail
        self.redis = redis
        self.redis_health = RedisHealth()
        self.clock = clock or time.time
        self._pending: dict[tuple[str, str, int], _Refusals] = {}
        self._task: asyncio.Task[None] | None = None

    @staticmethod
    def _redis_key(chain: str, key: str, minute: int) -> str:
        return f"portcullis:audit:ratelimit:{{{chain}}}:{key}:{minute}"

    async def refused(self, event: AuditEvent, *, key: str) -> None:
        """Count one refused request. `key` names the limited thing (`tenant`, `api_key:<id>`,
        `ip:<address>`); `event` carries who and where (its action and result are set here)."""
        event.action, event.result = AuditAction.EXCESS_RATE_LIMIT_EXCEEDED, AuditResult.DENIED
        minute = int(self.clock() // 60)
        slot = (event.chain, clean_text(key, 120), minute)
        if self.redis is not None:
            rkey = self._redis_key(*slot)
            pipe = self.redis.pipeline(transaction=False)
            pipe.incr(rkey)
            pipe.expire(rkey, 600)
            total, _ = await pipe.execute()
            if int(total) == 1:
                self._pending[slot] = _Refusals(0, event)
            return
        pending = self._pending.get(slot)
        if pending is None:
            self._pending[slot] = _Refusals(1, event)
        else:
            pending.count += 1

    def start(self, interval_seconds: float = 10.0) -> None:
        if self._task is not None and not self._task.done():
            return

        async def run() -> None:
            while True:
                await asyncio.sleep(interval_seconds)
                try:
                    await self.flush()
                except RedisError as exc:  # logged once per outage (identity/redis_health.py)
                    self.redis_health.failed("rate-limit-audit", exc)
                except Exception:
                    log.exception("rate-limit audit entries not written")

        self._task = asyncio.get_running_loop().create_task(run())

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.flush(everything=True)

    async def flush(self, *, everything: bool = False) -> int:
        """Write the finished minutes; the number of entries written."""
        current = int(self.clock() // 60)
        due = [s for s in self._pending if everything or s[2] < current]
        events = []
        for slot in sorted(due, key=lambda s: (s[2], s[0], s[1])):
            pending = self._pending.pop(slot)
            count = pending.count
            if self.redis is not None:
                count = int(await self.redis.getdel(self._redis_key(*slot)) or 0)
                if count == 0:
                    continue
            event = pending.first
            started = datetime.fromtimestamp(slot[2] * 60, UTC)
            event.details = {**dict(event.details), "key": slot[1], "refused": count, "minute": iso(started)}
            events.append(event)
        if events:
            await self.trail.record(*events)
        return len(events)
