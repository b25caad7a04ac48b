"""`UtcDateTime`, the type of every time column: aware datetimes in, aware datetimes in UTC out, on both
backends; a naive datetime is refused when bound."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import select
from sqlalchemy.exc import StatementError

from store.db import Database, is_sqlite
from store.models import Organization, new_id, utcnow
from store.types import NaiveDatetimeError
from tests.conftest import sql


def test_utcnow_is_aware_in_utc() -> None:
    assert utcnow().tzinfo is UTC


async def test_a_time_comes_back_aware_in_utc(database_url: str) -> None:
    """An aware time of any offset is stored as its instant and read back in UTC; on SQLite as the text it
    always was (the UTC wall time), on PostgreSQL as `timestamp with time zone`."""
    slug = f"t-{new_id()[:8]}"
    at = datetime(2026, 3, 4, 5, 6, 7, 890123, tzinfo=timezone(timedelta(hours=2)))
    db = Database(database_url)
    try:
        async with db.transaction() as session:
            session.add(Organization(slug=slug, name="Times", created_at=at))
        async with db.session() as session:
            stored = (
                await session.execute(
                    select(Organization.created_at).where(Organization.slug == slug)  # type: ignore[arg-type]
                )
            ).scalar_one()
            # compared with an aware bound value of another offset
            found = (
                (
                    await session.execute(
                        select(Organization.slug).where(Organization.created_at == at.astimezone(UTC))  # type: ignore[arg-type]
                    )
                )
                .scalars()
                .all()
            )
    finally:
        await db.dispose()
    assert stored == at
    assert stored.tzinfo is UTC
    assert found == [slug]
    text_ = sql(database_url, "SELECT CAST(created_at AS TEXT) FROM organizations WHERE slug = :s", s=slug)[0][0]
    if is_sqlite(database_url):
        assert text_ == "2026-03-04 03:06:07.890123"
    else:
        assert sql(
            database_url,
            "SELECT data_type FROM information_schema.columns WHERE table_name = "
            "'organizations' AND column_name = 'created_at'",
        ) == [("timestamp with time zone",)]


async def test_a_naive_time_is_refused(database_url: str) -> None:
    """What zone a naive datetime means is not known: binding one is a programming error, never a guess."""
    db = Database(database_url)
    try:
        with pytest.raises(StatementError) as caught:
            async with db.transaction() as session:
                session.add(Organization(slug=f"t-{new_id()[:8]}", name="Naive", created_at=datetime(2026, 3, 4)))
        assert isinstance(caught.value.orig, NaiveDatetimeError)
        assert "aware datetime" in str(caught.value)
        with pytest.raises(StatementError, match="aware datetime"):
            async with db.session() as session:
                await session.execute(select(Organization.id).where(Organization.created_at < datetime(2026, 3, 4)))  # type: ignore[arg-type]
    finally:
        await db.dispose()
