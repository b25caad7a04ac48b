"""Report schedules naming webhooks, on SQLite and PostgreSQL: the generated report announced to a real
receiver that verifies the `report.ready` message with the `standardwebhooks` library, another tenant's
webhook refused, a deleted webhook skipped, and each period's mail and message written once across two
gateways."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import httpx
import pytest

from gateway.app import create_app
from gateway.report_scheduler import ReportScheduler
from tests.conftest import Tenant, error_codes, gql, login, make_settings, make_tenant, running, sql
from tests.schema.test_report_schedules import count, make_due, moment, schedule_input, today_at
from tests.webhook_helpers import FAST, create_webhook, eventually, receiving, webhook_gateway, webhooks
from tests.webhook_receiver import Receiver

SCHEDULE = """mutation($input: ReportScheduleInput!) { scheduleReport(input: $input) {
  id recipients webhookIds } }"""
LIST = "{ organization { reportSchedules { id recipients webhookIds } } }"
DELETE_WEBHOOK = "mutation($id: ID!) { deleteWebhook(id: $id) }"


gateway = webhook_gateway


@pytest.fixture
def receiver() -> Iterator[tuple[Receiver, str]]:
    with receiving("/hooks/reports") as found:
        yield found


async def schedule(client: httpx.AsyncClient, token: str, **overrides: Any) -> dict[str, Any]:
    body = (await gql(client, SCHEDULE, {"input": schedule_input(**overrides)}, token=token)).json()
    assert body.get("data"), body
    return body["data"]["scheduleReport"]  # type: ignore[no-any-return]


def delivered(url: str) -> list[Any]:
    return sql(url, "SELECT id, event_id, event_kind FROM webhook_deliveries WHERE status = 'delivered' ORDER BY id")


async def test_a_scheduled_report_reaches_its_webhook_signed(
    database_url: str, signing_key: str, tenant: Tenant, receiver: tuple[Receiver, str]
) -> None:
    r, url = receiver
    async with gateway(database_url, signing_key) as (app, client):
        owner = (await login(client, tenant))["accessToken"]
        # subscribed to a security event kind only: naming it on the schedule is what sends it reports
        hook_id, r.secret = await create_webhook(client, owner, url, ["ACCOUNT_LOCKED"])
        made = await schedule(client, owner, kind="ACCESS", recipients=[], webhookIds=[hook_id])
        assert (made["recipients"], made["webhookIds"]) == ([], [hook_id])
        listed = (await gql(client, LIST, token=owner)).json()["data"]["organization"]["reportSchedules"]
        assert listed == [{"id": made["id"], "recipients": [], "webhookIds": [hook_id]}]
        make_due(database_url, made["id"], today_at(6))
        runner = ReportScheduler(app.state.services, clock=lambda: today_at(6, 30))
        assert await runner.run_due() == {"generated": 1}
        [arrival] = await eventually(lambda: r.accepted)
        [row] = await eventually(lambda: delivered(database_url), within=5)
        shown = (await webhooks(client, owner))[0]["deliveries"]
    [(report_id, kind, start, end)] = sql(database_url, "SELECT id, kind, period_start, period_end FROM reports")
    assert r.rejected == []
    assert r.replays == []
    assert arrival.message_id == row[0]
    assert arrival.headers["webhook-signature"].startswith("v1,")
    assert row[1:] == (report_id, "report.ready")
    payload = arrival.payload
    assert payload["type"] == "report.ready"
    data = payload["data"]
    assert (data["reportId"], data["kind"], data["scheduleId"]) == (report_id, kind, made["id"])
    assert data["organizationId"] == tenant.org_id
    assert (data["periodStart"], data["periodEnd"]) == (
        moment(start).isoformat().replace("+00:00", "Z"),
        moment(end).isoformat().replace("+00:00", "Z"),
    )
    assert moment(start) == today_at(0) - timedelta(days=1)
    assert set(data["urls"]) == {"html", "pdf", "xlsx", "csv"}
    assert data["urls"]["pdf"].endswith(f"/reports/{report_id}.pdf")
    assert "rows" not in data  # where to fetch the report, never its content
    assert [(d["eventType"], d["eventId"], d["status"]) for d in shown] == [("report.ready", report_id, "DELIVERED")]
    assert count(database_url, "mail_outbox") == 0  # no email recipients: nothing mailed


async def test_another_tenants_webhook_is_refused(
    database_url: str, signing_key: str, tenant: Tenant, receiver: tuple[Receiver, str]
) -> None:
    _, url = receiver
    other = await make_tenant(database_url, slug="other", email="owner@other.test")
    async with gateway(database_url, signing_key) as (_, client):
        owner = (await login(client, tenant))["accessToken"]
        theirs, _ = await create_webhook(client, (await login(client, other))["accessToken"], url)
        ours, _ = await create_webhook(client, owner, url)
        for ids in ([theirs], [ours, theirs], ["no-such-webhook"], ["x" * 37]):
            body = (await gql(client, SCHEDULE, {"input": schedule_input(webhookIds=ids)}, token=owner)).json()
            assert error_codes(body) == ["NOT_FOUND"], ids
            assert body["data"] is None
        too_many = [ours] + [f"w{i}" for i in range(20)]
        body = (await gql(client, SCHEDULE, {"input": schedule_input(webhookIds=too_many)}, token=owner)).json()
        assert error_codes(body) == ["BAD_USER_INPUT"]
        body = (await gql(client, SCHEDULE, {"input": schedule_input(recipients=[])}, token=owner)).json()
        assert error_codes(body) == ["BAD_USER_INPUT"]  # neither a recipient nor a webhook
        assert count(database_url, "report_schedules") == 0
        made = await schedule(client, owner, webhookIds=[ours, ours])
    assert made["webhookIds"] == [ours]
    crossed = sql(
        database_url,
        "SELECT resource_type, resource_id, result FROM audit_log WHERE chain = :c AND action = 'authz_cross_tenant'",
        c=tenant.org_id,
    )
    assert crossed == [("webhook", theirs, "denied")] * 2  # the two attempts naming it; unknown ids are not


async def test_a_deleted_or_disabled_webhook_gets_nothing(
    database_url: str, signing_key: str, tenant: Tenant, receiver: tuple[Receiver, str]
) -> None:
    r, url = receiver
    async with gateway(database_url, signing_key) as (app, client):
        owner = (await login(client, tenant))["accessToken"]
        gone, _ = await create_webhook(client, owner, url + "/gone")
        off, _ = await create_webhook(client, owner, url + "/off")
        kept, r.secret = await create_webhook(client, owner, url)
        made = await schedule(client, owner, webhookIds=[gone, off, kept])
        body = (await gql(client, DELETE_WEBHOOK, {"id": gone}, token=owner)).json()
        assert body["data"] == {"deleteWebhook": True}
        # disabled after repeated failed deliveries (gateway/webhooks.py): still named, sent nothing
        sql(database_url, "UPDATE webhooks SET disabled_at = :t WHERE id = :id", t=today_at(0), id=off)
        listed = (await gql(client, LIST, token=owner)).json()["data"]["organization"]["reportSchedules"]
        assert listed[0]["webhookIds"] == [off, kept]
        make_due(database_url, made["id"], today_at(6))
        runner = ReportScheduler(app.state.services, clock=lambda: today_at(6, 30))
        assert await runner.run_due() == {"generated": 1}
        await eventually(lambda: r.accepted)
    assert sql(database_url, "SELECT webhook_id FROM webhook_deliveries") == [(kept,)]
    assert count(database_url, "mail_outbox") == 1


async def test_two_gateways_write_each_periods_mail_and_message_once(
    database_url: str, signing_key: str, tenant: Tenant, receiver: tuple[Receiver, str]
) -> None:
    r, url = receiver
    one = create_app(make_settings(database_url, signing_key, **FAST))
    two = create_app(make_settings(database_url, signing_key, **FAST))
    async with running(one) as client, running(two):
        owner = (await login(client, tenant))["accessToken"]
        hook_id, r.secret = await create_webhook(client, owner, url)
        made = await schedule(client, owner, hourOfDay=6, webhookIds=[hook_id])
        make_due(database_url, made["id"], today_at(6) - timedelta(days=4))
        clock = lambda: today_at(6, 30)  # noqa: E731
        runners = [ReportScheduler(app.state.services, clock=clock) for app in (one, two)]
        for _ in range(200):  # a runner leaves a schedule another one holds: pass again until all is run
            await asyncio.gather(*(runner.run_due() for runner in runners))
            if moment(sql(database_url, "SELECT next_run_at FROM report_schedules")[0][0]) > clock():
                break
            await asyncio.sleep(0.05)
        await eventually(lambda: len(delivered(database_url)) == 5)
        await asyncio.sleep(0.5)  # time for a duplicate to arrive, if one were coming
    reports = {rid for (rid,) in sql(database_url, "SELECT id FROM reports")}
    assert len(reports) == 5
    assert count(database_url, "report_schedule_runs") == 5
    assert count(database_url, "mail_outbox") == 5
    assert sorted(e for _, e, _ in delivered(database_url)) == sorted(reports)
    assert count(database_url, "webhook_deliveries") == 5
    assert sorted(a.payload["data"]["reportId"] for a in r.accepted) == sorted(reports)
    assert r.replays == []
    assert r.rejected == []
