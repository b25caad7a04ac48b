"""What every table's columns are made of: aware UTC times, random and time-ordered ids."""

from __future__ import annotations

import os
import time
import uuid
from datetime import UTC, datetime

from sqlalchemy import Column

from store.types import UtcDateTime


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    return str(uuid.uuid4())


def new_ordered_id() -> str:
    """A UUID of version 7 (RFC 9562): the Unix time in milliseconds, then 74 random bits. Ids made later
    sort later (within a millisecond, in random order), so a table that receives them in time order
    inserts each at the end of its index instead of at a random page of it: an index that stays small in
    the cache, however large the table grows. For rows whose time is no secret (the audit log's entries,
    gateway-made request ids)."""
    random = int.from_bytes(os.urandom(10), "big")
    millis = (time.time_ns() // 1_000_000) & 0xFFFF_FFFF_FFFF
    value = (millis << 80) | (0x7 << 76) | (((random >> 62) & 0xFFF) << 64) | (0b10 << 62)
    value |= random & 0x3FFF_FFFF_FFFF_FFFF
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _ts(*, nullable: bool = False, index: bool = False) -> Column[datetime]:
    return Column(UtcDateTime(), nullable=nullable, index=index)
