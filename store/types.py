"""Column types of our own.

`UtcDateTime` is every time the tables hold: an instant, aware in UTC in Python on both backends. PostgreSQL
keeps it as `timestamp with time zone`; SQLite, which has no time type, as the text SQLAlchemy writes for a
`DateTime` (`2026-12-07 01:47:35.123456`, the instant in UTC), so that text compares in time order. A naive
datetime is refused when bound: what zone it means is not known here, and guessing would shift an instant.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import DateTime
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator, TypeEngine


class NaiveDatetimeError(TypeError):
    """A naive datetime bound to a `UtcDateTime` column: a programming error, never a user's."""


class UtcDateTime(TypeDecorator[datetime]):
    impl = DateTime
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "postgresql":
            return dialect.type_descriptor(DateTime(timezone=True))
        return dialect.type_descriptor(DateTime())

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if not isinstance(value, datetime) or value.tzinfo is None or value.utcoffset() is None:
            raise NaiveDatetimeError(f"a time stored in the database must be an aware datetime, not {value!r}")
        value = value.astimezone(UTC)
        # SQLite stores the UTC instant as text, without an offset
        return value if dialect.name == "postgresql" else value.replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        # naive from SQLite's text (or a `timestamp without time zone` before migration 0012): stored as UTC
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
