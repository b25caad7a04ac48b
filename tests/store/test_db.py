"""The engines' own behaviour: on SQLite, COMMIT and ROLLBACK reach the connection only when it holds a
transaction; what a session leaves uncommitted is still rolled back when it is closed."""

from __future__ import annotations

import time
import uuid
from typing import Any

from sqlalchemy import text

from store.db import Database
from store.models import new_id, new_ordered_id
from tests.conftest import sql
from tests.store.test_audit import _count_trips


async def _trips_of(db: Database, work: Any) -> list[str]:
    session = db.session()
    try:
        raw = await (await session.connection()).get_raw_connection()
        trips = _count_trips(raw.driver_connection)
        await work(session)
    finally:
        await session.close()
    return list(trips)


async def test_a_session_that_only_read_sends_no_commit_or_rollback(database_url: str) -> None:
    db = Database(database_url)
    try:
        async def read(session: Any) -> None:
            assert (await session.execute(text("SELECT 1"))).scalar() == 1
            await session.commit()

        trips = await _trips_of(db, read)
        if db.sqlite:
            assert "commit" not in trips
            assert "rollback" not in trips
    finally:
        await db.dispose()


async def test_a_write_commits_once_and_an_uncommitted_one_is_rolled_back_at_close(database_url: str) -> None:
    """A session that wrote commits with one COMMIT; a session closed with its write uncommitted is
    rolled back when its connection goes back to the pool, and holds no lock afterwards."""
    kept, dropped = new_id(), new_id()
    insert = text("INSERT INTO audit_chain_heads (chain, sequence, hash, updated_at) "
                  "VALUES (:c, 0, :h, CURRENT_TIMESTAMP)")
    db = Database(database_url)
    try:
        async def write_and_commit(session: Any) -> None:
            await session.execute(insert, {"c": kept, "h": "0" * 64})
            await session.commit()

        async def write_and_leave(session: Any) -> None:
            await session.execute(insert, {"c": dropped, "h": "0" * 64})

        committed = await _trips_of(db, write_and_commit)
        left = await _trips_of(db, write_and_leave)
        if db.sqlite:
            assert committed.count("commit") == 1
            assert "rollback" not in committed
            assert left.count("rollback") == 1  # the pool's reset, since a transaction was open
        # nothing of the abandoned write remains, and a new writer is not kept waiting
        async with db.transaction() as session:
            await session.execute(insert, {"c": new_id(), "h": "0" * 64})
    finally:
        await db.dispose()
    rows = sql(database_url, "SELECT chain FROM audit_chain_heads WHERE chain IN (:a, :b)", a=kept, b=dropped)
    assert [r[0] for r in rows] == [kept]


def test_ordered_ids_are_version_7_uuids_in_time_order() -> None:
    before = time.time_ns() // 1_000_000
    ids = [new_ordered_id() for _ in range(2_000)]
    after = time.time_ns() // 1_000_000
    assert len(set(ids)) == len(ids)
    for value in ids[:50]:
        parsed = uuid.UUID(value)
        assert str(parsed) == value
        assert parsed.version == 7
        assert parsed.variant == uuid.RFC_4122
        assert before <= int(value.replace("-", "")[:12], 16) <= after
    time.sleep(0.002)
    later = new_ordered_id()
    assert all(later > value for value in ids)  # a later millisecond sorts after, as text too


async def test_sqlite_connections_keep_temporary_data_in_memory(sqlite_url: str) -> None:
    """Every SQLite connection of the gateway: WAL, commits without fsync (synchronous=NORMAL), foreign keys
    on, and temporary data in memory: the statement journal of an audit entry's INSERT (it fires a
    trigger) never spills to a file created and unlinked in the temporary directory."""
    db = Database(sqlite_url)
    try:
        async with db.session() as session:
            values = [(await session.execute(text(f"PRAGMA {name}"))).scalar()
                      for name in ("journal_mode", "synchronous", "foreign_keys", "temp_store")]
        assert values == ["wal", 1, 1, 2]
    finally:
        await db.dispose()


async def test_writing_units_of_work_take_turns_on_sqlite(database_url: str) -> None:
    """On SQLite a mutation's unit of work waits for the writers' turn before it opens its session, first
    come first served (rather than polling for SQLite's lock with growing sleeps); it gives the turn back
    when it ends, committed or not. Readers never wait, resolvers of one request share the turn, and
    PostgreSQL, where writers of different rows do not wait for each other, has no turn at all."""
    import asyncio
    from types import SimpleNamespace

    from authz import anonymous
    from resolvers.deps import RequestContext

    db = Database(database_url)
    services: Any = SimpleNamespace(db=db)

    def context(writes: bool) -> RequestContext:
        ctx = RequestContext(services, anonymous())
        ctx.writes = writes
        return ctx

    try:
        first, second, reader = context(True), context(True), context(False)
        # two resolvers of the first request ask at once: one session, one turn
        one, two = await asyncio.gather(first.db(), first.db())
        assert one is two
        waiting = asyncio.ensure_future(second.db())
        await asyncio.sleep(0.05)
        assert waiting.done() is not db.sqlite  # on SQLite: waits for the first to end
        await asyncio.wait_for(reader.db(), 1)  # a reader does not wait
        await reader.finish(commit=False)
        await first.finish(commit=False)  # rolled back: the turn is given back all the same
        await asyncio.wait_for(waiting, 1)
        await (await second.db()).execute(text("SELECT 1"))
        await second.finish(commit=True)
        if db.sqlite:
            turn = db.writers_turn()
            assert turn is not None
            assert not turn.locked()
        else:
            assert db.writers_turn() is None
    finally:
        await db.dispose()
