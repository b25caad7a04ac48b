"""Audit entries as readers see them, read outside the application (store.audit.sealing.open_entries): the
personal fields opened with the keys `subject_keys` still holds."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

from store.audit.sealing import ReadableEntry, open_entries
from tests.conftest import sql

NAMES = (
    "id",
    "chain",
    "sequence",
    "organization_id",
    "at",
    "actor_type",
    "actor_id",
    "action",
    "resource_type",
    "resource_id",
    "result",
    "request_id",
    "ip",
    "user_agent",
    "details",
    "previous_hash",
    "hash",
)


def readable_rows(url: str, where: str = "1 = 1", **params: Any) -> list[ReadableEntry]:
    found = sql(url, f"SELECT {', '.join(NAMES)} FROM audit_log WHERE {where} ORDER BY chain, sequence", **params)
    entries = []
    for r in found:
        row = dict(zip(NAMES, r, strict=True))
        if isinstance(row["details"], str):
            row["details"] = json.loads(row["details"])
        if isinstance(row["at"], str):  # SQLite's text: the UTC wall time
            row["at"] = datetime.fromisoformat(row["at"]).replace(tzinfo=UTC)
        entries.append(SimpleNamespace(**row))
    keys = {i: base64.b64decode(k) for i, k in sql(url, "SELECT id, key FROM subject_keys WHERE key IS NOT NULL")}
    return open_entries(entries, keys)  # type: ignore[arg-type]
