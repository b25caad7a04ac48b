"""Reports: generating one from the database for a time range, finding it again, downloading it.

A report's content is written once, at generation, into `report_rows` (one canonical JSON array per
row, in chunks) and never regenerated: ACCESS and COMPLIANCE describe the organization as it stood when
the report was made, which the live tables no longer show a week later. The downloads are built from
those stored lines, byte for byte the same each time, so the digests computed while writing them
(`digest`: sha256 of the JSON download, `csv_digest`: of the CSV download) verify against any later
download. Neither generation nor download holds more than one chunk of rows in memory.

Generation takes the organization's write lock first (`resolvers.quotas`), then counts the reports
created this UTC month: concurrent generations at the REPORTS_PER_MONTH boundary admit exactly the limit.
Then it is priced by the audit entries it will read (SECURITY: the period's security events; COMPLIANCE:
the whole chain, re-verified), taken from the tenant's cost budget before any is read (C-130).
"""

from __future__ import annotations

import csv
import hashlib
import io
from collections.abc import AsyncIterator, Sequence
from datetime import datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import func, insert
from sqlalchemy import select as sa_select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from authz.errors import BadUserInput, Forbidden, NotFound
from authz.plans import Plan, QuotaResource
from resolvers.audit import owning_tenants
from resolvers.budgets import charge_work
from resolvers.common import Page, PageEdge, tenant_of
from resolvers.deps import RequestContext
from resolvers.quotas import check_quota, lock_organization
from resolvers.report_access import build_access
from resolvers.report_builders import COLUMNS, SECURITY_ACTIONS, Builder, Cell, Period, iso
from resolvers.report_compliance import build_compliance
from resolvers.report_security import build_security
from resolvers.report_usage import build_usage
from resolvers.times import given_time
from store import audit
from store.audit import AuditAction, AuditResult
from store.cursors import CursorError, decode_position, encode_position
from store.models import AuditEntry, Organization, Report, ReportRow
from store.scoping import tenant_filter, tenant_select

REPORT_NOT_FOUND = "Report not found."
KINDS = ("USAGE", "SECURITY", "ACCESS", "COMPLIANCE")
BUILDERS: dict[str, Builder] = {
    "USAGE": build_usage,
    "SECURITY": build_security,
    "ACCESS": build_access,
    "COMPLIANCE": build_compliance,
}
# How far back a report may start, per plan (days before now): what each plan keeps of its usage and
# audit history for reporting. Documented in docs/reports.md.
REPORT_RETENTION_DAYS: dict[str, int] = {Plan.FREE: 30, Plan.STARTER: 90, Plan.PROFESSIONAL: 365, Plan.ENTERPRISE: 1095}
# `to` may lie a little ahead of the clock (a period "until the end of today")
MAX_FUTURE = timedelta(days=1)
CHUNK = 500
MAX_PAGE_SIZE = 100
CURSOR_VERSION = "r1"
# a CSV cell starting with one of these is read as a formula by spreadsheets (OWASP, "CSV Injection")
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def _dumps(value: Any) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


# -- rendering: the JSON and CSV downloads ---------------------------------------------------------


def json_head(report: Report, columns: Sequence[str]) -> bytes:
    meta = {
        "id": report.id,
        "kind": report.kind,
        "organizationId": report.organization_id,
        "from": iso(report.period_start),
        "to": iso(report.period_end),
        "createdAt": iso(report.created_at),
    }
    return b'{"report":' + _dumps(meta) + b',"columns":' + _dumps(list(columns)) + b',"rows":['


def json_tail(summary: dict[str, Any]) -> bytes:
    return b'],"summary":' + _dumps(summary) + b"}"


def csv_cell(value: Cell) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if value.startswith(FORMULA_PREFIXES):
        return "'" + value
    return value


def csv_line(values: Sequence[Cell]) -> bytes:
    out = io.StringIO()
    csv.writer(out).writerow([csv_cell(v) for v in values])
    return out.getvalue().encode()


def columns_of(kind: str) -> tuple[str, ...]:
    return COLUMNS[kind]


# -- generation -----------------------------------------------------------------------------------


class RowWriter:
    """Appends a report's rows in chunks, hashing the JSON and CSV downloads as they will be served."""

    def __init__(self, db: AsyncSession, report: Report, columns: Sequence[str]) -> None:
        self.db = db
        self.report = report
        self.width = len(columns)
        self.count = 0
        self._pending: list[dict[str, Any]] = []
        self._json = hashlib.sha256(json_head(report, columns))
        self._csv = hashlib.sha256(csv_line(list(columns)))

    async def add(self, *values: Cell) -> None:
        assert len(values) == self.width, values
        line = orjson.dumps(list(values))
        self._json.update(b"," + line if self.count else line)
        self._csv.update(csv_line(values))
        self._pending.append(
            {
                "report_id": self.report.id,
                "seq": self.count,
                "organization_id": self.report.organization_id,
                "line": line.decode(),
            }
        )
        self.count += 1
        if len(self._pending) >= CHUNK:
            await self.flush()

    async def flush(self) -> None:
        if self._pending:
            await self.db.execute(insert(ReportRow), self._pending)
            self._pending = []

    async def finish(self, summary: dict[str, Any]) -> None:
        await self.flush()
        summary = {**summary, "rowCount": self.count}
        self._json.update(json_tail(summary))
        self.report.summary = summary
        self.report.row_count = self.count
        self.report.digest = self._json.hexdigest()
        self.report.csv_digest = self._csv.hexdigest()
        self.db.add(self.report)
        await self.db.flush()


def _kind(kind: str) -> str:
    if kind not in KINDS:
        raise BadUserInput(f"kind must be one of {', '.join(KINDS)}", field="kind")
    return kind


def _check_range(start: datetime, end: datetime, now: datetime) -> None:
    if start >= end:
        raise BadUserInput("from must be before to", field="from")
    if end > now + MAX_FUTURE:
        raise BadUserInput("to must not lie more than a day ahead", field="to")


def check_retention(plan: str, start: datetime, now: datetime) -> None:
    days = REPORT_RETENTION_DAYS.get(plan, 0)
    if start < now - timedelta(days=days):
        raise BadUserInput(
            f"The {plan} plan keeps {days} days of history: from must be within them.", field="from", retentionDays=days
        )


async def generate_report(ctx: RequestContext, kind: str, start: datetime, end: datetime) -> Report:
    principal = ctx.principal
    org_id = tenant_of(principal)
    kind = _kind(kind)
    now = ctx.services.now()
    start, end = given_time(start), given_time(end)
    _check_range(start, end, now)
    db = await ctx.db()
    org = await lock_organization(db, org_id)
    check_retention(org.plan, start, now)
    await check_quota(db, org_id, QuotaResource.REPORTS_PER_MONTH, now=now)
    # priced by the audit entries it reads before it reads them (C-130); a refusal rolls the request back
    await charge_work(ctx, await audit_entries_read(db, org_id, kind, start, end), "generateReport")
    report = Report(
        organization_id=org_id,
        kind=kind,
        period_start=start,
        period_end=end,
        created_at=now,
        created_by_type=principal.kind.value,
        created_by_id=principal.subject_id,
        parameters={"kind": kind, "from": iso(start), "to": iso(end), "plan": org.plan},
        summary={},
        row_count=0,
        digest="",
    )
    db.add(report)
    await db.flush()
    writer = RowWriter(db, report, COLUMNS[kind])
    summary = await BUILDERS[kind](db, org, Period(start, end, now, ctx.services.tokens.keys), writer)
    await writer.finish(summary)
    ctx.audit(
        AuditAction.REPORT_GENERATED,
        resource_type="report",
        resource_id=report.id,
        details={"kind": kind, "from": iso(start), "to": iso(end), "rows": report.row_count, "digest": report.digest},
    )
    return report


async def audit_entries_read(db: AsyncSession, org_id: str, kind: str, start: datetime, end: datetime) -> int:
    """The audit entries generating a report of `kind` reads, counted without reading them: COMPLIANCE
    re-verifies the whole chain (its head row), SECURITY reads the period's security events (an index-only
    count). USAGE and ACCESS read rows bounded by days, members and keys, not by the audit log: 0."""
    if kind == "COMPLIANCE":
        return await audit.entries_to_verify(db, chains=[org_id])
    if kind != "SECURITY":
        return 0
    # a tenant's entries form its chain (store.audit): `chain` is its organization_id
    counted = (
        sa_select(func.count())
        .select_from(AuditEntry)
        .where(
            col(AuditEntry.chain) == org_id,
            col(AuditEntry.action).in_(list(SECURITY_ACTIONS)),
            col(AuditEntry.at) >= start,
            col(AuditEntry.at) < end,
        )
    )
    return int((await db.execute(counted)).scalar_one())


# -- reading --------------------------------------------------------------------------------------


def _check_id(report_id: str) -> None:
    if not report_id or len(report_id) > 36 or "\x00" in report_id:
        raise NotFound(REPORT_NOT_FOUND)


async def get_report(ctx: RequestContext, report_id: str) -> Report:
    """One of the caller's organization's reports; another tenant's id answers like a random one."""
    org_id = tenant_of(ctx.principal)
    _check_id(report_id)
    db = await ctx.db()
    row = (await db.execute(tenant_select(Report, org_id).where(col(Report.id) == report_id))).scalar_one_or_none()
    if row is None:
        raise NotFound(REPORT_NOT_FOUND)
    return row


ReportPage = Page[Report]


def encode_cursor(r: Report) -> str:
    return encode_position(CURSOR_VERSION, r.created_at, r.id)


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """The (created_at, id) position after which the next page starts; BAD_USER_INPUT if not ours."""
    try:
        return decode_position(cursor, CURSOR_VERSION)
    except CursorError:
        raise BadUserInput("after is not a valid cursor", field="after") from None


async def list_reports(
    ctx: RequestContext, organization_id: str, first: int = 20, after: str | None = None
) -> ReportPage:
    """One page of the caller's organization's reports, newest first (keyset on created_at, id)."""
    org_id = tenant_of(ctx.principal)
    if organization_id != org_id:
        raise Forbidden("You are not allowed to access this field.", requiredScopes=[["reports:read"]])
    if not 1 <= first <= MAX_PAGE_SIZE:
        raise BadUserInput(f"first must be between 1 and {MAX_PAGE_SIZE}", field="first")
    stmt = tenant_select(Report, org_id)
    if after is not None:
        at, ident = decode_cursor(after)
        stmt = stmt.where((col(Report.created_at) < at) | ((col(Report.created_at) == at) & (col(Report.id) < ident)))
    stmt = stmt.order_by(col(Report.created_at).desc(), col(Report.id).desc()).limit(first + 1)
    rows = list((await (await ctx.db()).execute(stmt)).scalars().all())
    edges = [PageEdge(encode_cursor(r), r) for r in rows[:first]]
    return Page(edges, len(rows) > first, edges[-1].cursor if edges else None)


async def audit_refused_download(ctx: RequestContext, report_id: str, *, forbidden: bool) -> None:
    """A download refused for want of `reports:read`, or for an id of another tenant (which the caller
    was told does not exist): recorded on its own, like the GraphQL refusals (schema.audit)."""
    if forbidden:
        await ctx.audit_now(
            AuditAction.AUTHZ_FAIL,
            result=AuditResult.DENIED,
            resource_type="report",
            details={"paths": ["GET /reports"], "requiredScopes": ["reports:read"]},
        )
        return
    owners = await owning_tenants(ctx, "report", report_id)
    if owners - {ctx.principal.organization_id}:
        await ctx.audit_now(
            AuditAction.AUTHZ_CROSS_TENANT, result=AuditResult.DENIED, resource_type="report", resource_id=report_id
        )


async def stored_lines(ctx: RequestContext, report: Report) -> AsyncIterator[list[str]]:
    """The report's rows in order, one chunk at a time, each chunk read on a short session of its own
    (a slow download holds no connection between chunks)."""
    last = -1
    while True:
        async with ctx.services.db.session() as db:
            lines = list(
                (
                    await db.execute(
                        sa_select(col(ReportRow.line))
                        .where(
                            tenant_filter(ReportRow, report.organization_id),
                            col(ReportRow.report_id) == report.id,
                            col(ReportRow.seq) > last,
                        )
                        .order_by(col(ReportRow.seq))
                        .limit(CHUNK)
                    )
                )
                .scalars()
                .all()
            )
        if not lines:
            return
        yield lines
        last += len(lines)
        if len(lines) < CHUNK:
            return


async def json_download(ctx: RequestContext, report: Report) -> AsyncIterator[bytes]:
    yield json_head(report, columns_of(report.kind))
    first = True
    async for lines in stored_lines(ctx, report):
        chunk = ",".join(lines).encode()
        yield chunk if first else b"," + chunk
        first = False
    yield json_tail(report.summary)


async def csv_download(ctx: RequestContext, report: Report) -> AsyncIterator[bytes]:
    yield csv_line(list(columns_of(report.kind)))
    async for lines in stored_lines(ctx, report):
        yield b"".join(csv_line(orjson.loads(line)) for line in lines)


async def organization_name(ctx: RequestContext, report: Report) -> str:
    """The name of the report's organization, as it is now (the page and the PDF carry it)."""
    async with ctx.services.db.session() as db:
        org = await db.get(Organization, report.organization_id)
    return org.name if org is not None else ""


async def first_rows(ctx: RequestContext, report: Report, limit: int) -> list[list[Cell]]:
    """At most `limit` of the report's rows, in order (for the page and the PDF, which hold them in memory)."""
    rows: list[list[Cell]] = []
    async for lines in stored_lines(ctx, report):
        rows.extend(orjson.loads(line) for line in lines[: limit - len(rows)])
        if len(rows) >= limit:
            break
    return rows


async def all_rows(ctx: RequestContext, report: Report) -> AsyncIterator[list[Cell]]:
    async for lines in stored_lines(ctx, report):
        for line in lines:
            yield orjson.loads(line)
