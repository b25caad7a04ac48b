"""Tables of the data-subject rights (docs/privacy.md): the per-person keys that seal the personal fields of
audit entries, and the exports a person asked for.

`subject_keys`: one AES-256-GCM key per subject, `user:<user id>` for an account, `email:<sha256 of the
casefolded address>` for an address (an invitee, a sign-in attempt's email). Audit entries carry the
ciphertext under the key's `id`; erasing the subject deletes the key, and with it every copy of the personal
fields that the chain still hashes (store/audit/sealing.py). An erased account keeps a row without key (a
tombstone, `key` null), so an entry written about it later drops its personal fields instead of sealing
them under a new key. Registered on `SQLModel.metadata` by `store.models`, which imports this module last.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Column, Text
from sqlmodel import Field, SQLModel

from store.columns import _ts, new_id, utcnow


class SubjectKey(SQLModel, table=True):
    """A subject's sealing key (32 random bytes, base64), or null once the subject was erased."""

    __tablename__ = "subject_keys"

    id: str = Field(default_factory=new_id, primary_key=True, max_length=36)
    subject: str = Field(max_length=80, unique=True)
    key: str | None = Field(default=None, max_length=64)
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts())
    erased_at: datetime | None = Field(default=None, sa_column=_ts(nullable=True))


class DataExport(SQLModel, table=True):
    """A copy of everything the gateway holds about a person (`exportMyData`, `portcullis data export`),
    encrypted at rest (SecretBox, purpose "export"), downloadable by that person until `expires_at`."""

    __tablename__ = "data_exports"

    id: str = Field(default_factory=new_id, primary_key=True, max_length=36)
    user_id: str = Field(foreign_key="users.id", index=True, max_length=36)
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts(index=True))
    expires_at: datetime = Field(sa_column=_ts())
    digest: str = Field(max_length=64)
    content_encrypted: str = Field(sa_column=Column(Text, nullable=False))
