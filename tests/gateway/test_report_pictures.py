"""The pictures of docs/reports.md: each report kind's page in headless Chromium (Debian's /usr/bin/chromium
driven by Playwright) and the first page of its PDF (rendered by pypdfium2), from a gateway served by
uvicorn on a demo organization with a month of data.

Run only when asked, with the folder to write them to:

    PORTCULLIS_TEST_REPORT_PICTURES=docs/images .venv/bin/python -m pytest tests/gateway/test_report_pictures.py
"""

from __future__ import annotations

import asyncio
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from gateway.app import create_app
from store import audit
from store.audit import AuditEvent
from store.db import Database
from store.models import Membership, User
from tests.conftest import Tenant, gql, make_settings, make_tenant
from tests.http_upstreams import serving
from tests.schema.test_reports import GENERATE, USAGE_ROW, bulk, stamp, usage

PICTURES = os.environ.get("PORTCULLIS_TEST_REPORT_PICTURES")
CHROMIUM = os.environ.get("PORTCULLIS_TEST_CHROMIUM", "/usr/bin/chromium")
pytestmark = pytest.mark.skipif(not PICTURES, reason="set PORTCULLIS_TEST_REPORT_PICTURES=<folder> to draw them")

DAYS = 30
# requests per day: a working-week rhythm with a slow rise, the same on every run
WEEKDAY = (5200, 5600, 5900, 5700, 5100, 1400, 1100)
MEMBERS = [("admin", True), ("admin", True), ("manager", False), ("analyst", True), ("analyst", False)]
MEMBERS += [("viewer", False)] * 4


async def seed(url: str, tenant: Tenant, today: datetime) -> None:
    first = today - timedelta(days=DAYS)
    rows = []
    for d in range(DAYS):
        day = (first + timedelta(days=d)).date()
        total = WEEKDAY[day.weekday()] + d * 40
        rows.append(usage(tenant.org_id, day, "total", "", total, total // 10, 2 if d % 9 == 4 else 0))
        rows.append(usage(tenant.org_id, day, "api_key", f"00000000-0000-4000-8000-00000000000{d % 2}", total // 2))
        rows.append(usage(tenant.org_id, day, "user", tenant.user_id, total - total // 2))
    bulk(url, USAGE_ROW, rows)
    db = Database(url)
    try:
        async with db.transaction() as session:
            for i, (role, mfa) in enumerate(MEMBERS):
                user = User(
                    email=f"member{i}@northwind.test",
                    email_key=f"member{i}@northwind.test",
                    mfa_enabled=mfa,
                    created_at=first - timedelta(days=200),
                    last_login_at=today - timedelta(days=2 + 60 * (i % 3)),
                )
                session.add(user)
                await session.flush()
                session.add(Membership(organization_id=tenant.org_id, user_id=user.id, role=role))
        for d in range(DAYS):
            at = first + timedelta(days=d, hours=9)
            n = (3 + (d * 7) % 5) if d % 6 else 14  # a burst of failed sign-ins every sixth day
            events = [
                AuditEvent(
                    action="authn_login_fail" if i % 4 else "authz_fail",
                    result="denied",
                    organization_id=tenant.org_id,
                    actor_type="user",
                    actor_id=tenant.user_id,
                    ip=f"203.0.113.{10 + i % 3}",
                    request_id=f"demo-{d}-{i}",
                )
                for i in range(n)
            ]
            async with db.transaction() as session:
                await audit.append(session, events, now=at)
    finally:
        await db.dispose()


async def test_draw_each_kinds_page_and_pdf(sqlite_url: str, signing_key: str) -> None:
    import pypdfium2
    from playwright.async_api import async_playwright

    folder = Path(PICTURES or ".")
    os.makedirs(folder, exist_ok=True)
    tenant = await make_tenant(sqlite_url, slug="northwind", email="owner@northwind.test", plan="enterprise")
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    await seed(sqlite_url, tenant, today)
    app = create_app(make_settings(sqlite_url, signing_key))
    with serving(app) as base:
        async with httpx.AsyncClient(base_url=base, timeout=60) as client:
            login = await gql(
                client,
                "mutation($e: String!, $p: String!) { login(email: $e, password: $p) { accessToken } }",
                {"e": tenant.email, "p": tenant.password},
            )
            token = login.json()["data"]["login"]["accessToken"]
            made = {}
            for kind in ("USAGE", "SECURITY", "ACCESS", "COMPLIANCE"):
                body = (
                    await gql(
                        client,
                        GENERATE,
                        {"kind": kind, "from": stamp(today - timedelta(days=DAYS)), "to": stamp(today)},
                        token=token,
                    )
                ).json()
                assert body.get("data"), body
                made[kind] = body["data"]["generateReport"]["id"]
            async with async_playwright() as pw:
                browser = await pw.chromium.launch(
                    executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-dev-shm-usage"]
                )
                try:
                    page = await browser.new_page(
                        viewport={"width": 1000, "height": 1300},
                        extra_http_headers={"Authorization": f"Bearer {token}"},
                    )
                    for kind, report_id in made.items():
                        r = await page.goto(f"{base}/reports/{report_id}.html")
                        assert r is not None
                        assert r.status == 200
                        assert await page.locator("svg").count() >= 1
                        await page.screenshot(path=str(folder / f"report-{kind.lower()}.png"))
                finally:
                    await browser.close()
            for kind, report_id in made.items():
                r = await client.get(f"/reports/{report_id}.pdf", headers={"Authorization": f"Bearer {token}"})
                assert r.status_code == 200
                pdf = pypdfium2.PdfDocument(r.content)
                try:
                    image = pdf[0].render(scale=1.4).to_pil()
                    await asyncio.to_thread(image.save, folder / f"report-{kind.lower()}-pdf.png", optimize=True)
                finally:
                    pdf.close()
