"""`GET /reports/{id}.csv|.json|.html`: a generated report as data, or as a page with its chart.

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
from html import escape
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from authz import Permission, Principal, anonymous
from authz.errors import NotFound
from gateway.middleware import graphql_error
from resolvers.deps import RequestContext, Services
from resolvers.report_builders import iso
from resolvers.reports import audit_refused_download, csv_download, get_report, json_download
from store.models import Report

log = logging.getLogger("portcullis.reports")

FORMATS = {"csv": "text/csv; charset=utf-8", "json": "application/json", "html": "text/html; charset=utf-8"}
STYLE = (
    "body{font:15px/1.45 system-ui,sans-serif;margin:2rem auto;max-width:56rem;color:#1d2733;padding:0 1rem}"
    "h1{font-size:1.4rem}h2{font-size:1.1rem;margin-top:2rem}table{border-collapse:collapse;margin:.5rem 0}"
    "td,th{border-bottom:1px solid #d5dbe3;padding:.25rem .75rem .25rem 0;text-align:left;vertical-align:top}"
    "code{font-size:.85em;word-break:break-all}.pass{color:#17663a}.attention{color:#a34a00}"
    "svg text{font:12px system-ui,sans-serif;fill:#1d2733}"
)
PAGE_CSP = (
    "default-src 'none'; style-src 'sha256-"
    + base64.b64encode(hashlib.sha256(STYLE.encode()).digest()).decode()
    + "'; img-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
TONES = {"normal": "#3b6fb6", "pass": "#2e8b57", "attention": "#d9822b"}


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
        if fmt == "html":
            return Response(render_page(report), media_type=FORMATS[fmt], headers={"content-security-policy": PAGE_CSP})
        stream, digest = (json_download, report.digest) if fmt == "json" else (csv_download, report.csv_digest)
        filename = f"report-{report.kind.lower()}-{report.id}.{fmt}"
        headers = {"content-disposition": f'attachment; filename="{filename}"'}
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


# -- the page -------------------------------------------------------------------------------------


def bar_chart(chart: dict[str, Any]) -> str:
    """Horizontal bars, one per label, scaled to the largest value; every text escaped."""
    bars = [b for b in chart.get("bars", []) if isinstance(b, dict)]
    title = escape(str(chart.get("title", "")))
    unit = escape(str(chart.get("unit", "")))
    label_w, bar_w, row_h, top = 230, 400, 22, 28
    width, height = label_w + bar_w + 90, top + row_h * max(1, len(bars)) + 10
    peak = max([int(b.get("value") or 0) for b in bars] + [1])
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{title}">',
        f"<title>{title}</title>",
        f'<text x="0" y="16" font-weight="bold">{title}</text>',
    ]
    if not bars:
        parts.append(f'<text x="0" y="{top + 14}">No data in this period.</text>')
    for i, bar in enumerate(bars):
        value = int(bar.get("value") or 0)
        y = top + i * row_h
        tone = str(bar.get("tone"))
        # a verdict stays visible in its colour even with no rows behind it
        w = max(round(bar_w * value / peak), 4 if tone in ("pass", "attention") else 0)
        label = escape(str(bar.get("label", "")))
        fill = TONES.get(tone, TONES["normal"])
        parts.append(f'<text x="{label_w - 8}" y="{y + 14}" text-anchor="end">{label}</text>')
        parts.append(
            f'<rect x="{label_w}" y="{y + 3}" width="{w}" height="{row_h - 6}" fill="{fill}">'
            f"<title>{label}: {value} {unit}</title></rect>"
        )
        parts.append(f'<text x="{label_w + w + 6}" y="{y + 14}">{value}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _scalar(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, dict):
        return ", ".join(f"{escape(str(k))}: {_scalar(v)}" for k, v in value.items())
    if isinstance(value, list):
        return ", ".join(_scalar(v) for v in value) or "-"
    return escape(str(value))


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


def render_page(report: Report) -> str:
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
    return "".join(
        [
            '<!doctype html><html lang="en"><head><meta charset="utf-8">',
            f"<title>{escape(report.kind)} report</title><style>{STYLE}</style></head><body>",
            f"<h1>{escape(report.kind.title())} report</h1>",
            "<table>",
            f"<tr><th>Period</th><td>{escape(iso(report.period_start))} to {escape(iso(report.period_end))}</td></tr>",
            f"<tr><th>Generated</th><td>{escape(iso(report.created_at))}</td></tr>",
            f"<tr><th>Rows</th><td>{report.row_count}</td></tr>",
            f"<tr><th>Digest (JSON)</th><td><code>{escape(report.digest)}</code></td></tr>",
            "</table>",
            *(f"<figure>{bar_chart(c)}</figure>" for c in charts),
            "<h2>Summary</h2><table>",
            *figures,
            "</table>",
            *tables,
            f'<p>Download: <a href="{rid}.csv">CSV</a> · <a href="{rid}.json">JSON</a></p>',
            "</body></html>",
        ]
    )
