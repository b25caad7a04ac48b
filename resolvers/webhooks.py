"""Webhook subscriptions of the caller's organization: creating (the signing secret shown once), deleting,
and listing them with their recent deliveries.

A URL is checked when the webhook is created, with the same guard as the identity providers' URLs
(`identity.outbound`, C-132): in prod only https, and never an address of the gateway's own network
(loopback, private, link-local, metadata...) unless the operator's allow-list names it. The delivery
worker checks it again on every attempt, against the address it then connects to.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from authz.errors import BadUserInput, Conflict, NotFound
from identity.outbound import OutboundRefused
from identity.security_events import SecurityEventKind
from identity.webhooks import WebhookPolicy, new_secret
from resolvers.common import tenant_of
from resolvers.deps import RequestContext
from resolvers.security_events import acting_user
from store.audit import AuditAction
from store.reporting import ReportSchedule, pack_recipients
from store.scoping import tenant_filter, tenant_select
from store.security import Webhook, WebhookDelivery

WEBHOOK_NOT_FOUND = "Webhook not found."
MAX_WEBHOOKS = 20
MAX_URL_LENGTH = 2048
MAX_DESCRIPTION_LENGTH = 200
RECENT_DELIVERIES = 10
KINDS = frozenset(k.value for k in SecurityEventKind)


@dataclass(frozen=True, slots=True)
class NewWebhook:
    url: str
    events: list[str]
    description: str | None = None


@dataclass(frozen=True, slots=True)
class CreatedWebhook:
    webhook: Webhook
    secret: str


def _policy(ctx: RequestContext) -> WebhookPolicy:
    policy: WebhookPolicy | None = ctx.services.webhooks
    if policy is None:
        raise RuntimeError("no webhook policy: Services.webhooks is None (gateway.app.build_services makes one)")
    return policy


def _events(kinds: list[str]) -> list[str]:
    if not kinds:
        raise BadUserInput("a webhook subscribes to at least one event kind", field="events")
    unknown = sorted(set(kinds) - KINDS)
    if unknown:
        raise BadUserInput("events names an unknown event kind", field="events")
    return sorted(set(kinds))


async def create_webhook(ctx: RequestContext, new: NewWebhook) -> CreatedWebhook:
    org_id = tenant_of(ctx.principal)
    policy = _policy(ctx)
    url = new.url.strip()
    if not url or len(url) > MAX_URL_LENGTH or "\x00" in url or any(c.isspace() for c in url):
        raise BadUserInput(f"url must be an http(s) URL of at most {MAX_URL_LENGTH} characters", field="url")
    description = (new.description or "").strip() or None
    if description is not None and (len(description) > MAX_DESCRIPTION_LENGTH or "\x00" in description):
        raise BadUserInput(f"description is at most {MAX_DESCRIPTION_LENGTH} characters", field="description")
    events = _events(new.events)
    try:
        _shape(url, policy)
        await policy.outbound.check_url(url)
    except OutboundRefused:
        # one answer for every refusal: a caller learns nothing of the gateway's network
        raise BadUserInput(
            "url is not an address the gateway may send to (https, and a public host)", field="url"
        ) from None
    db = await ctx.db()
    count = (await db.execute(select(func.count()).where(tenant_filter(Webhook, org_id)))).scalar_one()
    if count >= MAX_WEBHOOKS:
        raise Conflict(f"An organization has at most {MAX_WEBHOOKS} webhooks.")
    secret = new_secret()
    row = Webhook(
        organization_id=org_id,
        url=url,
        description=description,
        event_kinds=events,
        secret_encrypted=policy.box.encrypt(secret),
        created_by=await acting_user(ctx, db, org_id),
        created_at=ctx.services.now(),
    )
    db.add(row)
    await db.flush()
    ctx.audit(
        AuditAction.WEBHOOK_CREATED,
        resource_type="webhook",
        resource_id=row.id,
        details={"url": url, "events": events, "description": description},
    )
    return CreatedWebhook(row, secret)


def _shape(url: str, policy: WebhookPolicy) -> None:
    """An http(s) URL with a host (https only when the policy says so)."""
    try:
        parts = urlsplit(url)
        host, _ = parts.hostname, parts.port
    except ValueError:
        raise OutboundRefused("outbound_invalid_url") from None
    if parts.scheme not in ("http", "https") or not host or parts.username is not None:
        # credentials in the URL would be shown with it and written to the audit log: the signature
        # is what authenticates a delivery
        raise OutboundRefused("outbound_invalid_url")
    if policy.outbound.require_https and parts.scheme != "https":
        raise OutboundRefused("outbound_scheme_refused")


async def delete_webhook(ctx: RequestContext, webhook_id: str) -> bool:
    """The webhook and its delivery log, and its place on the report schedules that name it; a delivery
    being sent at that moment still arrives once."""
    org_id = tenant_of(ctx.principal)
    if not webhook_id or len(webhook_id) > 36:
        raise NotFound(WEBHOOK_NOT_FOUND)
    db = await ctx.db()
    row = (await db.execute(tenant_select(Webhook, org_id).where(col(Webhook.id) == webhook_id))).scalar_one_or_none()
    if row is None:
        raise NotFound(WEBHOOK_NOT_FOUND)
    await db.execute(
        delete(WebhookDelivery).where(
            tenant_filter(WebhookDelivery, org_id), col(WebhookDelivery.webhook_id) == webhook_id
        )
    )
    await db.execute(delete(Webhook).where(tenant_filter(Webhook, org_id), col(Webhook.id) == webhook_id))
    await _off_schedules(db, org_id, webhook_id)
    ctx.audit(
        AuditAction.WEBHOOK_DELETED,
        resource_type="webhook",
        resource_id=webhook_id,
        details={"url": row.url, "events": list(row.event_kinds)},
    )
    return True


async def _off_schedules(db: AsyncSession, org_id: str, webhook_id: str) -> None:
    named = pack_recipients([], [webhook_id])[0]
    for schedule in (await db.execute(tenant_select(ReportSchedule, org_id))).scalars().all():
        if named in schedule.recipients:
            schedule.recipients = [r for r in schedule.recipients if r != named]
    await db.flush()


async def list_webhooks(ctx: RequestContext, organization_id: str) -> list[Webhook]:
    if organization_id != tenant_of(ctx.principal):
        return []
    stmt = tenant_select(Webhook, organization_id).order_by(col(Webhook.created_at), col(Webhook.id))
    return list((await (await ctx.db()).execute(stmt)).scalars().all())


async def recent_deliveries(
    ctx: RequestContext, webhook: Webhook, first: int = RECENT_DELIVERIES
) -> list[WebhookDelivery]:
    """The webhook's latest deliveries, newest first (`first` 1 to 50)."""
    if not 1 <= first <= 50:
        raise BadUserInput("first must be between 1 and 50", field="first")
    stmt = (
        tenant_select(WebhookDelivery, webhook.organization_id)
        .where(col(WebhookDelivery.webhook_id) == webhook.id)
        .order_by(col(WebhookDelivery.created_at).desc(), col(WebhookDelivery.id).desc())
        .limit(first)
    )
    return list((await (await ctx.db()).execute(stmt)).scalars().all())
