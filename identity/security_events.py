"""Security events: what an organization's security people should see, written beside the change that causes
them (in the caller's transaction), so an event exists exactly when its cause was committed.

`record_security_event` is the one way in; whatever reads events or sends alerts for them starts from the
rows it writes. In the same transaction it writes a delivery for each of the organization's webhooks
subscribed to the kind (`identity.webhooks.fan_out`) and hands the event to the sink installed on the
database (`install_event_sink`: the gateway's email alerts, `resolvers/security_alerts.py`), if any.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from enum import StrEnum
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from identity.webhooks import fan_out
from store.db import Database
from store.models import utcnow
from store.security import SecurityEvent


class SecurityEventKind(StrEnum):
    ACCOUNT_LOCKED = "account_locked"
    ADDRESS_BLOCKED = "address_blocked"
    HIGH_RISK_SIGN_IN = "high_risk_sign_in"
    SIGN_IN_REFUSED = "sign_in_refused"
    POLICY_CHANGED = "policy_changed"
    API_KEY_WITHOUT_EXPIRY = "api_key_without_expiry"
    PRIVILEGED_ROLE_GRANTED = "privileged_role_granted"
    MFA_DISABLED = "mfa_disabled"
    WEBHOOK_DISABLED = "webhook_disabled"
    AUDIT_STREAM_DISABLED = "audit_stream_disabled"


# what else an event causes in its transaction (alerts by email): called with the session and the event
EventSink = Callable[[AsyncSession, SecurityEvent], Awaitable[None]]
SINK_KEY = "portcullis.security_event_sink"


def install_event_sink(database: Database, sink: EventSink) -> None:
    """Every session `database` opens from now on carries `sink` (in `Session.info`), so an event
    recorded in any of them, a request's unit of work or a transaction of its own, reaches it."""
    database.sessionmaker.configure(info={SINK_KEY: sink})


class Severity(StrEnum):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"


async def record_security_event(
    db: AsyncSession,
    *,
    organization_id: str,
    kind: SecurityEventKind,
    severity: Severity,
    summary: str,
    actor_id: str | None = None,
    subject_id: str | None = None,
    client_ip: str | None = None,
    request_id: str | None = None,
    details: dict[str, Any] | None = None,
) -> SecurityEvent:
    """Add an event to the caller's transaction (flushed, not committed), with its webhook deliveries and
    whatever the installed sink adds (alert emails)."""
    event = SecurityEvent(
        organization_id=organization_id,
        kind=kind.value,
        severity=severity.value,
        summary=summary[:300],
        actor_id=actor_id,
        subject_id=subject_id,
        client_ip=client_ip,
        request_id=request_id,
        details=details or {},
        created_at=utcnow(),
    )
    db.add(event)
    await db.flush()
    await fan_out(db, event)
    sink: EventSink | None = db.info.get(SINK_KEY)
    if sink is not None:
        await sink(db, event)
    return event
