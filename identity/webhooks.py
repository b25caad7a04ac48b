"""Webhooks for security events: the signing secret, the message a receiver gets, and the fan-out that
writes one delivery per subscribed webhook in the event's own transaction.

Messages follow the Standard Webhooks specification (https://www.standardwebhooks.com/): the body is
JSON `{"type": "security_event.<kind>", "timestamp": "<ISO 8601>", "data": {...}}`, and each attempt
carries `webhook-id` (the delivery's id, the same on every retry: a receiver recognises a message it has
seen), `webhook-timestamp` (the attempt's time, in seconds; the library's verifier refuses one more than
five minutes away) and `webhook-signature` (`v1,<base64 HMAC-SHA256 of id.timestamp.body>`), signed
with the `standardwebhooks` library. The secret is `whsec_` and 32 random bytes in base64, shown once at
creation and kept encrypted (`SecretBox`, purpose "webhook").

A delivery is a row of `webhook_deliveries`, written beside the event; the gateway's delivery worker
(`gateway/webhooks.py`) sends it after commit, never on a request's path.
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col
from standardwebhooks import Webhook as StandardWebhook

from identity.outbound import OutboundPolicy
from identity.secrets import SecretBox
from store.security import SecurityEvent, Webhook, WebhookDelivery

SECRET_PREFIX = "whsec_"
TYPE_PREFIX = "security_event."


@dataclass
class WebhookPolicy:
    """What creating webhooks and sending to them needs, built once in `gateway/app.py`.

    `outbound`: which URLs may be called (identity/outbound.py, C-132); `box`: the secrets' encryption;
    `waker`: set by this process's delivery worker while it runs, to look at the outbox now."""

    outbound: OutboundPolicy
    box: SecretBox
    waker: Callable[[], None] | None = field(default=None, repr=False)

    def wake(self) -> None:
        if self.waker is not None:
            self.waker()


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def message_type(kind: str) -> str:
    """A security event's kind prefixed (`security_event.account_locked`); other messages' kinds are
    their type already (`report.ready`)."""
    return kind if "." in kind else TYPE_PREFIX + kind


def _iso(at: datetime | None) -> str | None:
    if at is None:
        return None
    return at.astimezone(UTC).isoformat().replace("+00:00", "Z")


def event_data(event: SecurityEvent) -> dict[str, Any]:
    """What a receiver learns of an event: the fields of `SecurityEvent` in the API's names."""
    return {
        "id": event.id,
        "organizationId": event.organization_id,
        "kind": event.kind,
        "severity": event.severity,
        "summary": event.summary,
        "actorId": event.actor_id,
        "subjectId": event.subject_id,
        "clientIp": event.client_ip,
        "requestId": event.request_id,
        "details": event.details,
        "createdAt": _iso(event.created_at),
    }


def event_payload(event: SecurityEvent) -> dict[str, Any]:
    return {"type": message_type(event.kind), "timestamp": _iso(event.created_at), "data": event_data(event)}


def body_of(payload: dict[str, Any]) -> bytes:
    """The exact bytes sent (and signed): compact JSON, keys sorted."""
    return orjson.dumps(payload, option=orjson.OPT_SORT_KEYS)


def signed_headers(secret: str, message_id: str, body: bytes, at: datetime) -> dict[str, str]:
    """The three Standard Webhooks headers for one attempt at `at`."""
    signature = StandardWebhook(secret).sign(message_id, at, body)
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": signature,
    }


async def fan_out(db: AsyncSession, event: SecurityEvent) -> list[WebhookDelivery]:
    """One pending delivery for each enabled webhook of the event's organization subscribed to its kind,
    added to `db` (the event's transaction)."""
    hooks = (
        (
            await db.execute(
                select(Webhook).where(
                    col(Webhook.organization_id) == event.organization_id, col(Webhook.disabled_at).is_(None)
                )
            )
        )
        .scalars()
        .all()
    )
    payload = event_payload(event)
    deliveries = [
        WebhookDelivery(
            organization_id=event.organization_id,
            webhook_id=hook.id,
            event_id=event.id,
            event_kind=event.kind,
            payload=payload,
            created_at=event.created_at,
            next_attempt_at=event.created_at,
        )
        for hook in sorted(hooks, key=lambda h: h.id)
        if event.kind in hook.event_kinds
    ]
    for delivery in deliveries:
        db.add(delivery)
    if deliveries:
        await db.flush()
    return deliveries
