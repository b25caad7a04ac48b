"""The hash chain: how an entry is linked to the one before it, in Python and in SQL.

    hash_n = sha256(hash_{n-1} + "|" + n + "|" + canonical_json(entry_n))      hash_0 = "0" * 64

(the sha256 of the UTF-8 text, in lowercase hex; `n` in decimal) where the canonical JSON holds every
stored field of the entry except `id`, `sequence` and the hashes (sorted keys, no whitespace, ASCII only,
times as UTC ISO 8601 with microseconds and a `Z`). It is derived from the row's own columns, so the
verifier recomputes it from what is stored. The writer has the database compute the same text's hash
inside the append statement (`sql_link_hash`), from the head row it reads there.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import ColumnElement, String, Text, cast, func, literal

from store.audit.cleaning import iso
from store.db import SQLITE_SHA256
from store.models import AuditEntry

GENESIS_HASH = "0" * 64

# the stored fields the canonical JSON holds, besides `at`
CANONICAL_FIELDS = (
    "chain",
    "organization_id",
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
)

# sorted keys, no whitespace, ASCII only, no NaN: one encoder for every entry
_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def canonical(values: Mapping[str, Any]) -> str:
    """The canonical JSON of an entry's values (a mapping holding at least the canonical fields and `at`)."""
    body = {name: values[name] for name in CANONICAL_FIELDS}
    body["at"] = iso(values["at"])
    return _ENCODER.encode(body)


def canonical_of_row(row: Sequence[Any]) -> str:
    """The canonical JSON of a row whose first columns are `CANONICAL_FIELDS`, then `at`."""
    body = dict(zip(CANONICAL_FIELDS, row, strict=False))
    body["at"] = iso(row[len(CANONICAL_FIELDS)])
    return _ENCODER.encode(body)


def canonical_json(entry: AuditEntry) -> str:
    """The entry's stored fields but `id`, `sequence` and the hashes, as the chain hashes them."""
    return canonical({name: getattr(entry, name) for name in (*CANONICAL_FIELDS, "at")})


def link_hash(previous_hash: str, sequence: int, body: str) -> str:
    """sha256(previous_hash | sequence | body), hex: the same text the append statement hashes in SQL."""
    return hashlib.sha256(f"{previous_hash}|{sequence}|{body}".encode()).hexdigest()


def entry_hash(previous_hash: str, entry: AuditEntry) -> str:
    return link_hash(previous_hash, entry.sequence, canonical_json(entry))


def sql_link_hash(dialect: str, previous_hash: Any, sequence: Any, body: Any) -> ColumnElement[str]:
    """`link_hash` as an SQL expression: PostgreSQL's own sha256; on SQLite the function store.db registers
    on each connection."""
    text_ = previous_hash + literal("|") + cast(sequence, Text) + literal("|") + body
    if dialect == "postgresql":
        return func.encode(func.sha256(func.convert_to(text_, literal("UTF8"))), literal("hex"))
    return getattr(func, SQLITE_SHA256)(text_, type_=String)  # type: ignore[no-any-return]
