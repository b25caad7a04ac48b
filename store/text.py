"""Text the database can store (C-133).

PostgreSQL's text and jsonb cannot hold U+0000, and no UTF-8 encodes the surrogates U+D800-U+DFFF (a
lone one can reach Python from a `\\ud800` JSON escape or a lax decoder), so either would fail at the
database, deep in a query, as an unexpected error. The edge refuses such input once, before anything
reads it: the request target at the HTTP edge, every string of a GraphQL operation's arguments in the
schema.
"""

from __future__ import annotations

import re

_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def storable(text: str) -> bool:
    """True when the database can store `text`: no NUL, no lone surrogate."""
    if text.isascii():  # the common case: one scan in C, no regular expression
        return "\x00" not in text
    return _UNSTORABLE.search(text) is None
