"""What the reports share: their columns and vocabularies, the period, the writer, the keyset reader and
the chart helpers (docs/reports.md lists the columns). Each kind's builder lives in its own module
(`resolvers.report_usage`, `report_security`, `report_access`, `report_compliance`); `resolvers.reports`
maps the kinds to them.

Each builder reads the organization's rows for the period in keyset chunks and hands every row to the
writer as it goes; what it keeps in memory is bounded by the number of days, members, keys and
categories, never by the number of events. It returns the report's summary: a few totals and the
data of its chart.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import ColumnElement, and_, or_
from sqlalchemy.ext.asyncio import AsyncSession

from store.models import ApiKey, Organization

Cell = str | int | bool | None
CHUNK = 500
TOP_SOURCES = 10
MAX_CHART_BARS = 60
DORMANT_DAYS = 90
KEY_ROTATION_DAYS = 90
ACCESS_REVIEW_DAYS = 90

COLUMNS: dict[str, tuple[str, ...]] = {
    "USAGE": (
        "section",
        "day",
        "subject_type",
        "subject_id",
        "subject_name",
        "requests",
        "cost",
        "rate_limited",
        "requests_limit",
        "quota_used_percent",
    ),
    "SECURITY": (
        "section",
        "at",
        "day",
        "category",
        "action",
        "result",
        "actor_type",
        "actor_id",
        "ip",
        "source_type",
        "source",
        "count",
    ),
    "ACCESS": (
        "section",
        "subject_type",
        "subject_id",
        "name",
        "role",
        "permissions",
        "scopes",
        "mfa_enabled",
        "last_login_at",
        "created_at",
        "age_days",
        "last_used_at",
        "revoked_at",
        "status",
        "count",
    ),
    "COMPLIANCE": ("section", "check", "controls", "status", "subject_type", "subject_id", "name", "detail"),
}

# audit action -> SECURITY category
SECURITY_ACTIONS: dict[str, str] = {
    "authn_login_fail": "failed_login",
    "authn_sso_fail": "failed_login",
    "authn_mfa_fail": "failed_login",
    "authn_login_lock": "lockout",
    "authn_token_reuse": "token_reuse",
    "authz_fail": "denied_permission",
    "authz_cross_tenant": "denied_permission",
    "apikey_use_denied": "denied_permission",
    "session_use_denied": "denied_permission",
    "excess_rate_limit_exceeded": "rate_limited",
}
SECURITY_CATEGORIES = ("failed_login", "lockout", "token_reuse", "denied_permission", "rate_limited")

# check -> (SOC 2 criteria, ISO/IEC 27001:2022 Annex A controls)
CONTROLS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "access_review": (("CC6.2", "CC6.3"), ("A.5.15", "A.5.18")),
    "mfa_coverage": (("CC6.1",), ("A.5.17",)),
    "dormant_accounts": (("CC6.2",), ("A.5.16", "A.5.18")),
    "key_rotation_age": (("CC6.1",), ("A.5.17",)),
    "audit_chain": (("CC7.2",), ("A.8.15",)),
    # the organization's security policy (resolvers/report_policy.py)
    "password_policy": (("CC6.1",), ("A.5.17",)),
    "session_policy": (("CC6.1",), ("A.8.5",)),
    "mfa_policy": (("CC6.1",), ("A.8.5",)),
    "network_policy": (("CC6.6",), ("A.8.20",)),
}


def iso(value: datetime) -> str:
    """A time as the reports write it: UTC ISO 8601 with a `Z` (microseconds only when there are some)."""
    return value.astimezone(UTC).isoformat().removesuffix("+00:00") + "Z"


def iso_or_none(value: datetime | None) -> str | None:
    return iso(value) if value is not None else None


@dataclass(frozen=True, slots=True)
class Period:
    start: datetime
    end: datetime
    now: datetime
    # the gateway's signing keys: what checks the checkpoints a pruned audit chain starts at
    keys: Any = None

    @property
    def first_day(self) -> date:
        return self.start.date()

    @property
    def last_day(self) -> date:
        """The last UTC day that begins before the end of the period."""
        return (self.end - timedelta(microseconds=1)).date()


class Writer(Protocol):
    async def add(self, *values: Cell) -> None: ...


Builder = Callable[[AsyncSession, Organization, Period, Writer], Awaitable[dict[str, Any]]]


def after(keys: Sequence[Any], values: Sequence[Any]) -> ColumnElement[bool]:
    """`(k1, k2, …) > (v1, v2, …)` spelled out, so each value binds with its column's type."""
    terms = []
    for i, key in enumerate(keys):
        equal = [keys[j] == values[j] for j in range(i)]
        terms.append(and_(*equal, key > values[i]))
    return or_(*terms)


async def keyset(db: AsyncSession, stmt: Any, keys: Sequence[Any]) -> AsyncIterator[Any]:
    """Every row of `stmt` in `keys` order, read CHUNK rows at a time; `stmt` selects the keys first."""
    last: Sequence[Any] | None = None
    while True:
        page = stmt if last is None else stmt.where(after(keys, last))
        rows = (await db.execute(page.order_by(*keys).limit(CHUNK))).all()
        for row in rows:
            yield row
        if len(rows) < CHUNK:
            return
        last = tuple(rows[-1])[: len(keys)]


def percent(part: int, whole: int | None) -> str | None:
    """`part` of `whole` as a percentage with two decimals, in integers (the same text on every run)."""
    if not whole:
        return None
    basis = part * 10_000 // whole
    return f"{basis // 100}.{basis % 100:02d}"


def day_bars(totals: dict[date, int], period: Period) -> list[dict[str, Any]]:
    """At most MAX_CHART_BARS bars over the period's days, each summing an equal run of days."""
    days = (period.last_day - period.first_day).days + 1
    width = max(1, -(-days // MAX_CHART_BARS))
    bars = []
    for i in range(0, days, width):
        first = period.first_day + timedelta(days=i)
        last = min(first + timedelta(days=width - 1), period.last_day)
        value = sum(totals.get(first + timedelta(days=d), 0) for d in range((last - first).days + 1))
        label = first.isoformat() if first == last else f"{first.isoformat()} to {last.isoformat()}"
        bars.append({"label": label, "value": value, "tone": "normal", "start": first.isoformat(), "days": width})
    return bars


def chart(title: str, unit: str, bars: list[dict[str, Any]], axis: str = "day") -> dict[str, Any]:
    """A chart's data: `axis` is "day" for bars made by `day_bars` (drawn along a time axis), else the
    name of what its bars are (the category axis' title)."""
    return {"title": title, "unit": unit, "axis": axis, "bars": bars}


def age_days(since: datetime, now: datetime) -> int:
    return max(0, (now - since).days)


def key_status(key: ApiKey, now: datetime) -> str:
    if key.revoked_at is not None:
        return "revoked"
    if key.expires_at is not None and key.expires_at <= now:
        return "expired"
    return "active"
