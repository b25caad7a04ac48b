"""Report schedules on SQLite and PostgreSQL: creating, listing and deleting them, their bad inputs, the
runner generating each due period once (across two gateway apps, and after downtime), and the mail to the
recipients."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest

from gateway.app import create_app
from gateway.report_scheduler import ReportScheduler
from resolvers.mail import read_mailbox
from resolvers.report_schedules import next_run, period_for
from tests.conftest import Tenant, error_codes, gql, login, make_settings, make_tenant, running, sql

SCHEDULE = """mutation($input: ReportScheduleInput!) { scheduleReport(input: $input) {
  id kind cadence timeZone hourOfDay recipients nextRunAt lastRunAt } }"""
DELETE = "mutation($id: ID!) { deleteReportSchedule(id: $id) }"
LIST = "{ organization { reportSchedules { id kind cadence timeZone recipients nextRunAt lastRunAt } } }"


@pytest.fixture
async def owner_token(client: httpx.AsyncClient, tenant: Tenant) -> str:
    return (await login(client, tenant))["accessToken"]  # type: ignore[no-any-return]


def schedule_input(**overrides: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "kind": "USAGE",
        "cadence": "DAILY",
        "timeZone": "UTC",
        "hourOfDay": 6,
        "recipients": ["owner@acme.test"],
    }
    values.update(overrides)
    return values


async def schedule(client: httpx.AsyncClient, token: str, **overrides: Any) -> dict[str, Any]:
    body = (await gql(client, SCHEDULE, {"input": schedule_input(**overrides)}, token=token)).json()
    assert body.get("data"), body
    return body["data"]["scheduleReport"]  # type: ignore[no-any-return]


def today_at(hour: int, minute: int = 0) -> datetime:
    return datetime.combine(datetime.now(UTC).date(), time(hour, minute), tzinfo=UTC)


def make_due(url: str, schedule_id: str, at: datetime) -> None:
    sql(url, "UPDATE report_schedules SET next_run_at = :t WHERE id = :id", t=at, id=schedule_id)


def moment(value: Any) -> datetime:
    """A time column as read by `sql`: aware on PostgreSQL, UTC text on SQLite."""
    return value if isinstance(value, datetime) else datetime.fromisoformat(value).replace(tzinfo=UTC)


def count(url: str, table: str) -> int:
    return int(sql(url, f"SELECT count(*) FROM {table}")[0][0])


# -- managing ------------------------------------------------------------------------------------


async def test_a_schedule_is_listed_audited_and_deleted(
    client: httpx.AsyncClient, tenant: Tenant, owner_token: str, database_url: str
) -> None:
    before = datetime.now(UTC)
    made = await schedule(client, owner_token, cadence="WEEKLY", timeZone="Europe/Berlin", hourOfDay=7)
    assert (made["kind"], made["cadence"], made["timeZone"], made["hourOfDay"]) == (
        "USAGE",
        "WEEKLY",
        "Europe/Berlin",
        7,
    )
    assert made["recipients"] == ["owner@acme.test"]
    next_at = datetime.fromisoformat(made["nextRunAt"])
    berlin = next_at.astimezone(ZoneInfo("Europe/Berlin"))
    assert (berlin.weekday(), berlin.hour, berlin.minute) == (0, 7, 0)  # Mondays at 07:00 in Berlin
    assert before < next_at <= before + timedelta(days=7, hours=2)
    listed = (await gql(client, LIST, token=owner_token)).json()["data"]["organization"]["reportSchedules"]
    assert [s["id"] for s in listed] == [made["id"]]
    audited = sql(
        database_url,
        "SELECT resource_id FROM audit_log WHERE chain = :c AND action = 'report_scheduled'",
        c=tenant.org_id,
    )
    assert audited == [(made["id"],)]
    other = await make_tenant(database_url, slug="other", email="owner@other.test")
    other_token = (await login(client, other))["accessToken"]
    body = (await gql(client, DELETE, {"id": made["id"]}, token=other_token)).json()
    assert error_codes(body) == ["NOT_FOUND"]
    crossed = sql(
        database_url,
        "SELECT resource_id FROM audit_log WHERE chain = :c AND action = 'authz_cross_tenant'",
        c=other.org_id,
    )
    assert crossed == [(made["id"],)]
    assert (await gql(client, LIST, token=other_token)).json()["data"]["organization"]["reportSchedules"] == []
    body = (await gql(client, DELETE, {"id": made["id"]}, token=owner_token)).json()
    assert body["data"] == {"deleteReportSchedule": True}
    assert count(database_url, "report_schedules") == 0


@pytest.mark.parametrize("zone", ["Mars/Olympus_Mons", "../../etc/passwd", "", "europe/berlin", "UTC+2"])
async def test_an_invalid_time_zone_is_refused(
    client: httpx.AsyncClient, owner_token: str, database_url: str, zone: str
) -> None:
    body = (await gql(client, SCHEDULE, {"input": schedule_input(timeZone=zone)}, token=owner_token)).json()
    assert error_codes(body) == ["BAD_USER_INPUT"]
    assert body["errors"][0]["extensions"]["field"] == "timeZone"
    assert count(database_url, "report_schedules") == 0


async def test_an_invalid_cadence_or_hour_is_refused(
    client: httpx.AsyncClient, owner_token: str, database_url: str
) -> None:
    r = await gql(client, SCHEDULE, {"input": schedule_input(cadence="HOURLY")}, token=owner_token)
    assert r.status_code == 400
    assert "HOURLY" in r.json()["errors"][0]["message"]
    for hour in (24, -1):
        body = (await gql(client, SCHEDULE, {"input": schedule_input(hourOfDay=hour)}, token=owner_token)).json()
        assert error_codes(body) == ["BAD_USER_INPUT"]
        assert body["errors"][0]["extensions"]["field"] == "hourOfDay"
    body = (await gql(client, SCHEDULE, {"input": schedule_input(recipients=[])}, token=owner_token)).json()
    assert error_codes(body) == ["BAD_USER_INPUT"]
    assert count(database_url, "report_schedules") == 0


async def test_a_recipient_outside_the_organization_is_refused(
    client: httpx.AsyncClient, owner_token: str, database_url: str
) -> None:
    await make_tenant(database_url, slug="other", email="owner@other.test")
    for outsider in ("owner@other.test", "nobody@acme.test"):
        body = (
            await gql(
                client,
                SCHEDULE,
                {"input": schedule_input(recipients=["owner@acme.test", outsider])},
                token=owner_token,
            )
        ).json()
        assert error_codes(body) == ["BAD_USER_INPUT"]
        assert body["errors"][0]["extensions"]["field"] == "recipients"
        assert body["errors"][0]["extensions"]["notMembers"] == [outsider]
    assert count(database_url, "report_schedules") == 0
    # a member's address in other letters is the member
    assert (await schedule(client, owner_token, recipients=["Owner@ACME.test"]))["recipients"] == ["owner@acme.test"]


async def test_scheduling_needs_reports_generate(client: httpx.AsyncClient, database_url: str) -> None:
    viewer = await make_tenant(database_url, slug="view", email="viewer@view.test", role="viewer")
    token = (await login(client, viewer))["accessToken"]
    body = (await gql(client, SCHEDULE, {"input": schedule_input(recipients=["viewer@view.test"])}, token=token)).json()
    assert error_codes(body) == ["FORBIDDEN"]
    assert count(database_url, "report_schedules") == 0


# -- when they run -------------------------------------------------------------------------------


def test_periods_end_at_local_midnight_before_the_run() -> None:
    berlin = ZoneInfo("Europe/Berlin")
    after = datetime(2026, 3, 28, 12, tzinfo=UTC)  # the day before the clocks go forward
    run = next_run("DAILY", berlin, 6, after)
    assert run == datetime(2026, 3, 29, 4, tzinfo=UTC)  # 06:00 summer time
    assert period_for("DAILY", berlin, run) == (
        datetime(2026, 3, 27, 23, tzinfo=UTC),
        datetime(2026, 3, 28, 23, tzinfo=UTC),
    )
    weekly = next_run("WEEKLY", ZoneInfo("UTC"), 0, datetime(2026, 12, 7, 0, tzinfo=UTC))  # a Monday, at 00:00
    assert weekly == datetime(2026, 12, 14, tzinfo=UTC)
    assert period_for("WEEKLY", ZoneInfo("UTC"), weekly) == (datetime(2026, 12, 7, tzinfo=UTC), weekly)
    monthly = next_run("MONTHLY", ZoneInfo("America/New_York"), 9, datetime(2026, 12, 15, tzinfo=UTC))
    assert monthly == datetime(2027, 1, 1, 14, tzinfo=UTC)
    assert period_for("MONTHLY", ZoneInfo("America/New_York"), monthly) == (
        datetime(2026, 12, 1, 5, tzinfo=UTC),
        datetime(2027, 1, 1, 5, tzinfo=UTC),
    )


async def test_a_due_schedule_runs_once_and_mails_its_recipients(
    app: Any, client: httpx.AsyncClient, tenant: Tenant, owner_token: str, database_url: str
) -> None:
    made = await schedule(client, owner_token, kind="ACCESS")
    make_due(database_url, made["id"], datetime.now(UTC) - timedelta(minutes=1))
    runner = ReportScheduler(app.state.services)
    assert await runner.run_due() == {"generated": 1}
    assert await runner.run_due() == {}
    reports = sql(database_url, "SELECT id, kind, created_by_type FROM reports")
    assert [(k, t) for _, k, t in reports] == [("ACCESS", "user")]
    runs = sql(database_url, "SELECT report_id, status FROM report_schedule_runs")
    assert runs == [(reports[0][0], "generated")]
    async with app.state.services.db.session() as db:
        mail = await read_mailbox(db, app.state.services.mail, to="owner@acme.test")
    assert [m.template for m in mail] == ["report_ready"]
    assert f"/reports/{reports[0][0]}.pdf" in mail[0].text
    assert f"/reports/{reports[0][0]}.xlsx" in mail[0].text
    assert mail[0].subject.startswith("Acme: Access report for ")
    assert mail[0].organization_id == tenant.org_id
    listed = (await gql(client, LIST, token=owner_token)).json()["data"]["organization"]["reportSchedules"]
    assert listed[0]["lastRunAt"] is not None
    assert datetime.fromisoformat(listed[0]["nextRunAt"]) > datetime.now(UTC)
    generated = sql(
        database_url,
        "SELECT actor_type, actor_id FROM audit_log WHERE chain = :c AND action = 'report_generated'",
        c=tenant.org_id,
    )
    assert generated == [("system", f"report_schedule:{made['id']}")]


async def test_missed_runs_are_caught_up_once_after_downtime(
    app: Any, client: httpx.AsyncClient, owner_token: str, database_url: str
) -> None:
    made = await schedule(client, owner_token, hourOfDay=6)
    # the gateway was down for three days: it comes back at 06:30 UTC today
    make_due(database_url, made["id"], today_at(6) - timedelta(days=3))
    back = ReportScheduler(app.state.services, clock=lambda: today_at(6, 30))
    assert await back.run_due() == {"generated": 4}
    periods = sql(database_url, "SELECT period_start, period_end FROM reports ORDER BY period_start")
    midnight = today_at(0)
    assert [(moment(s), moment(e)) for s, e in periods] == [
        (midnight - timedelta(days=d), midnight - timedelta(days=d - 1)) for d in (4, 3, 2, 1)
    ]
    assert await back.run_due() == {}
    assert count(database_url, "reports") == 4
    next_at = moment(sql(database_url, "SELECT next_run_at FROM report_schedules")[0][0])
    assert next_at == today_at(6) + timedelta(days=1)
    assert count(database_url, "mail_outbox") == 4


async def test_a_period_already_run_is_never_generated_again(
    app: Any, client: httpx.AsyncClient, tenant: Tenant, owner_token: str, database_url: str
) -> None:
    made = await schedule(client, owner_token, hourOfDay=6)
    make_due(database_url, made["id"], today_at(6) - timedelta(days=1))
    # another process ran yesterday's period and died before it moved the schedule on
    sql(
        database_url,
        "INSERT INTO report_schedule_runs (id, schedule_id, organization_id, period_start, period_end, status,"
        " created_at) VALUES ('r-1', :s, :o, :a, :b, 'generated', :a)",
        s=made["id"],
        o=tenant.org_id,
        a=today_at(0) - timedelta(days=2),
        b=today_at(0) - timedelta(days=1),
    )
    runner = ReportScheduler(app.state.services, clock=lambda: today_at(6, 30))
    assert await runner.run_due() == {"duplicate": 1, "generated": 1}
    assert [moment(s) for (s,) in sql(database_url, "SELECT period_start FROM reports")] == [
        today_at(0) - timedelta(days=1)
    ]
    assert count(database_url, "report_schedule_runs") == 2


async def test_two_gateways_run_each_due_period_once(
    client: httpx.AsyncClient, owner_token: str, database_url: str, signing_key: str
) -> None:
    # SECURITY: priced by the audit entries it reads, charged to the tenant's budget as generateReport is
    made = await schedule(client, owner_token, kind="SECURITY", hourOfDay=6)
    make_due(database_url, made["id"], today_at(6) - timedelta(days=5))
    one, two = (
        create_app(make_settings(database_url, signing_key)),
        create_app(make_settings(database_url, signing_key)),
    )
    # each app's own runner makes a pass as it starts; two more runners, one per app, race them
    async with running(one), running(two):
        clock = lambda: today_at(6, 30)  # noqa: E731
        runners = [ReportScheduler(app.state.services, clock=clock) for app in (one, two)]
        for _ in range(200):  # a runner leaves a schedule another one holds: pass again until all is run
            await asyncio.gather(*(r.run_due() for r in runners))
            if moment(sql(database_url, "SELECT next_run_at FROM report_schedules")[0][0]) > clock():
                break
            await asyncio.sleep(0.05)
    starts = [moment(s) for (s,) in sql(database_url, "SELECT period_start FROM reports ORDER BY period_start")]
    assert starts == [today_at(0) - timedelta(days=d) for d in range(6, 0, -1)]
    assert count(database_url, "report_schedule_runs") == 6
    assert count(database_url, "mail_outbox") == 6


async def test_a_refused_generation_is_recorded_and_the_schedule_moves_on(
    client: httpx.AsyncClient, database_url: str, signing_key: str
) -> None:
    small = await make_tenant(database_url, slug="small", email="owner@small.test", limits={"REPORTS_PER_MONTH": 1})
    app = create_app(make_settings(database_url, signing_key))
    async with running(app) as c:
        token = (await login(c, small))["accessToken"]
        made = await schedule(c, token, recipients=["owner@small.test"], hourOfDay=6)
        make_due(database_url, made["id"], today_at(6) - timedelta(days=2))
        runner = ReportScheduler(app.state.services, clock=lambda: today_at(6, 30))
        outcomes = await runner.run_due()
    # the month's quota of one report: the oldest period gets it, the two others are refused
    assert outcomes == {"generated": 1, "refused": 2}
    refused = sql(database_url, "SELECT detail FROM report_schedule_runs WHERE status = 'refused'")
    assert all(d.startswith("QUOTA_EXCEEDED") for (d,) in refused)
    next_at = moment(sql(database_url, "SELECT next_run_at FROM report_schedules")[0][0])
    assert next_at == today_at(6) + timedelta(days=1)
