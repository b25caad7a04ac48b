"""Reports over HTTP on SQLite and PostgreSQL: generating each kind from real rows, listing them, the
CSV, JSON and HTML downloads with their digests, and every bad input of the reports item."""

from __future__ import annotations

import asyncio
import csv
import hashlib
import io
import json
import re
from datetime import UTC, date, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, text

from gateway.reports import bar_chart
from store import audit
from store.audit import AuditEvent
from store.db import Database, install_sqlite_pragmas, is_sqlite, sync_url
from tests.conftest import Tenant, error_codes, gql, login, make_tenant, sql
from tests.store.test_audit import as_owner

GENERATE = """mutation($kind: ReportKind!, $from: DateTime!, $to: DateTime!) {
  generateReport(kind: $kind, from: $from, to: $to) { id kind from to createdAt digest summary csvUrl jsonUrl htmlUrl }
}"""
REPORT = "query($id: ID!) { report(id: $id) { id kind digest summary } }"
CREATE_KEY = "mutation($input: CreateApiKeyInput!) { createApiKey(input: $input) { secret apiKey { id } } }"
LIST = """query($first: Int, $after: String) { organization { reports(first: $first, after: $after) {
  edges { cursor node { id kind } } pageInfo { hasNextPage endCursor } } } }"""


def now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def bulk(url: str, statement: str, rows: list[dict[str, Any]]) -> None:
    engine = create_engine(sync_url(url))
    if is_sqlite(url):
        install_sqlite_pragmas(engine)
    try:
        with engine.begin() as conn:
            conn.execute(text(statement), rows)
    finally:
        engine.dispose()


USAGE_ROW = (
    "INSERT INTO usage_daily (organization_id, day, subject_type, subject_id, requests, cost, rate_limited)"
    " VALUES (:o, :d, :t, :s, :r, :c, :l)"
)


def usage(
    org: str, day: date, kind: str, subject: str, requests: int, cost: int = 0, limited: int = 0
) -> dict[str, Any]:
    return {"o": org, "d": day, "t": kind, "s": subject, "r": requests, "c": cost, "l": limited}


async def write_audit(url: str, *events: AuditEvent) -> None:
    db = Database(url)
    try:
        async with db.transaction() as session:
            await audit.append(session, events)
    finally:
        await db.dispose()


async def generate(client: httpx.AsyncClient, token: str, kind: str, start: datetime, end: datetime) -> dict[str, Any]:
    r = await gql(client, GENERATE, {"kind": kind, "from": stamp(start), "to": stamp(end)}, token=token)
    return r.json()  # type: ignore[no-any-return]


async def generated(
    client: httpx.AsyncClient, token: str, kind: str, start: datetime | None = None, end: datetime | None = None
) -> dict[str, Any]:
    body = await generate(client, token, kind, start or now() - timedelta(days=7), end or now())
    assert body.get("data"), body
    return body["data"]["generateReport"]  # type: ignore[no-any-return]


async def create_key(client: httpx.AsyncClient, token: str, name: str, scope: str) -> dict[str, Any]:
    r = await gql(client, CREATE_KEY, {"input": {"name": name, "scopes": [scope]}}, token=token)
    assert r.json().get("data"), r.json()
    return r.json()["data"]["createApiKey"]  # type: ignore[no-any-return]


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def download_json(client: httpx.AsyncClient, token: str, report: dict[str, Any]) -> dict[str, Any]:
    r = await client.get(report["jsonUrl"], headers=auth(token))
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def rows_of(body: dict[str, Any], section: str) -> list[dict[str, Any]]:
    return [dict(zip(body["columns"], row, strict=True)) for row in body["rows"] if row[0] == section]


def report_org(url: str, report_id: str) -> str:
    return str(sql(url, "SELECT organization_id FROM reports WHERE id = :id", id=report_id)[0][0])


@pytest.fixture
async def owner_token(client: httpx.AsyncClient, tenant: Tenant) -> str:
    return (await login(client, tenant))["accessToken"]  # type: ignore[no-any-return]


# -- the four kinds -------------------------------------------------------------------------------


async def test_usage_report_has_requests_cost_and_quota_use_per_day_key_and_member(
    client: httpx.AsyncClient, tenant: Tenant, owner_token: str, database_url: str
) -> None:
    today = now().date()
    key = "11111111-1111-4111-8111-111111111111"
    bulk(
        database_url,
        USAGE_ROW,
        [
            usage(tenant.org_id, today - timedelta(days=2), "total", "", 50_000, 900, 3),
            usage(tenant.org_id, today - timedelta(days=1), "total", "", 120, 40, 0),
            usage(tenant.org_id, today - timedelta(days=2), "api_key", key, 49_000, 880, 3),
            usage(tenant.org_id, today - timedelta(days=2), "user", tenant.user_id, 1_000, 20),
            usage(tenant.org_id, today - timedelta(days=1), "user", tenant.user_id, 120, 40),
            usage(tenant.org_id, today - timedelta(days=30), "total", "", 7, 7),  # outside the period
        ],
    )
    report = await generated(client, owner_token, "USAGE", now() - timedelta(days=3), now())
    summary = report["summary"]
    assert (summary["requests"], summary["cost"], summary["rateLimited"]) == (50_120, 940, 3)
    assert summary["requestsPerDayLimit"] == 100_000
    assert summary["topMembers"] == [{"id": tenant.user_id, "name": tenant.email, "requests": 1_120, "cost": 60}]
    assert summary["topApiKeys"][0]["requests"] == 49_000
    body = await download_json(client, owner_token, report)
    days = rows_of(body, "day")
    assert [(d["day"], d["requests"], d["quota_used_percent"]) for d in days] == [
        ((today - timedelta(days=2)).isoformat(), 50_000, "50.00"),
        ((today - timedelta(days=1)).isoformat(), 120, "0.12"),
    ]
    assert [(m["subject_name"], m["requests"]) for m in rows_of(body, "member")] == [
        (tenant.email, 1_000),
        (tenant.email, 120),
    ]
    assert [k["subject_id"] for k in rows_of(body, "api_key")] == [key]
    assert sum(b["value"] for b in summary["chart"]["bars"]) == 50_120


async def test_security_report_counts_each_category_with_its_top_sources(
    client: httpx.AsyncClient, tenant: Tenant, owner_token: str, database_url: str
) -> None:
    def ev(action: str, ip: str, result: str = "denied") -> AuditEvent:
        return AuditEvent(
            action=action,
            result=result,
            organization_id=tenant.org_id,
            actor_type="user",
            actor_id=tenant.user_id,
            ip=ip,
            request_id="r",
        )

    await write_audit(
        database_url,
        *[ev("authn_login_fail", "203.0.113.9") for _ in range(4)],
        ev("authn_login_fail", "198.51.100.2"),
        ev("authn_login_lock", "203.0.113.9"),
        ev("authn_token_reuse", "198.51.100.7"),
        ev("authz_fail", "198.51.100.2", "denied"),
        ev("excess_rate_limit_exceeded", "192.0.2.1", "denied"),
        ev("authn_login_success", "203.0.113.9", "success"),  # not a security event
    )
    bulk(database_url, USAGE_ROW, [usage(tenant.org_id, now().date(), "total", "", 100, 0, 7)])
    report = await generated(client, owner_token, "SECURITY", now() - timedelta(days=1), now() + timedelta(hours=1))
    summary = report["summary"]
    assert summary["byCategory"] == {
        "failed_login": 5,
        "lockout": 1,
        "token_reuse": 1,
        "denied_permission": 1,
        "rate_limited": 1,
    }
    assert summary["rateLimitedRequests"] == 7
    assert summary["topSources"]["failed_login"] == [
        {"ip": "203.0.113.9", "count": 4},
        {"ip": "198.51.100.2", "count": 1},
    ]
    body = await download_json(client, owner_token, report)
    assert len(rows_of(body, "event")) == 9
    top = [(r["category"], r["source_type"], r["source"], r["count"]) for r in rows_of(body, "top_source")]
    assert ("failed_login", "ip", "203.0.113.9", 4) in top
    assert ("failed_login", "actor", tenant.user_id, 5) in top


async def test_access_report_lists_roles_members_keys_and_members_without_mfa(
    client: httpx.AsyncClient, tenant: Tenant, owner_token: str, database_url: str
) -> None:
    key_id = (await create_key(client, owner_token, "ci", "reports:read"))["apiKey"]["id"]
    report = await generated(client, owner_token, "ACCESS")
    body = await download_json(client, owner_token, report)
    members = rows_of(body, "member")
    assert [(m["subject_id"], m["role"], m["mfa_enabled"], m["status"]) for m in members] == [
        (tenant.user_id, "owner", False, "active")
    ]
    assert "plan:manage" in members[0]["permissions"].split()
    assert members[0]["last_login_at"] is not None
    keys = rows_of(body, "api_key")
    assert [(k["subject_id"], k["scopes"], k["status"], k["age_days"]) for k in keys] == [
        (key_id, "reports:read", "active", 0)
    ]
    assert [m["subject_id"] for m in rows_of(body, "member_without_mfa")] == [tenant.user_id]
    roles = {r["name"]: r["count"] for r in rows_of(body, "role")}
    assert roles["owner"] == 1
    assert roles["viewer"] == 0
    assert report["summary"]["mfaCoveragePercent"] == "0.00"


async def test_compliance_report_maps_each_check_to_its_controls_with_the_rows_behind_it(
    client: httpx.AsyncClient, tenant: Tenant, owner_token: str, database_url: str
) -> None:
    key_id = (await create_key(client, owner_token, "old", "reports:read"))["apiKey"]["id"]
    old = datetime.now(UTC) - timedelta(days=120)
    sql(database_url, "UPDATE api_keys SET created_at = :at WHERE id = :id", at=old, id=key_id)
    await write_audit(database_url, AuditEvent(action="plan_changed", organization_id=tenant.org_id, request_id="r"))
    first = await generated(client, owner_token, "COMPLIANCE")
    checks = {c["check"]: c for c in first["summary"]["checks"]}
    assert checks["access_review"]["status"] == "attention"
    assert checks["mfa_coverage"]["status"] == "attention"
    assert checks["dormant_accounts"]["status"] == "attention"  # the key, unused for 120 days
    assert checks["key_rotation_age"]["status"] == "attention"
    assert checks["audit_chain"]["status"] == "pass"
    assert checks["mfa_coverage"]["soc2"] == ["CC6.1"]
    assert checks["mfa_coverage"]["iso27001"] == ["A.5.17"]
    assert checks["audit_chain"]["soc2"] == ["CC7.2"]
    assert checks["audit_chain"]["iso27001"] == ["A.8.15"]
    body = await download_json(client, owner_token, first)
    evidence = {(e["check"], e["subject_id"]) for e in rows_of(body, "evidence")}
    assert {("mfa_coverage", tenant.user_id), ("dormant_accounts", key_id), ("key_rotation_age", key_id)} <= evidence
    controls = {c["check"]: c["controls"] for c in rows_of(body, "check")}
    assert controls["access_review"] == "SOC 2 CC6.2; SOC 2 CC6.3; ISO 27001 A.5.15; ISO 27001 A.5.18"

    access = await generated(client, owner_token, "ACCESS")
    second = await generated(client, owner_token, "COMPLIANCE")
    checks = {c["check"]: c for c in second["summary"]["checks"]}
    assert checks["access_review"]["status"] == "pass"
    body = await download_json(client, owner_token, second)
    assert ("access_review", access["id"]) in {(e["check"], e["subject_id"]) for e in rows_of(body, "evidence")}


async def test_compliance_flags_a_tampered_audit_chain(
    client: httpx.AsyncClient, tenant: Tenant, owner_token: str, database_url: str
) -> None:
    await write_audit(
        database_url,
        *[AuditEvent(action="plan_changed", organization_id=tenant.org_id, request_id=f"r{i}") for i in range(3)],
    )
    as_owner(
        database_url, "UPDATE audit_log SET request_id = 'forged' WHERE chain = :c AND sequence = 2", c=tenant.org_id
    )
    report = await generated(client, owner_token, "COMPLIANCE")
    checks = {c["check"]: c for c in report["summary"]["checks"]}
    assert checks["audit_chain"]["status"] == "attention"
    assert checks["audit_chain"]["detail"] == "chain broken at sequence 2"
    body = await download_json(client, owner_token, report)
    assert next(e["subject_id"] for e in rows_of(body, "evidence") if e["check"] == "audit_chain") == "2"


# -- downloads ------------------------------------------------------------------------------------


async def test_downloads_verify_against_the_digests(
    client: httpx.AsyncClient, tenant: Tenant, owner_token: str, database_url: str
) -> None:
    bulk(
        database_url,
        USAGE_ROW,
        [usage(tenant.org_id, now().date() - timedelta(days=d), "total", "", d * 10) for d in range(1, 6)],
    )
    report = await generated(client, owner_token, "USAGE")
    assert re.fullmatch(r"[0-9a-f]{64}", report["digest"])
    r = await client.get(report["jsonUrl"], headers=auth(owner_token))
    assert hashlib.sha256(r.content).hexdigest() == report["digest"]
    assert r.headers["content-type"].startswith("application/json")
    assert r.headers["content-disposition"] == f'attachment; filename="report-usage-{report["id"]}.json"'
    again = await client.get(report["jsonUrl"], headers=auth(owner_token))
    assert again.content == r.content
    c = await client.get(report["csvUrl"], headers=auth(owner_token))
    assert c.headers["content-type"].startswith("text/csv")
    import base64

    repr_digest = c.headers["repr-digest"]
    assert repr_digest == "sha-256=:" + base64.b64encode(hashlib.sha256(c.content).digest()).decode() + ":"
    parsed = list(csv.reader(io.StringIO(c.text)))
    assert parsed[0] == r.json()["columns"]
    assert len(parsed) - 1 == len(r.json()["rows"]) == r.json()["summary"]["rowCount"] == 5


async def test_a_report_keeps_what_it_saw_when_the_organization_changes(
    client: httpx.AsyncClient, tenant: Tenant, owner_token: str, database_url: str
) -> None:
    key_id = (await create_key(client, owner_token, "before", "reports:read"))["apiKey"]["id"]
    report = await generated(client, owner_token, "ACCESS")
    before = (await client.get(report["jsonUrl"], headers=auth(owner_token))).content
    await gql(client, "mutation($id: ID!) { revokeApiKey(id: $id) { id } }", {"id": key_id}, token=owner_token)
    await create_key(client, owner_token, "after", "reports:read")
    after = (await client.get(report["jsonUrl"], headers=auth(owner_token))).content
    assert after == before
    assert hashlib.sha256(after).hexdigest() == report["digest"]
    entries = sql(database_url, "SELECT resource_id, details FROM audit_log WHERE action = 'report_generated'")
    assert [e[0] for e in entries] == [report["id"]]
    details = entries[0][1] if isinstance(entries[0][1], dict) else json.loads(entries[0][1])
    assert details["digest"] == report["digest"]
    assert details["kind"] == "ACCESS"
    assert [(k["name"], k["status"]) for k in rows_of(json.loads(after), "api_key")] == [("before", "active")]


async def test_reports_are_listed_newest_first_with_opaque_cursors(client: httpx.AsyncClient, owner_token: str) -> None:
    made = [(await generated(client, owner_token, kind))["id"] for kind in ("USAGE", "ACCESS", "SECURITY")]
    r = await gql(client, LIST, {"first": 2}, token=owner_token)
    page = r.json()["data"]["organization"]["reports"]
    assert [e["node"]["id"] for e in page["edges"]] == made[::-1][:2]
    assert page["pageInfo"]["hasNextPage"] is True
    r = await gql(client, LIST, {"first": 2, "after": page["pageInfo"]["endCursor"]}, token=owner_token)
    rest = r.json()["data"]["organization"]["reports"]
    assert [e["node"]["id"] for e in rest["edges"]] == [made[0]]
    assert rest["pageInfo"]["hasNextPage"] is False
    r = await gql(client, LIST, {"first": 2, "after": "not-a-cursor"}, token=owner_token)
    assert error_codes(r.json()) == ["BAD_USER_INPUT"]
    r = await gql(client, REPORT, {"id": made[1]}, token=owner_token)
    assert r.json()["data"]["report"]["kind"] == "ACCESS"


async def test_html_view_draws_an_escaped_svg_chart_under_a_strict_csp(
    client: httpx.AsyncClient, tenant: Tenant, owner_token: str, database_url: str
) -> None:
    key_id = (await create_key(client, owner_token, "x<script>alert(1)</script>", "reports:read"))["apiKey"]["id"]
    day = now().date() - timedelta(days=1)
    bulk(
        database_url,
        USAGE_ROW,
        [usage(tenant.org_id, day, "api_key", key_id, 5), usage(tenant.org_id, day, "total", "", 5)],
    )
    report = await generated(client, owner_token, "USAGE")
    r = await client.get(report["htmlUrl"], headers=auth(owner_token))
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    csp = r.headers["content-security-policy"]
    assert csp.startswith("default-src 'none'; style-src 'sha256-")
    assert "script-src" not in csp
    assert "unsafe-inline" not in csp
    assert r.headers.get_list("content-security-policy") == [csp]
    assert "<svg" in r.text
    assert "<rect" in r.text
    assert "<script" not in r.text
    assert "x&lt;script&gt;alert(1)&lt;/script&gt;" in r.text


def test_the_chart_escapes_its_labels_and_scales_its_bars() -> None:
    svg = bar_chart(
        {
            "title": "<b>t</b>",
            "unit": "u",
            "bars": [
                {"label": "</text><script>x</script>", "value": 10, "tone": "attention"},
                {"label": "half", "value": 5, "tone": "nope"},
            ],
        }
    )
    assert "<script" not in svg
    assert "&lt;/text&gt;&lt;script&gt;" in svg
    assert "&lt;b&gt;t&lt;/b&gt;" in svg
    widths = [float(w) for w in re.findall(r'<rect [^>]*width="([\d.]+)"[^>]*><title>', svg)]
    assert len(widths) == 2
    assert widths[0] == 2 * widths[1]
    assert 'fill="#d9822b"' in svg
    assert 'fill="#3b6fb6"' in svg


# -- bad inputs -----------------------------------------------------------------------------------


async def test_from_after_to_is_refused(client: httpx.AsyncClient, owner_token: str, database_url: str) -> None:
    body = await generate(client, owner_token, "USAGE", now(), now() - timedelta(days=1))
    assert error_codes(body) == ["BAD_USER_INPUT"]
    assert body["errors"][0]["extensions"]["field"] == "from"
    assert sql(database_url, "SELECT count(*) FROM reports")[0][0] == 0


async def test_a_range_beyond_the_plans_retention_is_refused(client: httpx.AsyncClient, database_url: str) -> None:
    free = await make_tenant(database_url, slug="short", email="owner@short.test", plan="free")
    token = (await login(client, free))["accessToken"]
    body = await generate(client, token, "USAGE", now() - timedelta(days=31), now())
    assert error_codes(body) == ["BAD_USER_INPUT"]
    assert body["errors"][0]["extensions"]["retentionDays"] == 30
    assert (await generate(client, token, "USAGE", now() - timedelta(days=29), now())).get("data")
    assert sql(database_url, "SELECT count(*) FROM reports")[0][0] == 1


async def test_an_unknown_kind_is_refused(client: httpx.AsyncClient, owner_token: str, database_url: str) -> None:
    r = await gql(
        client,
        GENERATE,
        {"kind": "PAYROLL", "from": stamp(now() - timedelta(days=1)), "to": stamp(now())},
        token=owner_token,
    )
    assert r.status_code == 400
    assert "PAYROLL" in r.json()["errors"][0]["message"]
    assert sql(database_url, "SELECT count(*) FROM reports")[0][0] == 0


async def test_another_tenants_report_answers_like_a_missing_one(
    client: httpx.AsyncClient, tenant: Tenant, owner_token: str, database_url: str
) -> None:
    other = await make_tenant(database_url, slug="other", email="owner@other.test")
    theirs = await generated(client, (await login(client, other))["accessToken"], "ACCESS")
    missing = "00000000-0000-4000-8000-000000000000"
    for suffix in ("csv", "json", "html"):
        a = await client.get(f"/reports/{theirs['id']}.{suffix}", headers=auth(owner_token))
        b = await client.get(f"/reports/{missing}.{suffix}", headers=auth(owner_token))
        assert a.status_code == b.status_code == 404
        assert (
            a.json() == b.json() == {"errors": [{"message": "Report not found.", "extensions": {"code": "NOT_FOUND"}}]}
        )
    crossed = sql(
        database_url,
        "SELECT resource_id, result FROM audit_log WHERE chain = :c AND action = 'authz_cross_tenant'",
        c=tenant.org_id,
    )
    assert crossed == [(theirs["id"], "denied")] * 3  # the missing id is no one's: nothing recorded
    a = (await gql(client, REPORT, {"id": theirs["id"]}, token=owner_token)).json()
    b = (await gql(client, REPORT, {"id": missing}, token=owner_token)).json()
    assert a["data"] == b["data"] == {"report": None}
    assert error_codes(a) == error_codes(b) == ["NOT_FOUND"]
    assert a["errors"][0]["message"] == b["errors"][0]["message"]


async def test_a_download_without_credentials_is_401(client: httpx.AsyncClient, owner_token: str) -> None:
    report = await generated(client, owner_token, "ACCESS")
    for url in (report["csvUrl"], report["jsonUrl"], report["htmlUrl"]):
        r = await client.get(url)
        assert r.status_code == 401
        assert error_codes(r.json()) == ["UNAUTHENTICATED"]
        assert "www-authenticate" in r.headers


async def test_a_download_without_reports_read_is_403(
    client: httpx.AsyncClient, owner_token: str, database_url: str
) -> None:
    report = await generated(client, owner_token, "ACCESS")
    key = (await create_key(client, owner_token, "ro", "organization:read"))["secret"]
    for url in (report["csvUrl"], report["jsonUrl"], report["htmlUrl"]):
        r = await client.get(url, headers={"X-API-Key": key})
        assert r.status_code == 403
        assert error_codes(r.json()) == ["FORBIDDEN"]
        assert r.json()["errors"][0]["extensions"]["requiredScopes"] == [["reports:read"]]
    denied = sql(
        database_url,
        "SELECT actor_type, resource_type FROM audit_log WHERE chain = :c AND action = 'authz_fail'",
        c=report_org(database_url, report["id"]),
    )
    assert denied == [("api_key", "report")] * 3
    viewer = await make_tenant(database_url, slug="view", email="viewer@view.test", role="viewer")
    token = (await login(client, viewer))["accessToken"]
    assert (await client.get(report["jsonUrl"], headers=auth(token))).status_code == 403
    assert error_codes(await generate(client, token, "ACCESS", now() - timedelta(days=1), now())) == ["FORBIDDEN"]


async def test_reports_per_month_reached_is_quota_exceeded(client: httpx.AsyncClient, database_url: str) -> None:
    free = await make_tenant(database_url, slug="few", email="owner@few.test", plan="free")
    token = (await login(client, free))["accessToken"]
    for _ in range(5):
        await generated(client, token, "ACCESS")
    body = await generate(client, token, "ACCESS", now() - timedelta(days=1), now())
    assert error_codes(body) == ["QUOTA_EXCEEDED"]
    assert body["errors"][0]["extensions"]["limit"] == 5
    # last month's reports do not count
    last_month = datetime.now(UTC).replace(day=1) - timedelta(days=1)
    sql(database_url, "UPDATE reports SET created_at = :at WHERE organization_id = :o", at=last_month, o=free.org_id)
    await generated(client, token, "ACCESS")


async def test_concurrent_generations_at_the_boundary_admit_exactly_the_limit(
    client: httpx.AsyncClient, database_url: str
) -> None:
    free = await make_tenant(database_url, slug="race", email="owner@race.test", plan="free")
    sql(
        database_url,
        "UPDATE organizations SET limit_overrides = :v WHERE id = :id",
        v=json.dumps({"REPORTS_PER_MONTH": 3}),
        id=free.org_id,
    )
    token = (await login(client, free))["accessToken"]
    start, end = now() - timedelta(days=1), now()
    results = await asyncio.gather(*(generate(client, token, "ACCESS", start, end) for _ in range(10)))
    assert len([r for r in results if r.get("data")]) == 3, results
    assert all(error_codes(r) == ["QUOTA_EXCEEDED"] for r in results if not r.get("data"))
    assert sql(database_url, "SELECT count(*) FROM reports WHERE organization_id = :o", o=free.org_id)[0][0] == 3


async def test_csv_cells_starting_with_formula_characters_are_neutralized(
    client: httpx.AsyncClient, tenant: Tenant, owner_token: str, database_url: str
) -> None:
    names = ['=HYPERLINK("http://evil.test")', "+1+1", "-2+3", "@SUM(A1)", "plain"]
    for name in names:
        await create_key(client, owner_token, name, "reports:read")
    report = await generated(client, owner_token, "ACCESS")
    c = await client.get(report["csvUrl"], headers=auth(owner_token))
    rows = list(csv.DictReader(io.StringIO(c.text)))
    cells = sorted(r["name"] for r in rows if r["section"] == "api_key")
    assert cells == sorted(['\'=HYPERLINK("http://evil.test")', "'+1+1", "'-2+3", "'@SUM(A1)", "plain"])
    assert not any(v.startswith(("=", "+", "-", "@")) for r in rows for v in r.values())
    # the JSON keeps the data as it is
    body = await download_json(client, owner_token, report)
    assert sorted(r["name"] for r in rows_of(body, "api_key")) == sorted(names)


async def test_a_huge_range_is_written_and_downloaded_in_chunks(
    app: Any, client: httpx.AsyncClient, database_url: str
) -> None:
    big = await make_tenant(database_url, slug="big", email="owner@big.test", plan="enterprise")
    token = (await login(client, big))["accessToken"]
    first = now().date() - timedelta(days=1000)
    bulk(
        database_url,
        USAGE_ROW,
        [
            usage(big.org_id, first + timedelta(days=d), kind, subject, d + 1)
            for d in range(1000)
            for kind, subject in (("total", ""), ("api_key", "k-1"), ("user", big.user_id))
        ],
    )
    report = await generated(client, token, "USAGE", now() - timedelta(days=1001), now())
    assert report["summary"]["rowCount"] == 3000
    assert len(report["summary"]["chart"]["bars"]) <= 60

    async def raw_get(path: str) -> list[dict[str, Any]]:
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": [(b"host", b"testserver"), (b"authorization", f"Bearer {token}".encode())],
            "client": ("127.0.0.1", 40000),
            "server": ("testserver", 80),
            "state": {},
        }
        sent: list[dict[str, Any]] = []
        never = asyncio.Event()

        async def receive() -> dict[str, Any]:
            await never.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await app(scope, receive, send)
        return sent

    for url, digest in ((report["jsonUrl"], report["digest"]), (report["csvUrl"], None)):
        messages = await raw_get(url)
        assert messages[0]["type"] == "http.response.start"
        assert messages[0]["status"] == 200
        assert not any(k == b"content-length" for k, _ in messages[0]["headers"])
        bodies = [m for m in messages if m["type"] == "http.response.body"]
        chunks = [m["body"] for m in bodies if m["body"]]
        # a head, then one chunk per 500 stored rows (and the JSON's tail): never the whole report at once
        assert len(chunks) >= 3000 // 500 + 1
        assert all(m.get("more_body") for m in bodies[:-1])
        total = b"".join(chunks)
        separator = b"]," if url.endswith(".json") else b"\r\n"
        assert max(c.count(separator) for c in chunks) <= 500 + 1
        assert max(len(c) for c in chunks) < len(total) / 3
        if digest is not None:
            assert hashlib.sha256(total).hexdigest() == digest
