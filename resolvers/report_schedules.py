"""Scheduled reports: a report kind generated daily, weekly or monthly for the period that just ended in the
schedule's time zone, mailed to members of the organization and announced to the organization's webhooks
it names (`resolvers/report_webhooks.py`; docs/reports.md, "Schedules").

When it runs. A DAILY schedule runs every day at `hour` in its time zone, for the day before; WEEKLY on
Mondays at `hour`, for the week (Monday to Monday) before; MONTHLY on the first of the month at `hour`,
for the month before. The period's bounds are local midnights, converted to UTC.

Who runs it. Every gateway process runs a runner (`gateway/report_scheduler.py`); each due schedule is
claimed with one UPDATE that sets its lease (`claim`), so one process runs it while the lease holds. A
period is recorded in `report_schedule_runs`, unique per (schedule, period start), in the transaction that
generates its report: even two processes that both believed they held the schedule generate a period once.
After downtime, `next_run_at` lies in the past: each missed period is run, once, oldest first, until the
schedule is due again in the future.

The report is made by `resolvers.reports.generate_report`, as the `generateReport` mutation makes one:
counted against REPORTS_PER_MONTH and priced by the audit entries it reads. A refusal (the month's quota
used up, a period beyond the plan's retention, the cost budget) is recorded as a `refused` run and the
schedule moves on to its next period. Its audit entry names the schedule as a `system` actor.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from functools import cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from sqlalchemy import delete, func, or_, update
from sqlalchemy import select as sa_select
from sqlalchemy.exc import IntegrityError
from sqlmodel import col

from authz import Permission, Principal, PrincipalKind
from authz.errors import BadUserInput, ErrorCode, Forbidden, GatewayError, NotFound
from resolvers.common import tenant_of
from resolvers.deps import RequestContext, Services
from resolvers.mail import queue_mail
from resolvers.report_builders import iso
from resolvers.report_webhooks import check_webhooks, queue_report_ready
from resolvers.reports import KINDS, generate_report
from store.audit import AuditAction
from store.models import Membership, Organization, User, new_ordered_id
from store.reporting import ReportSchedule, ReportScheduleRun, emails_of, pack_recipients
from store.scoping import tenant_filter, tenant_select

log = logging.getLogger("portcullis.reports")

CADENCES = ("DAILY", "WEEKLY", "MONTHLY")
MAX_RECIPIENTS = 20
MAX_SCHEDULES = 50
SCHEDULE_NOT_FOUND = "Report schedule not found."


# -- when ----------------------------------------------------------------------------------------


@cache
def _zones() -> frozenset[str]:
    return frozenset(available_timezones())


def check_time_zone(name: str) -> ZoneInfo:
    """An IANA time zone by name ("Europe/Berlin", "UTC"); BAD_USER_INPUT for anything else."""
    if not name or len(name) > 64 or name not in _zones():
        raise BadUserInput("timeZone must be an IANA time zone name, such as Europe/Berlin or UTC", field="timeZone")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise BadUserInput("timeZone must be an IANA time zone name", field="timeZone") from None


def _local(day: date, hour: int, zone: ZoneInfo) -> datetime:
    return datetime(day.year, day.month, day.day, hour, tzinfo=zone).astimezone(UTC)


def _run_day(cadence: str, day: date) -> date:
    """The first day on or after `day` on which the cadence runs."""
    if cadence == "DAILY":
        return day
    if cadence == "WEEKLY":
        return day + timedelta(days=(7 - day.weekday()) % 7)
    if day.day == 1:
        return day
    return date(day.year + day.month // 12, day.month % 12 + 1, 1)


def next_run(cadence: str, zone: ZoneInfo, hour: int, after: datetime) -> datetime:
    """The first moment strictly after `after` at which the schedule runs (UTC)."""
    day = _run_day(cadence, after.astimezone(zone).date())
    while (moment := _local(day, hour, zone)) <= after:
        day = _run_day(cadence, day + timedelta(days=1))
    return moment


def period_for(cadence: str, zone: ZoneInfo, run_at: datetime) -> tuple[datetime, datetime]:
    """The period a run at `run_at` reports on: the day, week or month that ended at the local midnight
    that began the run's day."""
    end_day = run_at.astimezone(zone).date()
    if cadence == "DAILY":
        start_day = end_day - timedelta(days=1)
    elif cadence == "WEEKLY":
        start_day = end_day - timedelta(days=7)
    else:
        start_day = date(end_day.year - (end_day.month == 1), (end_day.month - 2) % 12 + 1, 1)
    return _local(start_day, 0, zone), _local(end_day, 0, zone)


# -- managing schedules ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ScheduleInput:
    kind: str
    cadence: str
    time_zone: str
    hour: int
    recipients: list[str]
    webhook_ids: list[str] = field(default_factory=list)


async def _members_among(ctx: RequestContext, org_id: str, emails: list[str]) -> set[str]:
    """Which of `emails` (lower-cased) belong to members of the organization."""
    db = await ctx.db()
    rows = await db.execute(
        sa_select(func.lower(col(User.email)))
        .join(Membership, col(Membership.user_id) == col(User.id))
        .where(tenant_filter(Membership, org_id), func.lower(col(User.email)).in_(emails))
    )
    return {str(e) for e in rows.scalars().all()}


def _check_input(given: ScheduleInput) -> tuple[ZoneInfo, list[str]]:
    if given.kind not in KINDS:
        raise BadUserInput(f"kind must be one of {', '.join(KINDS)}", field="kind")
    if given.cadence not in CADENCES:
        raise BadUserInput(f"cadence must be one of {', '.join(CADENCES)}", field="cadence")
    zone = check_time_zone(given.time_zone)
    if not 0 <= given.hour <= 23:
        raise BadUserInput("hourOfDay must be between 0 and 23", field="hourOfDay")
    emails = list(dict.fromkeys(e.strip().lower() for e in given.recipients))
    if len(emails) > MAX_RECIPIENTS or not (emails or given.webhook_ids):
        raise BadUserInput(
            f"recipients must name 1 to {MAX_RECIPIENTS} members (or none when webhookIds names a webhook)",
            field="recipients",
        )
    return zone, emails


async def schedule_report(ctx: RequestContext, given: ScheduleInput) -> ReportSchedule:
    """A new schedule of the caller's organization; its recipients must be members (by email), its
    webhooks the organization's (NOT_FOUND otherwise)."""
    org_id = tenant_of(ctx.principal)
    # the ids first: one of another tenant answers NOT_FOUND whatever else the input holds
    webhook_ids = await check_webhooks(ctx, org_id, given.webhook_ids)
    zone, emails = _check_input(given)
    members = await _members_among(ctx, org_id, emails)
    outsiders = [e for e in emails if e not in members]
    if outsiders:
        raise BadUserInput(
            "Every recipient must be a member of the organization.", field="recipients", notMembers=outsiders
        )
    db = await ctx.db()
    count = (await db.execute(sa_select(func.count()).where(tenant_filter(ReportSchedule, org_id)))).scalar_one()
    if count >= MAX_SCHEDULES:
        raise BadUserInput(f"An organization has at most {MAX_SCHEDULES} report schedules.", field="kind")
    now = ctx.services.now()
    row = ReportSchedule(
        organization_id=org_id,
        kind=given.kind,
        cadence=given.cadence,
        time_zone=given.time_zone,
        hour=given.hour,
        recipients=pack_recipients(emails, webhook_ids),
        created_by=ctx.principal.subject_id if ctx.principal.kind is PrincipalKind.USER else None,
        created_at=now,
        next_run_at=next_run(given.cadence, zone, given.hour, now),
    )
    db.add(row)
    await db.flush()
    ctx.audit(
        AuditAction.REPORT_SCHEDULED,
        resource_type="report_schedule",
        resource_id=row.id,
        details={
            "kind": row.kind,
            "cadence": row.cadence,
            "timeZone": row.time_zone,
            "hourOfDay": row.hour,
            "recipients": len(emails),
            "webhooks": webhook_ids,
            "nextRunAt": iso(row.next_run_at),
        },
    )
    return row


async def delete_report_schedule(ctx: RequestContext, schedule_id: str) -> bool:
    org_id = tenant_of(ctx.principal)
    if not schedule_id or len(schedule_id) > 36:
        raise NotFound(SCHEDULE_NOT_FOUND)
    db = await ctx.db()
    row = (
        await db.execute(tenant_select(ReportSchedule, org_id).where(col(ReportSchedule.id) == schedule_id))
    ).scalar_one_or_none()
    if row is None:
        raise NotFound(SCHEDULE_NOT_FOUND)
    # the runs record what was sent; they go with the schedule (the reports themselves stay)
    await db.execute(
        delete(ReportScheduleRun).where(
            tenant_filter(ReportScheduleRun, org_id), col(ReportScheduleRun.schedule_id) == row.id
        )
    )
    await db.delete(row)
    ctx.audit(
        AuditAction.REPORT_SCHEDULE_DELETED,
        resource_type="report_schedule",
        resource_id=row.id,
        details={"kind": row.kind, "cadence": row.cadence},
    )
    return True


async def list_schedules(ctx: RequestContext, organization_id: str) -> list[ReportSchedule]:
    org_id = tenant_of(ctx.principal)
    if organization_id != org_id:
        raise Forbidden("You are not allowed to access this field.", requiredScopes=[["reports:read"]])
    stmt = tenant_select(ReportSchedule, org_id).order_by(col(ReportSchedule.created_at), col(ReportSchedule.id))
    return list((await (await ctx.db()).execute(stmt)).scalars().all())


# -- running them --------------------------------------------------------------------------------


async def due_schedules(services: Services, now: datetime, limit: int) -> list[str]:
    """Ids of schedules due at `now` whose lease (if any) has lapsed, the most overdue first.

    # tenant-scope: the runner serves every tenant; each schedule then runs in its own organization
    """
    async with services.db.transaction() as db:
        rows = await db.execute(
            sa_select(col(ReportSchedule.id))
            .where(
                col(ReportSchedule.next_run_at) <= now,
                or_(col(ReportSchedule.lease_until).is_(None), col(ReportSchedule.lease_until) < now),
            )
            .order_by(col(ReportSchedule.next_run_at), col(ReportSchedule.id))
            .limit(limit)
        )
        return list(rows.scalars())


async def claim(services: Services, schedule_id: str, now: datetime, lease: timedelta) -> ReportSchedule | None:
    """The schedule, leased to this runner until now + `lease`, if it is still due and no lease holds it:
    one UPDATE, which the database runs for one process at a time, so one of two sees a row count of 1.

    # tenant-scope: claimed by id for the runner, which serves every tenant
    """
    async with services.db.transaction() as db:
        result = await db.execute(
            update(ReportSchedule)
            .where(
                col(ReportSchedule.id) == schedule_id,
                col(ReportSchedule.next_run_at) <= now,
                or_(col(ReportSchedule.lease_until).is_(None), col(ReportSchedule.lease_until) < now),
            )
            .values(lease_until=now + lease)
        )
        if result.rowcount != 1:  # type: ignore[attr-defined]
            return None
        return await db.get(ReportSchedule, schedule_id)


def _context(services: Services, schedule: ReportSchedule) -> RequestContext:
    """The generation's context: the schedule's organization, allowed to generate and read reports, its
    audit entries naming the schedule as a `system` actor."""
    principal = Principal(
        kind=PrincipalKind.USER,
        subject_id=schedule.created_by,
        organization_id=schedule.organization_id,
        permissions=frozenset({Permission.REPORTS_GENERATE.value, Permission.REPORTS_READ.value}),
        request_id=new_ordered_id(),
    )
    ctx = RequestContext(services, principal)
    ctx.operator, ctx.source = f"report_schedule:{schedule.id}", "report_schedule"
    return ctx


async def _advance(ctx: RequestContext, schedule: ReportSchedule, run_at: datetime, now: datetime) -> None:
    """Move the schedule past the period it ran for (only if no one else has) and release its lease."""
    following = next_run(schedule.cadence, check_time_zone(schedule.time_zone), schedule.hour, run_at)
    await (await ctx.db()).execute(
        update(ReportSchedule)
        .where(
            tenant_filter(ReportSchedule, schedule.organization_id),
            col(ReportSchedule.id) == schedule.id,
            col(ReportSchedule.next_run_at) == run_at,
        )
        .values(next_run_at=following, last_run_at=now, lease_until=None)
    )


def _run(
    schedule: ReportSchedule, start: datetime, end: datetime, status: str, detail: str | None = None
) -> ReportScheduleRun:
    return ReportScheduleRun(
        schedule_id=schedule.id,
        organization_id=schedule.organization_id,
        period_start=start,
        period_end=end,
        status=status,
        detail=detail,
    )


async def run_schedule(services: Services, schedule: ReportSchedule, now: datetime) -> str:
    """Generate the period `schedule.next_run_at` reports on, mail it and queue its webhooks' messages, then
    advance the schedule; what became of it: "generated", "refused" (recorded, moved on) or "duplicate"
    (the period was run already)."""
    run_at = schedule.next_run_at
    start, end = period_for(schedule.cadence, check_time_zone(schedule.time_zone), run_at)
    ctx = _context(services, schedule)
    try:
        async with ctx.unit_of_work():
            db = await ctx.db()
            run = _run(schedule, start, end, "generated")
            db.add(run)
            await db.flush()  # the period's unique key: a second runner stops here
            report = await generate_report(ctx, schedule.kind, start, end)
            run.report_id = report.id
            await _mail(ctx, schedule, report.id, start, end)
            await queue_report_ready(ctx, schedule, report, _base_url(ctx))
            await _advance(ctx, schedule, run_at, now)
        return "generated"
    except IntegrityError:
        outcome, detail = "duplicate", None
    except GatewayError as exc:
        if exc.code == ErrorCode.RATE_LIMITED:
            return "deferred"  # the cost budget refills: run again once the lease lapses
        outcome, detail = "refused", f"{exc.code.value}: {exc.message}"[:500]
    ctx = _context(services, schedule)
    try:
        async with ctx.unit_of_work():
            if detail is not None:
                (await ctx.db()).add(_run(schedule, start, end, "refused", detail=detail))
                await (await ctx.db()).flush()
            await _advance(ctx, schedule, run_at, now)
    except IntegrityError:
        async with ctx.unit_of_work():
            await _advance(ctx, schedule, run_at, now)
    log.info(
        "report_schedule_%s",
        outcome,
        extra={"schedule_id": schedule.id, "period_start": iso(start), "detail": detail},
    )
    return outcome


def _base_url(ctx: RequestContext) -> str:
    mailer = ctx.services.mail
    return ctx.services.public_url or (mailer.app_url if mailer is not None else "")


async def _mail(ctx: RequestContext, schedule: ReportSchedule, report_id: str, start: datetime, end: datetime) -> None:
    """A message with the report's links to each recipient who is still a member (others are skipped)."""
    mailer = ctx.services.mail
    if mailer is None:
        return
    db = await ctx.db()
    emails = emails_of(schedule)
    if not emails:
        return
    members = await _members_among(ctx, schedule.organization_id, emails)
    org = await db.get(Organization, schedule.organization_id)
    zone = check_time_zone(schedule.time_zone)
    first, last = start.astimezone(zone).date(), (end.astimezone(zone) - timedelta(days=1)).date()
    period = f"{first:%d %B %Y}" if first == last else f"{first:%d %B %Y} to {last:%d %B %Y}"
    period += f" ({schedule.time_zone})"
    base = f"{(ctx.services.public_url or mailer.app_url).rstrip('/')}/reports/{report_id}"
    for email in emails:
        if email not in members:
            continue
        await queue_mail(
            db,
            mailer,
            to=email,
            template="report_ready",
            variables={
                "organization_name": org.name if org is not None else "",
                "kind": schedule.kind.title(),
                "cadence": schedule.cadence.lower(),
                "period": period,
                "html_url": f"{base}.html",
                "pdf_url": f"{base}.pdf",
                "xlsx_url": f"{base}.xlsx",
                "csv_url": f"{base}.csv",
            },
            organization_id=schedule.organization_id,
            now=ctx.services.now(),
        )
    ctx.after_commit.append(mailer.wake_after_commit)
