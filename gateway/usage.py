"""Daily usage per tenant, for reports: admitted requests, their cost and refusals, written to `usage_daily`.

Admission counts each request it decides in the process (`UsageCounter`, a dictionary: no round trip
of its own). `UsageFlusher` adds those counts to the database every `usage_flush_seconds` and at
shutdown, to the rows of (organization, UTC day, subject); each process adds only what it counted, so
any number of processes sum up exactly. A flush whose database write fails keeps its counts for the
next one; a process that dies loses at most the counts of its last interval.

A counter is `<day>|<org>|<subject_type>|<subject_id>|<r|c|l>` (requests, cost, rate limited).
"""

from __future__ import annotations

import contextlib
import logging
from datetime import date
from typing import Any

from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlmodel import col, select

from store.background import Every
from store.db import Database
from store.models import Organization, UsageDaily

log = logging.getLogger("portcullis.usage")

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


class UsageCounter:
    def __init__(self) -> None:
        self._counts: dict[str, int] = {}

    def add(self, prefixes: list[str], *, admitted: bool, cost: int) -> None:
        counts = self._counts
        for prefix in prefixes:
            if admitted:
                counts[prefix + "r"] = counts.get(prefix + "r", 0) + 1
                if cost:
                    counts[prefix + "c"] = counts.get(prefix + "c", 0) + cost
            else:
                counts[prefix + "l"] = counts.get(prefix + "l", 0) + 1

    def drain(self) -> dict[str, int]:
        drained, self._counts = self._counts, {}
        return drained

    def restore(self, counts: dict[str, int]) -> None:
        for k, v in counts.items():
            self._counts[k] = self._counts.get(k, 0) + v


class UsageFlusher:
    def __init__(self, db: Database, counter: UsageCounter, interval_seconds: float = 10.0) -> None:
        self.db = db
        self.counter = counter
        self.interval = interval_seconds
        self._every = Every(
            interval_seconds, self.flush, name="portcullis-usage-flusher", failure="usage flush failed", logger=log
        )

    async def flush(self) -> int:
        """Writes what was counted since the last flush; the number of rows touched."""
        counters = self.counter.drain()
        rows = rows_of(counters)
        if not rows:
            return 0
        try:
            await self._write(rows)
        except Exception:
            log.exception("usage flush failed; counts kept for the next one")
            self.counter.restore(counters)
            return 0
        return len(rows)

    async def _write(self, rows: dict[tuple[str, date, str, str], dict[str, int]]) -> None:
        async with self.db.transaction() as session:
            insert: Any = sqlite_insert if self.db.sqlite else pg_insert
            table = UsageDaily.__table__  # type: ignore[attr-defined]
            orgs = {org for org, _, _, _ in rows}
            known = set(
                (await session.execute(select(col(Organization.id)).where(col(Organization.id).in_(orgs)))).scalars()
            )
            if known != orgs:
                log.warning("usage of %d deleted organization(s) dropped", len(orgs - known))
            for (org, day, subject_type, subject_id), values in sorted(rows.items()):
                if org not in known:
                    continue
                stmt = insert(table).values(
                    organization_id=org, day=day, subject_type=subject_type, subject_id=subject_id, **values
                )
                stmt = stmt.on_conflict_do_update(
                    index_elements=["organization_id", "day", "subject_type", "subject_id"],
                    set_={name: table.c[name] + stmt.excluded[name] for name in values},
                )
                await session.execute(stmt)

    def start(self) -> None:
        self._every.start()

    async def stop(self) -> None:
        await self._every.stop()  # a flush under way finishes; then what is left is written
        with contextlib.suppress(Exception):
            await self.flush()
