"""Times a caller gives (GraphQL `DateTime` arguments, the command line's options).

ISO 8601 lets a time go without an offset; the gateway has always read such a time as UTC, and keeps
doing so here, in one place. Everything past this point is an aware datetime in UTC, as the database
gives and takes them (`store.types.UtcDateTime`).
"""

from __future__ import annotations

from datetime import UTC, datetime


def given_time(value: datetime) -> datetime:
    """A caller's time as an aware datetime in UTC; one without an offset is a UTC time."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
