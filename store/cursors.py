"""Opaque keyset cursors: a (time, id) position, versioned, base64url without padding.

Every connection of the schema pages newest or oldest first by (time, id); the cursor names the last row
of a page, its time written as the UTC wall time without an offset (`2026-01-02T03:04:05.000006`). A
cursor that is not one of ours (wrong version, not base64, a time with an offset, an over-long id) is a
`CursorError`, which the resolvers answer as BAD_USER_INPUT.
"""

from __future__ import annotations

import base64
import binascii
from datetime import UTC, datetime

MAX_CURSOR_LENGTH = 200


class CursorError(ValueError):
    pass


def encode_position(version: str, at: datetime, ident: str) -> str:
    wall = at.astimezone(UTC).isoformat().removesuffix("+00:00")
    raw = f"{version}|{wall}|{ident}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_position(cursor: str, version: str) -> tuple[datetime, str]:
    """The (time, id) after which the next page starts; the time aware, in UTC."""
    try:
        if not cursor or len(cursor) > MAX_CURSOR_LENGTH:
            raise ValueError(cursor)
        raw = base64.b64decode(cursor + "=" * (-len(cursor) % 4), altchars=b"-_", validate=True).decode()
        found, created, ident = raw.split("|")
        if found != version or not ident or len(ident) > 36:
            raise ValueError(raw)
        at = datetime.fromisoformat(created)
        if at.tzinfo is not None:
            raise ValueError(raw)
    except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
        raise CursorError("not a valid cursor") from exc
    return at.replace(tzinfo=UTC), ident
