"""Daily usage per tenant, for reports: admitted requests, their cost and refusals, written to `usage_daily`.

Admission counts each request in the same round trip that admits it (`gateway/windows.py`): in the
process in embedded mode, in one Redis hash in shared mode. `UsageFlusher` moves those counts to the
database every `usage_flush_seconds`, adding them to the rows of (organization, UTC day, subject).
In shared mode any process may flush: a script takes the hash and deletes it atomically, so each count
is added once. A flush whose database write fails puts its counts back.

A counter field is `<day>|<org>|<subject_type>|<subject_id>|<r|c|l>` (requests, cost, rate limited).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import date
from typing import Any

from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlmodel import col, select

from gateway.windows import USAGE_KEY, WindowStore
from store.db import Database
from store.models import Organization, UsageDaily

log = logging.getLogger("portcullis.usage")

_TAKE = """
local all = redis.call('HGETALL', KEYS[1])
redis.call('DEL', KEYS[1])
return all
"""
_COLUMNS = {"r": "requests", "c": "cost", "l": "rate_limited"}


def rows_of(counters: dict[str, int]) -> dict[tuple[str, date, str, str], dict[str, int]]:
    rows: dict[tuple[str, date, str, str], dict[str, int]] = {}
    for field, value in counters.items():
        parts = field.split("|")
        if len(parts) != 5 or parts[4] not in _COLUMNS:
            continue
        day, org, subject_type, subject_id, column = parts
        try:
            key = (org, date.fromisoformat(day), subject_type, subject_id)
        except ValueError:
            continue
        row = rows.setdefault(key, {"requests": 0, "cost": 0, "rate_limited": 0})
        row[_COLUMNS[column]] += int(value)
    return rows


class UsageFlusher:
    def __init__(self, db: Database, store: WindowStore, redis: Any = None, interval_seconds: float = 10.0) -> None:
        self.db = db
        self.store = store
        self.redis = redis
        self.interval = interval_seconds
        self._take = redis.register_script(_TAKE) if redis is not None else None
        self._task: asyncio.Task[None] | None = None

    async def _drain(self) -> dict[str, int]:
        if self._take is None:
            return self.store.drain_usage_local() or {}
        raw = await self._take(keys=[USAGE_KEY])
        it = iter(raw)
        return {(k.decode() if isinstance(k, bytes) else k): int(v) for k, v in zip(it, it, strict=True)}

    async def _restore(self, counters: dict[str, int]) -> None:
        if self.redis is None:
            local = getattr(self.store, "_usage", None)
            if isinstance(local, dict):
                for k, v in counters.items():
                    local[k] = local.get(k, 0) + v
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for k, v in counters.items():
                pipe.hincrby(USAGE_KEY, k, v)
            await pipe.execute()

    async def flush(self) -> int:
        """Writes what was counted since the last flush; the number of rows touched."""
        counters = await self._drain()
        rows = rows_of(counters)
        if not rows:
            return 0
        try:
            await self._write(rows)
        except Exception:
            log.exception("usage flush failed; counts kept for the next one")
            with contextlib.suppress(Exception):
                await self._restore(counters)
            return 0
        return len(rows)

    async def _write(self, rows: dict[tuple[str, date, str, str], dict[str, int]]) -> None:
        async with self.db.transaction() as session:
            insert: Any = sqlite_insert if self.db.sqlite else pg_insert
            table = UsageDaily.__table__  # type: ignore[attr-defined]
            orgs = {org for org, _, _, _ in rows}
            known = set((await session.execute(
                select(col(Organization.id)).where(col(Organization.id).in_(orgs))
            )).scalars())
            if known != orgs:
                log.warning("usage of %d deleted organization(s) dropped", len(orgs - known))
            for (org, day, subject_type, subject_id), values in sorted(rows.items()):
                if org not in known:
                    continue
                stmt = insert(table).values(organization_id=org, day=day, subject_type=subject_type,
                                            subject_id=subject_id, **values)
                stmt = stmt.on_conflict_do_update(
                    index_elements=["organization_id", "day", "subject_type", "subject_id"],
                    set_={name: table.c[name] + stmt.excluded[name] for name in values},
                )
                await session.execute(stmt)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="portcullis-usage-flusher")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.flush()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("usage flush failed", exc_info=True)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        with contextlib.suppress(Exception):
            await self.flush()
