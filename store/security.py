"""Tables of the security-policy domain: each organization's policy, password history, sign-ins (for risk),
address blocks, security events, and the webhook subscriptions with their delivery outbox.

Registered on `SQLModel.metadata` by `store.models`, which imports this module last.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column, Index, Text
from sqlmodel import Field, SQLModel

from store.columns import _ts, new_id, new_ordered_id, utcnow


class SecurityPolicyRow(SQLModel, table=True):
    """An organization's security policy (`authz.security_policy.SecurityPolicy`); no row: every default.

    `require_mfa` stays on `organizations` (where sessions read it); the rest lives here."""

    __tablename__ = "security_policies"

    organization_id: str = Field(foreign_key="organizations.id", primary_key=True, max_length=36)
    password_min_length: int = Field(default=12)
    password_history: int = Field(default=0)
    password_max_age_days: int | None = Field(default=None)
    breached_password_check: bool = Field(default=True)
    session_idle_timeout_minutes: int | None = Field(default=None)
    session_max_lifetime_hours: int | None = Field(default=None)
    max_concurrent_sessions: int | None = Field(default=None)
    concurrent_session_action: str = Field(default="end_oldest", max_length=20)
    fresh_auth_minutes: int | None = Field(default=None)
    allowed_sign_in_methods: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    break_glass_user_ids: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    api_key_max_lifetime_days: int | None = Field(default=None)
    ip_allowlist: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    medium_risk_action: str = Field(default="allow", max_length=20)
    high_risk_action: str = Field(default="allow", max_length=20)
    updated_at: datetime = Field(default_factory=utcnow, sa_column=_ts())
    updated_by: str | None = Field(default=None, foreign_key="users.id", max_length=36)


class PasswordHistory(SQLModel, table=True):
    """A password a user had (its argon2 hash): the policy's history refuses reusing the last N."""

    __tablename__ = "password_history"
    __table_args__ = (Index("ix_password_history_user_created", "user_id", "created_at"),)

    id: str = Field(default_factory=new_id, primary_key=True, max_length=36)
    user_id: str = Field(foreign_key="users.id", max_length=36)
    password_hash: str = Field(max_length=255)
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts())


class SignIn(SQLModel, table=True):
    """One sign-in attempt that named an account: what risk scoring compares the next one with."""

    __tablename__ = "sign_ins"
    __table_args__ = (
        Index("ix_sign_ins_user_at", "user_id", "at"),
        Index("ix_sign_ins_ip_at", "client_ip", "at"),
    )

    id: str = Field(default_factory=new_ordered_id, primary_key=True, max_length=36)
    organization_id: str | None = Field(default=None, foreign_key="organizations.id", index=True, max_length=36)
    user_id: str = Field(foreign_key="users.id", max_length=36)
    method: str = Field(max_length=20)
    outcome: str = Field(max_length=20)
    client_ip: str | None = Field(default=None, max_length=45)
    # sha256 of the user agent: enough to tell a new one, nothing to read back
    user_agent_hash: str | None = Field(default=None, max_length=64)
    risk_score: int = Field(default=0)
    risk_signals: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    at: datetime = Field(default_factory=utcnow, sa_column=_ts())


class AddressBlock(SQLModel, table=True):
    """A blocked CIDR: platform-wide (`organization_id` null, by an operator or an abuse signal) or for one
    organization's credentials. `source` is `manual` or `automatic` (then `signal` names the abuse)."""

    __tablename__ = "address_blocks"
    __table_args__ = (Index("ix_address_blocks_active", "lifted_at", "expires_at"),)

    id: str = Field(default_factory=new_id, primary_key=True, max_length=36)
    organization_id: str | None = Field(default=None, foreign_key="organizations.id", index=True, max_length=36)
    cidr: str = Field(max_length=49)
    reason: str = Field(max_length=500)
    source: str = Field(default="manual", max_length=20)
    signal: str | None = Field(default=None, max_length=40)
    created_by: str | None = Field(default=None, foreign_key="users.id", max_length=36)
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts())
    expires_at: datetime | None = Field(default=None, sa_column=_ts(nullable=True))
    lifted_at: datetime | None = Field(default=None, sa_column=_ts(nullable=True))
    lifted_by: str | None = Field(default=None, foreign_key="users.id", max_length=36)


class SecurityEvent(SQLModel, table=True):
    """Something an organization's security people should see: a lockout, a block, a high-risk sign-in, a
    policy change... `status` goes `open` -> `acknowledged` -> `resolved`, each step with who and a note."""

    __tablename__ = "security_events"
    __table_args__ = (Index("ix_security_events_org_created", "organization_id", "created_at"),)

    id: str = Field(default_factory=new_ordered_id, primary_key=True, max_length=36)
    organization_id: str = Field(foreign_key="organizations.id", max_length=36)
    kind: str = Field(max_length=40)
    severity: str = Field(max_length=10)
    summary: str = Field(max_length=300)
    actor_id: str | None = Field(default=None, max_length=36)
    subject_id: str | None = Field(default=None, max_length=36)
    client_ip: str | None = Field(default=None, max_length=45)
    request_id: str | None = Field(default=None, max_length=64)
    details: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    status: str = Field(default="open", max_length=15)
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts())
    acknowledged_at: datetime | None = Field(default=None, sa_column=_ts(nullable=True))
    acknowledged_by: str | None = Field(default=None, foreign_key="users.id", max_length=36)
    resolved_at: datetime | None = Field(default=None, sa_column=_ts(nullable=True))
    resolved_by: str | None = Field(default=None, foreign_key="users.id", max_length=36)
    note: str | None = Field(default=None, sa_column=Column(Text, nullable=True))


class Webhook(SQLModel, table=True):
    """A tenant's subscription to security events, signed as Standard Webhooks says (secret encrypted at rest)."""

    __tablename__ = "webhooks"

    id: str = Field(default_factory=new_id, primary_key=True, max_length=36)
    organization_id: str = Field(foreign_key="organizations.id", index=True, max_length=36)
    url: str = Field(max_length=2048)
    description: str | None = Field(default=None, max_length=200)
    event_kinds: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    secret_encrypted: str = Field(sa_column=Column(Text, nullable=False))
    created_by: str | None = Field(default=None, foreign_key="users.id", max_length=36)
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts())
    disabled_at: datetime | None = Field(default=None, sa_column=_ts(nullable=True))


class WebhookDelivery(SQLModel, table=True):
    """One message to one webhook (its id is the `webhook-id` header), written with the event it carries and
    sent after commit by whichever process takes its lease: `pending`, `delivered` or `failed` (given up)."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        Index("ix_webhook_deliveries_status_next", "status", "next_attempt_at"),
        Index("ix_webhook_deliveries_webhook_created", "webhook_id", "created_at"),
    )

    id: str = Field(default_factory=new_ordered_id, primary_key=True, max_length=36)
    organization_id: str = Field(foreign_key="organizations.id", max_length=36)
    webhook_id: str = Field(foreign_key="webhooks.id", max_length=36)
    event_id: str | None = Field(default=None, max_length=36)
    event_kind: str = Field(max_length=40)
    payload: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    status: str = Field(default="pending", max_length=10)
    attempts: int = Field(default=0)
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts())
    next_attempt_at: datetime = Field(default_factory=utcnow, sa_column=_ts())
    lease_until: datetime | None = Field(default=None, sa_column=_ts(nullable=True))
    delivered_at: datetime | None = Field(default=None, sa_column=_ts(nullable=True))
    last_status_code: int | None = Field(default=None)
    last_error: str | None = Field(default=None, max_length=500)
