"""`GET /reports/{id}.csv|.json|.html|.pdf|.xlsx`: a generated report as data, a spreadsheet, or a page
with its chart (and that page printed to PDF, gateway.report_files).

Authorized like the GraphQL `report` field: a credential (401 without one), `reports:read` (403), and
the caller's own organization (another tenant's id is 404 NOT_FOUND, like an id that does not exist).
The CSV and JSON downloads stream from the stored rows chunk by chunk; each carries its sha256 in
`Repr-Digest` (RFC 9530), the same value the report recorded when it was generated.

The page is HTML with an inline SVG chart drawn here: no script, every text escaped, and a CSP that
allows nothing but its one stylesheet (by hash).
"""

from __future__ import annotations

import base64
import hashlib
import logging
from collections.abc import Sequence
from datetime import UTC, time, timedelta
from html import escape
from typing import Any

import anyio.to_thread
import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from authz import Permission, Principal, anonymous
from authz.errors import NotFound
from gateway.middleware import graphql_error
from gateway.report_chart import draw_chart
from gateway.report_files import build_pdf, build_xlsx, typed
from resolvers.deps import RequestContext, Services
from resolvers.report_builders import iso
from resolvers.reports import (
    all_rows,
    audit_refused_download,
    columns_of,
    csv_download,
    first_rows,
    get_report,
    json_download,
    organization_name,
)
from store.models import Report

log = logging.getLogger("portcullis.reports")

FORMATS = {
    "csv": "text/csv; charset=utf-8",
    "json": "application/json",
    "html": "text/html; charset=utf-8",
    "pdf": "application/pdf",
    "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
}
# the page and the PDF hold this many rows at most (in memory, and on paper); the other formats hold all
MAX_PAGE_ROWS = 2000
STYLE = (
    "body{font:15px/1.45 system-ui,sans-serif;margin:2rem auto;max-width:56rem;color:#1d2733;padding:0 1rem}"
    "h1{font-size:1.4rem}h2{font-size:1.1rem;margin-top:2rem}table{border-collapse:collapse;margin:.5rem 0}"
    "td,th{border-bottom:1px solid #d5dbe3;padding:.25rem .75rem .25rem 0;text-align:left;vertical-align:top}"
    "code{font-size:.85em;word-break:break-all}.pass{color:#17663a}.attention{color:#a34a00}"
    "figure{margin:1.5rem 0}h3{font-size:1rem;margin:1.2rem 0 .3rem}table.rows{font-size:.8rem}"
)
PAGE_CSP = (
    "default-src 'none'; style-src 'sha256-"
    + base64.b64encode(hashlib.sha256(STYLE.encode()).digest()).decode()
    + "'; img-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


def _error(status: int, message: str, code: str, **extensions: Any) -> Response:
    headers = {"www-authenticate": 'Bearer realm="portcullis"'} if status == 401 else None
    return Response(
        orjson.dumps(graphql_error(message, code, **extensions)),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )


def _repr_digest(hex_digest: str) -> str:
    return "sha-256=:" + base64.b64encode(bytes.fromhex(hex_digest)).decode() + ":"


class ReportDownloads:
    def __init__(self, services: Services) -> None:
        self.services = services

    async def download(self, request: Request) -> Response:
        name: str = request.path_params["name"]
        report_id, _, fmt = name.rpartition(".")
        if fmt not in FORMATS:
            return _error(404, "Not found.", "NOT_FOUND")
        state = request.scope.get("state", {})
        principal: Principal = state.get("principal") or anonymous(state.get("client_ip"), state.get("request_id"))
        if not principal.is_authenticated:
            return _error(401, "Invalid or missing credentials.", "UNAUTHENTICATED")
        ua = request.headers.get("user-agent")
        ctx = RequestContext.for_route(self.services, principal, user_agent=ua[:256] if ua else None)
        if Permission.REPORTS_READ not in principal.effective_permissions:
            await self._audit(ctx, report_id, forbidden=True)
            return _error(
                403,
                "You are not allowed to read reports.",
                "FORBIDDEN",
                requiredScopes=[[Permission.REPORTS_READ.value]],
            )
        try:
            async with ctx.unit_of_work(writes=False):
                report = await get_report(ctx, report_id)
        except NotFound as exc:
            await self._audit(ctx, report_id, forbidden=False)
            return _error(404, exc.message, "NOT_FOUND")
        filename = f"report-{report.kind.lower()}-{report.id}.{fmt}"
        attachment = {"content-disposition": f'attachment; filename="{filename}"'}
        if fmt == "html":
            page = render_page(
                report, await organization_name(ctx, report), await first_rows(ctx, report, MAX_PAGE_ROWS)
            )
            return Response(page, media_type=FORMATS[fmt], headers={"content-security-policy": PAGE_CSP})
        if fmt == "pdf":
            return Response(await pdf_file(ctx, report), media_type=FORMATS[fmt], headers=attachment)
        if fmt == "xlsx":
            return Response(await xlsx_file(ctx, report), media_type=FORMATS[fmt], headers=attachment)
        stream, digest = (json_download, report.digest) if fmt == "json" else (csv_download, report.csv_digest)
        headers = dict(attachment)
        if digest:
            headers["repr-digest"] = _repr_digest(digest)
        return StreamingResponse(stream(ctx, report), media_type=FORMATS[fmt], headers=headers)

    async def _audit(self, ctx: RequestContext, report_id: str, *, forbidden: bool) -> None:
        try:
            await audit_refused_download(ctx, report_id, forbidden=forbidden)
        except Exception:
            # the refusal stands either way; a lost entry is logged, never turned into a 500
            log.exception(
                "audit entry for a refused download not written", extra={"request_id": ctx.principal.request_id}
            )


# -- the files ---------------------------------------------------------------------------------------


async def pdf_file(ctx: RequestContext, report: Report) -> bytes:
    """The page printed to PDF, with the CSV download attached (gateway.report_files)."""
    organization = await organization_name(ctx, report)
    page = render_page(report, organization, await first_rows(ctx, report, MAX_PAGE_ROWS), links=False)
    csv_bytes = b"".join([chunk async for chunk in csv_download(ctx, report)])
    name = f"report-{report.kind.lower()}-{report.id}.csv"
    return await anyio.to_thread.run_sync(build_pdf, page, name, csv_bytes)


async def xlsx_file(ctx: RequestContext, report: Report) -> bytes:
    meta: list[tuple[str, Any]] = [
        ("organization", await organization_name(ctx, report)),
        ("kind", report.kind),
        ("from", typed("at", iso(report.period_start))),
        ("to", typed("at", iso(report.period_end))),
        ("generated", typed("at", iso(report.created_at))),
        ("rows", report.row_count),
        ("digest (JSON)", report.digest),
    ]
    return await build_xlsx(meta, report.summary or {}, columns_of(report.kind), all_rows(ctx, report))


# -- the page -------------------------------------------------------------------------------------


def bar_chart(chart: dict[str, Any], organization: str = "", period: str = "") -> str:
    """The chart's SVG: a time series for days, horizontal bars for categories (gateway.report_chart)."""
    return draw_chart(chart, organization, period)


def period_text(report: Report) -> str:
    """The period as a person reads it: "7 Nov 2026 to 6 Dec 2026 (UTC)" for whole days."""
    start, end = report.period_start.astimezone(UTC), report.period_end.astimezone(UTC)
    if start.time() == end.time() == time(0):
        last = end - timedelta(days=1)
        return f"{start:%-d %b %Y}" + ("" if last == start else f" to {last:%-d %b %Y}") + " (UTC)"
    return f"{start:%-d %b %Y %H:%M} to {end:%-d %b %Y %H:%M} (UTC)"


def _number(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else escape(str(value))


def _scalar(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, dict):
        return ", ".join(f"{escape(str(k))}: {_scalar(v)}" for k, v in value.items())
    if isinstance(value, list):
        return ", ".join(_scalar(v) for v in value) or "-"
    return _number(value)


def _table(rows: list[dict[str, Any]]) -> str:
    columns = list(dict.fromkeys(k for r in rows for k in r))
    head = "".join(f"<th>{escape(str(c))}</th>" for c in columns)
    body = []
    for r in rows:
        cells = []
        for c in columns:
            value = r.get(c)
            css = f' class="{value}"' if c == "status" and value in ("pass", "attention") else ""
            cells.append(f"<td{css}>{_scalar(value)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return escape(str(value))


def rows_tables(columns: Sequence[str], rows: list[list[Any]]) -> list[str]:
    """The report's rows, one table per section, each with the columns that section fills."""
    sections: dict[str, list[list[Any]]] = {}
    for row in rows:
        sections.setdefault(str(row[0]), []).append(row)
    out = []
    for section, members in sections.items():
        used = [i for i in range(1, len(columns)) if any(r[i] not in (None, "") for r in members)]
        head = "".join(f"<th>{escape(columns[i])}</th>" for i in used)
        body = "".join("<tr>" + "".join(f"<td>{_cell(r[i])}</td>" for i in used) + "</tr>" for r in members)
        out.append(f'<h3>{escape(section)} ({len(members)})</h3><table class="rows"><tr>{head}</tr>{body}</table>')
    return out


def render_page(
    report: Report, organization: str = "", rows: list[list[Any]] | None = None, *, links: bool = True
) -> str:
    """The report as a page: title, organization, period, its charts, its summary tables and its rows
    (the first MAX_PAGE_ROWS of them). The PDF is this page, printed (gateway.report_files)."""
    summary = report.summary or {}
    charts = [v for v in summary.values() if isinstance(v, dict) and "bars" in v]
    figures, tables = [], []
    for key, value in summary.items():
        if isinstance(value, dict) and "bars" in value:
            continue
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            tables.append(f"<h2>{escape(key)}</h2>{_table(value)}")
        else:
            figures.append(f"<tr><th>{escape(key)}</th><td>{_scalar(value)}</td></tr>")
    rid = escape(report.id)
    rows = rows or []
    shown = rows[:MAX_PAGE_ROWS]
    more = (
        f"<p>The first {len(shown):,} of {report.row_count:,} rows; the CSV, JSON and XLSX downloads hold them all.</p>"
        if report.row_count > len(shown)
        else ""
    )
    title = f"{report.kind.title()} report"
    # ACCESS and COMPLIANCE describe the organization as it stood at generation
    snapshot = report.kind in ("ACCESS", "COMPLIANCE")
    when = f"as of {report.created_at.astimezone(UTC):%-d %b %Y %H:%M} (UTC)" if snapshot else period_text(report)
    return "".join(
        [
            '<!doctype html><html lang="en"><head><meta charset="utf-8">',
            f"<title>{escape(title)}: {escape(organization)}</title><style>{STYLE}</style></head><body>",
            f"<h1>{escape(title)}: {escape(organization)}</h1>",
            "<table>",
            f"<tr><th>Organization</th><td>{escape(organization)}</td></tr>",
            f"<tr><th>Period</th><td>{escape(period_text(report))}<br><code>[{escape(iso(report.period_start))}, "
            f"{escape(iso(report.period_end))})</code></td></tr>",
            f"<tr><th>Generated</th><td>{escape(iso(report.created_at))}</td></tr>",
            f"<tr><th>Rows</th><td>{report.row_count}</td></tr>",
            f"<tr><th>Digest (JSON)</th><td><code>{escape(report.digest)}</code></td></tr>",
            "</table>",
            *(f"<figure>{bar_chart(c, organization, when)}</figure>" for c in charts),
            "<h2>Summary</h2><table>",
            *figures,
            "</table>",
            *tables,
            f"<h2>Rows</h2>{more}" if shown else "",
            *rows_tables(columns_of(report.kind), shown),
            (
                f'<p class="links">Download: <a href="{rid}.csv">CSV</a> · <a href="{rid}.json">JSON</a> · '
                f'<a href="{rid}.xlsx">XLSX</a> · <a href="{rid}.pdf">PDF</a></p>'
                if links
                else ""
            ),
            "</body></html>",
        ]
    )
