"""The PDF and XLSX downloads of every report kind, read back with pypdf and openpyxl: the same rows as the
CSV, typed cells, the organization's name and the chart on the page; and the same access rules as the
other formats."""

from __future__ import annotations

import csv
import hashlib
import io
import re
from datetime import date, datetime, timedelta
from typing import Any

import httpx
import openpyxl
import pypdf
import pytest

from gateway.report_chart import draw_chart
from store.audit import AuditEvent
from tests.conftest import Tenant, error_codes, login, make_tenant, sql
from tests.schema.test_reports import (
    USAGE_ROW,
    auth,
    bulk,
    create_key,
    generated,
    now,
    usage,
    write_audit,
)

KINDS = ("USAGE", "SECURITY", "ACCESS", "COMPLIANCE")


@pytest.fixture
async def owner_token(client: httpx.AsyncClient, tenant: Tenant) -> str:
    return (await login(client, tenant))["accessToken"]  # type: ignore[no-any-return]


async def seed(database_url: str, tenant: Tenant) -> None:
    today = now().date()
    key = "11111111-1111-4111-8111-111111111111"
    bulk(
        database_url,
        USAGE_ROW,
        [
            usage(tenant.org_id, today - timedelta(days=2), "total", "", 50_000, 900, 3),
            usage(tenant.org_id, today - timedelta(days=1), "total", "", 120, 40, 0),
            usage(tenant.org_id, today - timedelta(days=2), "api_key", key, 49_000, 880, 3),
            usage(tenant.org_id, today - timedelta(days=1), "user", tenant.user_id, 120, 40),
        ],
    )
    events = [
        AuditEvent(
            action=action,
            result="denied",
            organization_id=tenant.org_id,
            actor_type="user",
            actor_id=tenant.user_id,
            ip="203.0.113.9",
            request_id="r",
        )
        for action in ("authn_login_fail", "authn_login_fail", "authz_fail", "excess_rate_limit_exceeded")
    ]
    await write_audit(database_url, *events)


def csv_text(value: Any) -> str:
    """A spreadsheet cell as the CSV writes the same value."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return value.isoformat() + "Z"
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def same_cell(csv_cell: str, value: Any) -> bool:
    text = csv_text(value)
    if isinstance(value, datetime) and len(csv_cell) == 10:
        return value.time() == datetime.min.time() and value.date().isoformat() == csv_cell  # a date cell
    if isinstance(value, datetime):
        # a spreadsheet keeps times to the millisecond, in UTC
        written = datetime.fromisoformat(csv_cell.replace("Z", "+00:00")).replace(tzinfo=None)
        return abs(written - value) < timedelta(milliseconds=1)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(csv_cell) == value  # a number as a number (50.00 reads back as 50)
    if isinstance(value, str) and csv_cell.startswith("'"):
        return csv_cell[1:] == text  # the CSV's formula guard; the spreadsheet keeps the text as text
    return csv_cell == text


@pytest.mark.parametrize("kind", KINDS)
async def test_pdf_and_xlsx_hold_the_same_rows_as_the_csv(
    client: httpx.AsyncClient, tenant: Tenant, owner_token: str, database_url: str, kind: str
) -> None:
    await seed(database_url, tenant)
    report = await generated(client, owner_token, kind, now() - timedelta(days=3), now() + timedelta(hours=1))
    c = await client.get(report["csvUrl"], headers=auth(owner_token))
    assert c.status_code == 200
    table = list(csv.reader(io.StringIO(c.text)))
    columns, rows = table[0], table[1:]
    assert rows, "the seeded data gives every kind rows"

    x = await client.get(f"/reports/{report['id']}.xlsx", headers=auth(owner_token))
    assert x.status_code == 200, x.text
    assert x.headers["content-type"] == "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
    assert x.headers["content-disposition"] == f'attachment; filename="report-{kind.lower()}-{report["id"]}.xlsx"'
    book = openpyxl.load_workbook(io.BytesIO(x.content))
    sections = list(dict.fromkeys(r[0] for r in rows))
    assert book.sheetnames[0] == "Summary"
    assert book.sheetnames[1 : 1 + len(sections)] == sections  # one sheet per section, in the CSV's order
    for section in sections:
        sheet = [list(r) for r in book[section].iter_rows(values_only=True)]
        assert sheet[0] == columns
        expected = [r for r in rows if r[0] == section]
        assert len(sheet) - 1 == len(expected)
        for got, want in zip(sheet[1:], expected, strict=True):
            assert all(same_cell(w, g) for w, g in zip(want, got, strict=True)), (got, want)
    summary = {r[0]: r[1] for r in book["Summary"].iter_rows(min_row=2, values_only=True)}
    assert summary["organization"] == "Acme"
    assert summary["rows"] == len(rows)
    assert isinstance(summary["from"], datetime)
    # typed cells: numbers as numbers, days as dates
    if kind == "USAGE":
        day = [list(r) for r in book["day"].iter_rows(min_row=2, values_only=True)]
        assert isinstance(day[0][1], date)
        assert isinstance(day[0][5], int)
        assert day[0][9] == 50.0
        assert book["day"].cell(row=2, column=10).number_format == "0.00"
        assert book["day"].cell(row=2, column=2).number_format == "yyyy-mm-dd"
        chart = [list(r) for r in book["chart"].iter_rows(values_only=True)]
        assert chart[0] == ["day", "requests", "days"]
        assert sum(r[1] for r in chart[1:]) == 50_120
        assert all(isinstance(r[0], datetime) for r in chart[1:])  # a date cell reads back as midnight

    p = await client.get(f"/reports/{report['id']}.pdf", headers=auth(owner_token))
    assert p.status_code == 200, p.text
    assert p.headers["content-type"] == "application/pdf"
    reader = pypdf.PdfReader(io.BytesIO(p.content))
    attached = reader.attachments[f"report-{kind.lower()}-{report['id']}.csv"][0]
    assert attached == c.content  # the CSV download, byte for byte
    assert "sha-256=:" in c.headers["repr-digest"]
    assert hashlib.sha256(attached).digest() == hashlib.sha256(c.content).digest()
    text = "\n".join(page.extract_text() for page in reader.pages)
    flat = re.sub(r"\s+", "", text)
    assert f"{kind.title()}report:Acme" in flat
    assert "Acme:" in text  # the chart's heading names the organization
    assert len(reader.pages) >= 1
    for row in rows:
        # every cell of every row is printed (cells may wrap inside their column)
        for cell in row[1:]:
            assert re.sub(r"\s+", "", cell) in flat, (cell, row)
    for section in sections:
        count = sum(1 for r in rows if r[0] == section)
        assert f"{section}({count})" in flat


async def test_pdf_and_xlsx_of_another_tenant_answer_like_a_missing_report(
    client: httpx.AsyncClient, tenant: Tenant, owner_token: str, database_url: str
) -> None:
    other = await make_tenant(database_url, slug="other", email="owner@other.test")
    theirs = await generated(client, (await login(client, other))["accessToken"], "ACCESS")
    missing = "00000000-0000-4000-8000-000000000000"
    for suffix in ("pdf", "xlsx"):
        a = await client.get(f"/reports/{theirs['id']}.{suffix}", headers=auth(owner_token))
        b = await client.get(f"/reports/{missing}.{suffix}", headers=auth(owner_token))
        assert a.status_code == b.status_code == 404
        assert a.json() == b.json()
        assert error_codes(a.json()) == ["NOT_FOUND"]
        assert (await client.get(f"/reports/{theirs['id']}.{suffix}")).status_code == 401
    crossed = sql(
        database_url,
        "SELECT resource_id FROM audit_log WHERE chain = :c AND action = 'authz_cross_tenant'",
        c=tenant.org_id,
    )
    assert crossed == [(theirs["id"],)] * 2
    key = (await create_key(client, owner_token, "ro", "organization:read"))["secret"]
    mine = await generated(client, owner_token, "ACCESS")
    for suffix in ("pdf", "xlsx"):
        r = await client.get(f"/reports/{mine['id']}.{suffix}", headers={"X-API-Key": key})
        assert r.status_code == 403
        assert r.json()["errors"][0]["extensions"]["requiredScopes"] == [["reports:read"]]


async def test_a_formula_stays_text_in_the_spreadsheet(
    client: httpx.AsyncClient, owner_token: str, database_url: str
) -> None:
    await create_key(client, owner_token, '=HYPERLINK("http://x.test","y")', "reports:read")
    report = await generated(client, owner_token, "ACCESS")
    x = await client.get(f"/reports/{report['id']}.xlsx", headers=auth(owner_token))
    book = openpyxl.load_workbook(io.BytesIO(x.content))
    cell = next(r[3] for r in book["api_key"].iter_rows(min_row=2) if str(r[3].value).startswith("="))
    assert cell.data_type == "s"
    assert cell.value == '=HYPERLINK("http://x.test","y")'


def test_a_time_series_puts_the_days_along_a_labelled_x_axis() -> None:
    bars = [
        {"label": "2026-11-01", "value": 10, "tone": "normal", "start": "2026-11-01", "days": 1},
        {"label": "2026-11-02", "value": 0, "tone": "normal", "start": "2026-11-02", "days": 1},
        {"label": "2026-11-03", "value": 25, "tone": "normal", "start": "2026-11-03", "days": 1},
    ]
    svg = draw_chart({"title": "Requests per day", "unit": "requests", "axis": "day", "bars": bars}, "Acme <Ltd>")
    assert "Acme &lt;Ltd&gt;: Requests per day" in svg
    assert "Day (UTC, 2026)" in svg
    assert "Requests per day" in svg
    assert ">01 Nov<" in svg
    assert ">03 Nov<" in svg
    rects = re.findall(r'<rect x="([\d.]+)" y="[\d.]+" width="[\d.]+" height="([\d.]+)"', svg)
    assert len(rects) == 2  # no bar for the zero day
    assert float(rects[0][0]) < float(rects[1][0])  # later days further right
    assert float(rects[1][1]) > float(rects[0][1])
    # an old report's chart (no start, no axis) is still drawn as days
    old = draw_chart({"title": "t", "unit": "events", "bars": [{"label": "2026-11-01 to 2026-11-07", "value": 3}]})
    assert "each bar sums 7 days" in old


def test_a_category_chart_labels_both_axes() -> None:
    svg = draw_chart(
        {"title": "Members by role", "unit": "members", "axis": "Role", "bars": [{"label": "owner", "value": 1}]},
        "Acme",
    )
    assert "Acme: Members by role" in svg
    assert ">Role</text>" in svg
    assert ">Members</text>" in svg
