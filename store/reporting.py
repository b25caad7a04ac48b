"""Tables of scheduled reports: each organization's schedules and the periods they have run for.

Registered on `SQLModel.metadata` by `store.models`, which imports this module last.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, Column, Index, UniqueConstraint
from sqlmodel import Field, SQLModel

from store.columns import _ts, new_id, utcnow


class ReportSchedule(SQLModel, table=True):
    """A report generated on a cadence for the period that just ended in `time_zone`, mailed to
    `recipients` (members' emails) and announced to the organization's webhooks it names (kept in the
    same list as `webhook:<id>`: `emails_of` and `webhook_ids_of` read them apart). `next_run_at` is the
    next moment it is due (UTC); a runner holds `lease_until` while it generates one period."""

    __tablename__ = "report_schedules"
    __table_args__ = (Index("ix_report_schedules_next_run_at", "next_run_at"),)

    id: str = Field(default_factory=new_id, primary_key=True, max_length=36)
    organization_id: str = Field(foreign_key="organizations.id", index=True, max_length=36)
    kind: str = Field(max_length=20)
    cadence: str = Field(max_length=10)
    time_zone: str = Field(max_length=64)
    hour: int = Field(default=6)
    recipients: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    created_by: str | None = Field(default=None, foreign_key="users.id", max_length=36)
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts())
    next_run_at: datetime = Field(sa_column=_ts())
    last_run_at: datetime | None = Field(default=None, sa_column=_ts(nullable=True))
    lease_until: datetime | None = Field(default=None, sa_column=_ts(nullable=True))


WEBHOOK_RECIPIENT = "webhook:"


def pack_recipients(emails: list[str], webhook_ids: list[str]) -> list[str]:
    """The `recipients` column of a schedule: its emails, then its webhooks (an email always has an `@`)."""
    return [*emails, *(WEBHOOK_RECIPIENT + w for w in webhook_ids)]


def emails_of(schedule: ReportSchedule) -> list[str]:
    return [r for r in schedule.recipients if not r.startswith(WEBHOOK_RECIPIENT)]


def webhook_ids_of(schedule: ReportSchedule) -> list[str]:
    return [r.removeprefix(WEBHOOK_RECIPIENT) for r in schedule.recipients if r.startswith(WEBHOOK_RECIPIENT)]


class ReportScheduleRun(SQLModel, table=True):
    """One period a schedule has run for: unique per (schedule, period start), so no period is generated
    twice, whichever process runs it. `report_id` is empty when the generation was refused (`detail`)."""

    __tablename__ = "report_schedule_runs"
    __table_args__ = (UniqueConstraint("schedule_id", "period_start", name="uq_report_schedule_runs_period"),)

    id: str = Field(default_factory=new_id, primary_key=True, max_length=36)
    schedule_id: str = Field(foreign_key="report_schedules.id", max_length=36)
    organization_id: str = Field(foreign_key="organizations.id", index=True, max_length=36)
    period_start: datetime = Field(sa_column=_ts())
    period_end: datetime = Field(sa_column=_ts())
    report_id: str | None = Field(default=None, foreign_key="reports.id", max_length=36)
    status: str = Field(max_length=10)
    detail: str | None = Field(default=None, max_length=500)
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts())
