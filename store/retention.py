"""Retention's tables: each tenant's settings, the pruning job's lease, the signed audit checkpoints the
pruner cuts at, and where each pruned audit chain now starts (docs/retention.md)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column, Text
from sqlmodel import Field, SQLModel

from store.columns import _ts, new_id, utcnow


class RetentionSettingRow(SQLModel, table=True):
    """An organization's retention settings (RetentionKind name -> days); no row or no key: the plan's default."""

    __tablename__ = "retention_settings"

    organization_id: str = Field(foreign_key="organizations.id", primary_key=True, max_length=36)
    days: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    updated_at: datetime = Field(default_factory=utcnow, sa_column=_ts())


class JobLease(SQLModel, table=True):
    """A job that one process at a time runs: who holds it, until when."""

    __tablename__ = "job_leases"

    name: str = Field(primary_key=True, max_length=40)
    holder: str = Field(default="", max_length=64)
    lease_until: datetime = Field(default_factory=utcnow, sa_column=_ts())


class AuditCheckpoint(SQLModel, table=True):
    """A signed checkpoint of the chains' heads (the `signature` of `portcullis audit checkpoint`'s document)."""

    __tablename__ = "audit_checkpoints"

    id: str = Field(default_factory=new_id, primary_key=True, max_length=36)
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts(index=True))
    signature: str = Field(sa_column=Column(Text, nullable=False))


class AuditChainStart(SQLModel, table=True):
    """Where a pruned chain starts: the last deleted entry's (sequence, hash), as the checkpoint attests."""

    __tablename__ = "audit_chain_starts"

    chain: str = Field(primary_key=True, max_length=36)
    sequence: int = Field(default=0)
    hash: str = Field(max_length=64)
    checkpoint_id: str = Field(foreign_key="audit_checkpoints.id", max_length=36)
    pruned_at: datetime = Field(default_factory=utcnow, sa_column=_ts())
