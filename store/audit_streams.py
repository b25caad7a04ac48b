"""Audit streams: a tenant's destinations for its audit chain (a webhook, Splunk HEC, a JSON-lines endpoint,
syslog), each with its durable cursor (the last sequence the destination accepted) and its sender's lease.

Registered on `SQLModel.metadata` by `store.models`.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Column, Text
from sqlmodel import Field, SQLModel

from store.columns import _ts, new_id, utcnow


class AuditStream(SQLModel, table=True):
    """One destination of one organization's audit chain (`chain` = `organization_id`).

    `delivered_sequence` advances only once the destination accepted a batch; `lease_until`/`lease_holder`
    make one process at a time send to it; `secret_encrypted` is the webhook signing secret or the Splunk
    token (`SecretBox`, purpose "audit_stream"), never shown after creation."""

    __tablename__ = "audit_streams"

    id: str = Field(default_factory=new_id, primary_key=True, max_length=36)
    organization_id: str = Field(foreign_key="organizations.id", index=True, max_length=36)
    kind: str = Field(max_length=20)
    url: str = Field(max_length=2048)
    secret_encrypted: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    delivered_sequence: int = Field(default=0)
    last_delivered_at: datetime | None = Field(default=None, sa_column=_ts(nullable=True))
    consecutive_failures: int = Field(default=0)
    last_error: str | None = Field(default=None, max_length=500)
    next_attempt_at: datetime = Field(default_factory=utcnow, sa_column=_ts())
    lease_until: datetime | None = Field(default=None, sa_column=_ts(nullable=True))
    lease_holder: str | None = Field(default=None, max_length=64)
    disabled_at: datetime | None = Field(default=None, sa_column=_ts(nullable=True))
    created_by: str | None = Field(default=None, foreign_key="users.id", max_length=36)
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts())
