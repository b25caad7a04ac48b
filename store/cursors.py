"""Opaque keyset cursors: a (time, id) position, versioned, base64url without padding.

Every connection of the schema pages newest or oldest first by (time, id); the cursor names the last row
of a page. A cursor that is not one of ours (wrong version, not base64, an aware time, an over-long id)
is a `CursorError`, which the resolvers answer as BAD_USER_INPUT.
"""

from __future__ import annotations

import base64
import binascii
from datetime import datetime

MAX_CURSOR_LENGTH = 200


class CursorError(ValueError):
    pass


def encode_position(version: str, at: datetime, ident: str) -> str:
    raw = f"{version}|{at.isoformat()}|{ident}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_position(cursor: str, version: str) -> tuple[datetime, str]:
    """The (time, id) after which the next page starts."""
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
    return at, ident
