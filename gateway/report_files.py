"""A report as a file people open: XLSX (openpyxl) and PDF (WeasyPrint, which prints the report's page).

XLSX: a "Summary" sheet (the report's facts and figures), one sheet per section of the rows, in the order
they first appear, with every column of the CSV and a header row, and one sheet per table of the summary
(its chart's data and lists such as `topApiKeys`). Cells are typed: counts are numbers, `day` a date,
the times (`at`, `created_at`, ...) date-times in UTC, percentages numbers, flags booleans. A text that
starts with `=` stays text (openpyxl would otherwise write it as a formula). Written with openpyxl's
write-only workbook, which keeps only the row being written in memory (and spools each sheet to a
temporary file).

PDF: the report's HTML page printed on A4 landscape by WeasyPrint (the same title, organization, period,
charts, tables and rows), with the report's CSV attached to the PDF as `report-<kind>-<id>.csv`. The
CSV bytes are the CSV download's, so the attachment's sha256 is the CSV's `Repr-Digest`.
"""

from __future__ import annotations

import io
from collections.abc import AsyncIterator, Sequence
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

import anyio.to_thread
from openpyxl import Workbook
from openpyxl.cell import WriteOnlyCell
from openpyxl.styles import Font

from resolvers.report_builders import Cell

# a write-only worksheet (openpyxl names its class in a private module only)
Sheet = Any

DATE_COLUMNS = frozenset({"day"})
TIME_COLUMNS = frozenset({"at", "last_login_at", "created_at", "last_used_at", "revoked_at"})
PERCENT_COLUMNS = frozenset({"quota_used_percent"})
DATE_FORMAT, TIME_FORMAT, PERCENT_FORMAT = "yyyy-mm-dd", "yyyy-mm-dd hh:mm:ss", "0.00"

PRINT_STYLE = (
    "@page{size:A4 landscape;margin:12mm}body{margin:0;max-width:none;font-size:11px}"
    "table.rows{font-size:8px}table.rows td,table.rows th{padding:1px 6px 1px 0;word-break:break-all}"
    "figure{break-inside:avoid;margin:8px 0}h2,h3{break-after:avoid}.links{display:none}"
)


def typed(column: str, value: Cell) -> Any:
    """The spreadsheet value of one cell of column `column`."""
    if isinstance(value, str):
        if column in DATE_COLUMNS:
            try:
                return date.fromisoformat(value)
            except ValueError:
                return value
        if column in TIME_COLUMNS:
            try:
                # a spreadsheet has no time zones: the UTC wall time (docs/reports.md)
                return datetime.fromisoformat(value.replace("Z", "+00:00")).replace(tzinfo=None)
            except ValueError:
                return value
        if column in PERCENT_COLUMNS:
            try:
                return float(Decimal(value))
            except InvalidOperation:
                return value
    return value


def _cell(sheet: Sheet, column: str, value: Any) -> WriteOnlyCell | Any:
    value = typed(column, value)
    if isinstance(value, str):
        cell = WriteOnlyCell(sheet, value)
        cell.data_type = "s"  # never a formula, whatever it starts with
        return cell
    if isinstance(value, datetime | date) or column in PERCENT_COLUMNS:
        cell = WriteOnlyCell(sheet, value)
        cell.number_format = (
            TIME_FORMAT if isinstance(value, datetime) else DATE_FORMAT if isinstance(value, date) else PERCENT_FORMAT
        )
        return cell
    return value


class Sheets:
    def __init__(self) -> None:
        self.book = Workbook(write_only=True)
        self._names: set[str] = set()

    def sheet(self, name: str, header: Sequence[str]) -> Sheet:
        title = "".join(c if c not in "[]:*?/\\" else "_" for c in name)[:31] or "sheet"
        base, n = title, 2
        while title.lower() in self._names:
            title = f"{base[:28]}_{n}"
            n += 1
        self._names.add(title.lower())
        sheet: Sheet = self.book.create_sheet(title)
        bold = Font(bold=True)
        heads = []
        for h in header:
            cell = WriteOnlyCell(sheet, h)
            cell.font = bold
            heads.append(cell)
        sheet.append(heads)
        return sheet

    def row(self, sheet: Sheet, columns: Sequence[str], values: Sequence[Any]) -> None:
        sheet.append([_cell(sheet, c, v) for c, v in zip(columns, values, strict=True)])

    def save(self) -> bytes:
        out = io.BytesIO()
        self.book.save(out)
        return out.getvalue()


def _flat(prefix: str, value: Any) -> list[tuple[str, Any]]:
    if isinstance(value, dict):
        return [item for k, v in value.items() for item in _flat(f"{prefix}.{k}", v)]
    if isinstance(value, list):
        return [(prefix, ", ".join(str(v) for v in value))]
    return [(prefix, value)]


async def build_xlsx(
    meta: list[tuple[str, Any]], summary: dict[str, Any], columns: Sequence[str], rows: AsyncIterator[list[Cell]]
) -> bytes:
    sheets = Sheets()
    overview = sheets.sheet("Summary", ["field", "value"])
    tables: list[tuple[str, Any]] = []
    for key, value in meta:
        sheets.row(overview, ["field", "value"], [key, value])
    for key, value in summary.items():
        chart = isinstance(value, dict) and "bars" in value
        if chart or (isinstance(value, list) and value and all(isinstance(v, dict) for v in value)):
            tables.append((key, value))
        else:
            for name, v in _flat(key, value):
                sheets.row(overview, ["field", "value"], [name, v if not isinstance(v, dict | list) else str(v)])
    sections: dict[str, Sheet] = {}
    async for row in rows:
        section = str(row[0])
        if section not in sections:
            sections[section] = sheets.sheet(section, columns)
        sheets.row(sections[section], columns, row)
    for key, value in tables:
        if isinstance(value, dict):
            days = value.get("axis") == "day"
            head = ["day" if days else str(value.get("axis") or "label"), str(value.get("unit") or "value")]
            if days:
                head.append("days")
            sheet = sheets.sheet(key, head)
            for bar in value.get("bars", []):
                first = bar.get("start") or str(bar.get("label", "")).partition(" to ")[0]
                cells = [first if days else bar.get("label"), bar.get("value")]
                sheets.row(
                    sheet,
                    ["day" if days else "label", "value", "days"][: len(head)],
                    [*cells, bar.get("days", 1)][: len(head)],
                )
        else:
            header = list(dict.fromkeys(k for r in value for k in r))
            sheet = sheets.sheet(key, header)
            for r in value:
                sheets.row(
                    sheet, header, [v if not isinstance(v, dict | list) else str(v) for v in (r.get(h) for h in header)]
                )
    # zipping the sheets is the longest step: off the event loop
    return await anyio.to_thread.run_sync(sheets.save)


def build_pdf(page: str, csv_name: str, csv_bytes: bytes) -> bytes:
    """`page` (the report's HTML) printed to PDF, with the CSV attached. Synchronous and CPU-bound: run it
    in a worker thread."""
    from weasyprint import CSS, HTML, Attachment

    attachment = Attachment(file_obj=io.BytesIO(csv_bytes), name=csv_name, description="The report's rows (CSV)")
    document = HTML(string=page, url_fetcher=_no_fetch)
    pdf: bytes = document.write_pdf(stylesheets=[CSS(string=PRINT_STYLE)], attachments=[attachment])
    return pdf


def _no_fetch(url: str, *args: Any, **kwargs: Any) -> Any:
    """The page references nothing outside itself: the printer fetches nothing."""
    raise ValueError(f"not fetched: {url[:80]}")
