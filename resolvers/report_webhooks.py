"""Report schedules' webhooks: the organization's webhooks a schedule names, and the `report.ready` message
each of them gets when the schedule generates a report (docs/reports.md, "Schedules").

A message is a row of the webhook outbox (`webhook_deliveries`), added in the transaction that records the
schedule's run and its report, as a security event's deliveries are added with the event: the gateway's
delivery worker (`gateway/webhooks.py`) signs it (Standard Webhooks), retries it and sends it once. A
period is run once (`report_schedule_runs`), so its messages are written once.

Naming a webhook on a schedule is its subscription to that schedule's reports: the webhook's `events`
(security event kinds) say which security events it gets and are not consulted here. A webhook disabled
since is skipped; one deleted is taken off its schedules (`resolvers.webhooks.delete_webhook`).

The message carries where to download the report, never its rows: the links need a signed-in member
with `reports:read`, as the mailed ones do.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlmodel import col

from authz.errors import BadUserInput, NotFound
from resolvers.deps import RequestContext
from resolvers.report_builders import iso
from store.audit import AuditAction, AuditResult
from store.models import Report
from store.reporting import ReportSchedule, webhook_ids_of
from store.scoping import tenant_select
from store.security import Webhook, WebhookDelivery

REPORT_READY = "report.ready"
MAX_SCHEDULE_WEBHOOKS = 20
WEBHOOK_NOT_FOUND = "Webhook not found."


async def check_webhooks(ctx: RequestContext, org_id: str, given: list[str]) -> list[str]:
    """The ids (deduplicated, in order) of webhooks of the organization; NOT_FOUND for an id of another
    tenant's webhook as for one of none (the former also recorded as `authz_cross_tenant`)."""
    ids = list(dict.fromkeys(str(w).strip() for w in given))
    if len(ids) > MAX_SCHEDULE_WEBHOOKS:
        raise BadUserInput(f"webhookIds names at most {MAX_SCHEDULE_WEBHOOKS} webhooks", field="webhookIds")
    if not ids:
        return []
    if any(not w or len(w) > 36 for w in ids):
        raise NotFound(WEBHOOK_NOT_FOUND)
    db = await ctx.db()
    found = (await db.execute(tenant_select(Webhook, org_id).where(col(Webhook.id).in_(ids)))).scalars().all()
    missing = [w for w in ids if w not in {h.id for h in found}]
    if missing:
        for webhook_id in await _of_other_tenants(ctx, missing):
            await ctx.audit_durably(
                AuditAction.AUTHZ_CROSS_TENANT,
                result=AuditResult.DENIED,
                resource_type="webhook",
                resource_id=webhook_id,
                details={"field": "scheduleReport"},
            )
        raise NotFound(WEBHOOK_NOT_FOUND)
    return ids


async def _of_other_tenants(ctx: RequestContext, ids: list[str]) -> list[str]:
    """Which of `ids` are webhooks of some organization: for the audit log only, the answer stays NOT_FOUND.

    # tenant-scope: deliberately across tenants (the caller's own were found already); nothing reaches the caller
    """
    rows = await (await ctx.db()).execute(select(col(Webhook.id)).where(col(Webhook.id).in_(ids)))
    return sorted(str(w) for w in rows.scalars().all())


def download_urls(base: str, report_id: str) -> dict[str, str]:
    root = f"{base.rstrip('/')}/reports/{report_id}"
    return {fmt: f"{root}.{fmt}" for fmt in ("html", "pdf", "xlsx", "csv")}


def report_ready_payload(schedule: ReportSchedule, report: Report, base: str, at: datetime) -> dict[str, Any]:
    return {
        "type": REPORT_READY,
        "timestamp": iso(at),
        "data": {
            "reportId": report.id,
            "organizationId": report.organization_id,
            "scheduleId": schedule.id,
            "kind": report.kind,
            "cadence": schedule.cadence,
            "timeZone": schedule.time_zone,
            "periodStart": iso(report.period_start),
            "periodEnd": iso(report.period_end),
            "rowCount": report.row_count,
            "digest": report.digest,
            "urls": download_urls(base, report.id),
        },
    }


async def queue_report_ready(ctx: RequestContext, schedule: ReportSchedule, report: Report, base: str) -> int:
    """One pending delivery for each webhook the schedule names that still exists and is enabled, added to
    the run's transaction; how many."""
    ids = webhook_ids_of(schedule)
    if not ids:
        return 0
    db = await ctx.db()
    hooks = (
        (
            await db.execute(
                tenant_select(Webhook, schedule.organization_id).where(
                    col(Webhook.id).in_(ids), col(Webhook.disabled_at).is_(None)
                )
            )
        )
        .scalars()
        .all()
    )
    now = ctx.services.now()
    payload = report_ready_payload(schedule, report, base, now)
    for hook in sorted(hooks, key=lambda h: ids.index(h.id)):
        db.add(
            WebhookDelivery(
                organization_id=schedule.organization_id,
                webhook_id=hook.id,
                event_id=report.id,
                event_kind=REPORT_READY,
                payload=payload,
                created_at=now,
                next_attempt_at=now,
            )
        )
    if hooks:
        await db.flush()
        policy = ctx.services.webhooks

        async def wake() -> None:
            if policy is not None:
                policy.wake()

        ctx.after_commit.append(wake)
    return len(hooks)
