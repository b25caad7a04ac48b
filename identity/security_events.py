"""Security events: what an organization's security people should see, written beside the change that causes
them (in the caller's transaction), so an event exists exactly when its cause was committed.

`record_security_event` is the one way in; whatever reads events or sends alerts for them starts from the
rows it writes.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

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
    """Add an event to the caller's transaction (flushed, not committed)."""
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
    return event
