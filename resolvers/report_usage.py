"""The USAGE report: requests, cost and refusals per day, in total and per API key, member and anonymous
caller, read from `usage_daily` (docs/reports.md)."""

from __future__ import annotations

from collections import Counter
from datetime import date
from typing import Any

from sqlalchemy import and_
from sqlalchemy import select as sa_select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from authz.plans import QuotaResource, effective_limits
from resolvers.report_builders import TOP_SOURCES, Period, Writer, chart, day_bars, keyset, percent
from store.models import ApiKey, Membership, Organization, UsageDaily, User
from store.scoping import tenant_filter


async def _key_names(db: AsyncSession, org_id: str) -> dict[str, str]:
    rows = await db.execute(sa_select(col(ApiKey.id), col(ApiKey.name)).where(tenant_filter(ApiKey, org_id)))
    return {i: n for i, n in rows.all()}


async def _member_emails(db: AsyncSession, org_id: str) -> dict[str, str]:
    rows = await db.execute(
        sa_select(col(User.id), col(User.email))
        .join(Membership, col(Membership.user_id) == col(User.id))
        .where(tenant_filter(Membership, org_id))
    )
    return {i: e for i, e in rows.all()}


USAGE_SECTIONS = {"api_key": "api_key", "user": "member", "anonymous": "anonymous"}


async def build_usage(db: AsyncSession, org: Organization, period: Period, out: Writer) -> dict[str, Any]:
    limit = effective_limits(org.plan, org.limit_overrides)[QuotaResource.REQUESTS_PER_DAY]
    in_period = and_(
        tenant_filter(UsageDaily, org.id),
        col(UsageDaily.day) >= period.first_day,
        col(UsageDaily.day) <= period.last_day,
    )
    per_day: dict[date, int] = {}
    totals = Counter[str]()
    peak: tuple[int, str] | None = None
    days_over = 0
    stmt = sa_select(
        col(UsageDaily.day), col(UsageDaily.requests), col(UsageDaily.cost), col(UsageDaily.rate_limited)
    ).where(in_period, col(UsageDaily.subject_type) == "total")
    async for day, requests, cost, limited in keyset(db, stmt, [col(UsageDaily.day)]):
        per_day[day] = requests
        totals.update(requests=requests, cost=cost, rate_limited=limited)
        if peak is None or requests > peak[0]:
            peak = (requests, day.isoformat())
        if limit is not None and requests > limit:
            days_over += 1
        await out.add("day", day.isoformat(), "total", "", "", requests, cost, limited, limit, percent(requests, limit))
    names = {"api_key": await _key_names(db, org.id), "user": await _member_emails(db, org.id)}
    subjects: dict[tuple[str, str], Counter[str]] = {}
    keys = [col(UsageDaily.subject_type), col(UsageDaily.subject_id), col(UsageDaily.day)]
    per_subject = sa_select(*keys, col(UsageDaily.requests), col(UsageDaily.cost), col(UsageDaily.rate_limited)).where(
        in_period, col(UsageDaily.subject_type).in_(list(USAGE_SECTIONS))
    )
    async for kind, subject, day, requests, cost, limited in keyset(db, per_subject, keys):
        name = names.get(kind, {}).get(subject, "")
        subjects.setdefault((kind, subject), Counter()).update(requests=requests, cost=cost)
        await out.add(USAGE_SECTIONS[kind], day.isoformat(), kind, subject, name, requests, cost, limited, None, None)

    def top(kind: str) -> list[dict[str, Any]]:
        ranked = sorted(
            ((c["requests"], c["cost"], s) for (k, s), c in subjects.items() if k == kind),
            key=lambda t: (-t[0], -t[1], t[2]),
        )[:TOP_SOURCES]
        return [{"id": s, "name": names.get(kind, {}).get(s, ""), "requests": r, "cost": c} for r, c, s in ranked]

    return {
        "requests": totals["requests"],
        "cost": totals["cost"],
        "rateLimited": totals["rate_limited"],
        "requestsPerDayLimit": limit,
        "daysOverLimit": days_over,
        "peakDay": {"day": peak[1], "requests": peak[0]} if peak else None,
        "topApiKeys": top("api_key"),
        "topMembers": top("user"),
        "chart": chart("Requests per day", "requests", day_bars(per_day, period)),
    }
