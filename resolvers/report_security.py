"""The SECURITY report: the period's security events from the audit log (`SECURITY_ACTIONS`), counted per
day and category, with their top sources (docs/reports.md)."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Sequence
from datetime import date
from typing import Any

from sqlalchemy import ColumnElement, and_, func
from sqlalchemy import select as sa_select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from resolvers.report_builders import (
    SECURITY_ACTIONS,
    SECURITY_CATEGORIES,
    TOP_SOURCES,
    Period,
    Writer,
    chart,
    day_bars,
    iso,
    iso_or_none,
    keyset,
)
from resolvers.report_risk import build_risk
from store.audit import ReadableEntry, readable_entries
from store.models import AuditEntry, Organization, UsageDaily
from store.scoping import tenant_filter


def _security_events(org_id: str, period: Period, actions: Sequence[str]) -> ColumnElement[bool]:
    # a tenant's entries form its chain (store.audit): `chain` is its organization_id, and indexed
    return and_(
        col(AuditEntry.chain) == org_id,
        col(AuditEntry.at) >= period.start,
        col(AuditEntry.at) < period.end,
        col(AuditEntry.action).in_(list(actions)),
    )


# entries opened together: one look-up of their keys per batch
READABLE_BATCH = 500


async def _readable_events(db: AsyncSession, where: ColumnElement[bool]) -> AsyncIterator[ReadableEntry]:
    """The entries matching `where` in (at, id) order, as readers see them (store.audit.readable_entries:
    a person's sealed address opened while their key exists)."""
    keys = [col(AuditEntry.at), col(AuditEntry.id)]
    batch: list[AuditEntry] = []
    async for _at, _id, entry in keyset(db, sa_select(*keys, AuditEntry).where(where), keys):
        batch.append(entry)
        if len(batch) >= READABLE_BATCH:
            for readable in await readable_entries(db, batch):
                yield readable
            batch = []
    for readable in await readable_entries(db, batch):
        yield readable


async def build_security(db: AsyncSession, org: Organization, period: Period, out: Writer) -> dict[str, Any]:
    where = _security_events(org.id, period, list(SECURITY_ACTIONS))
    daily: Counter[tuple[str, str]] = Counter()
    per_day: dict[date, int] = {}
    # (category, source type, source) -> [count, last time]: the top sources, counted on the readable view
    sources: dict[tuple[str, str, str], list[Any]] = {}
    async for e in _readable_events(db, where):
        at = e.at
        category = SECURITY_ACTIONS[e.action]
        daily[(at.date().isoformat(), category)] += 1
        per_day[at.date()] = per_day.get(at.date(), 0) + 1
        for source_type, source in (("ip", e.ip), ("actor", e.actor_id)):
            if source is not None:
                seen = sources.setdefault((category, source_type, source), [0, at])
                seen[0] += 1
                seen[1] = max(seen[1], at)
        await out.add(
            "event",
            iso(at),
            at.date().isoformat(),
            category,
            e.action,
            e.result,
            e.actor_type,
            e.actor_id,
            e.ip,
            None,
            None,
            None,
        )
    for (day, category), count in sorted(daily.items()):
        await out.add("day", None, day, category, None, None, None, None, None, None, None, count)
    totals = Counter[str]()
    for (_day, category), count in daily.items():
        totals[category] += count
    top: dict[str, list[dict[str, Any]]] = {}
    for category in SECURITY_CATEGORIES:
        top[category] = []
        for source_type in ("ip", "actor"):
            ranked = sorted(
                (
                    (n, source, last)
                    for (c, t, source), (n, last) in sources.items()
                    if c == category and t == source_type
                ),
                key=lambda r: (-r[0], r[1]),
            )[:TOP_SOURCES]
            for n, source, last in ranked:
                await out.add(
                    "top_source",
                    iso_or_none(last),
                    None,
                    category,
                    None,
                    None,
                    None,
                    None,
                    None,
                    source_type,
                    source,
                    n,
                )
                if source_type == "ip":
                    top[category].append({"ip": source, "count": n})
    # every refusal by the admission step is counted in usage_daily; the audit log may keep fewer of them
    refused = (
        await db.execute(
            sa_select(func.coalesce(func.sum(col(UsageDaily.rate_limited)), 0)).where(
                tenant_filter(UsageDaily, org.id),
                col(UsageDaily.subject_type) == "total",
                col(UsageDaily.day) >= period.first_day,
                col(UsageDaily.day) <= period.last_day,
            )
        )
    ).scalar_one()
    risk = await build_risk(db, org.id, period, out)
    return {
        "events": sum(totals.values()),
        "rateLimitedRequests": int(refused),
        "byCategory": {c: totals[c] for c in SECURITY_CATEGORIES},
        "topSources": {c: top[c][:3] for c in SECURITY_CATEGORIES},
        "risk": risk,
        "eventsPerDay": chart("Security events per day", "events", day_bars(per_day, period)),
        "chart": chart(
            "Security events by category",
            "events",
            [
                # one colour: the bars' lengths are the data (a colour for "has events" would say it twice)
                {"label": c.replace("_", " "), "value": totals[c], "tone": "normal"}
                for c in SECURITY_CATEGORIES
            ],
            axis="Category",
        ),
    }
