"""Cursors of `auditLogs` pages: the (at, id) of a page's last entry (store.cursors)."""

from __future__ import annotations

from datetime import datetime

from store.audit.sealing import ReadableEntry
from store.cursors import decode_position, encode_position
from store.models import AuditEntry

CURSOR_VERSION = "a1"


def encode_cursor(entry: AuditEntry | ReadableEntry) -> str:
    return encode_position(CURSOR_VERSION, entry.at, entry.id)


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """The (at, id) after which the next page starts; `CursorError` when the cursor is not ours."""
    return decode_position(cursor, CURSOR_VERSION)
