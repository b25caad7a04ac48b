"""The engines' own behaviour: on SQLite, the pool rolls a connection back at check-in only when it holds a
transaction (every unit of work has ended its own); what a session leaves uncommitted is still rolled back
when it is closed."""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from store.db import Database
from store.models import new_id, new_ordered_id
from tests.conftest import sql

INSERT_HEAD = text(
    "INSERT INTO audit_chain_heads (chain, sequence, hash, updated_at) VALUES (:c, 0, :h, CURRENT_TIMESTAMP)"
)


def _count_ends(driver: Any) -> list[str]:
    """The commits and rollbacks that reach a driver connection (on aiosqlite, each a trip to its thread)."""
    ends: list[str] = []
    for name in ("commit", "rollback"):
        method = getattr(driver, name)

        async def counted(*args: Any, _name: str = name, _method: Any = method, **kwargs: Any) -> Any:
            ends.append(_name)
            return await _method(*args, **kwargs)

        setattr(driver, name, counted)
    return ends


async def _ends_of(db: Database, work: Callable[[AsyncSession], Awaitable[None]]) -> list[str]:
    session = db.session()
    try:
        driver = (await (await session.connection()).get_raw_connection()).driver_connection
        ends = _count_ends(driver)
        await work(session)
    finally:
        await session.close()
    for name in ("commit", "rollback"):
        delattr(driver, name)
    return list(ends)


async def test_a_unit_of_work_ends_once_and_the_pool_adds_nothing(database_url: str) -> None:
    """A session that read, or wrote, and committed reaches the connection with one COMMIT; one that wrote
    and was closed uncommitted with one ROLLBACK (its own), and nothing of its write remains. On SQLite the
    pool then sends no ROLLBACK of its own at check-in: the connection holds no transaction."""
    kept, dropped = new_id(), new_id()
    db = Database(database_url)
    try:

        async def read_and_commit(session: AsyncSession) -> None:
            assert (await session.execute(text("SELECT 1"))).scalar() == 1
            await session.commit()

        async def write_and_commit(session: AsyncSession) -> None:
            await session.execute(INSERT_HEAD, {"c": kept, "h": "0" * 64})
            await session.commit()

        async def write_and_leave(session: AsyncSession) -> None:
            await session.execute(INSERT_HEAD, {"c": dropped, "h": "0" * 64})

        read = await _ends_of(db, read_and_commit)
        committed = await _ends_of(db, write_and_commit)
        left = await _ends_of(db, write_and_leave)
        if db.sqlite:
            assert read == ["commit"]
            assert committed == ["commit"]
            assert left == ["rollback"]
        # nothing of the abandoned write remains, and a new writer is not kept waiting
        async with db.transaction() as session:
            await session.execute(INSERT_HEAD, {"c": new_id(), "h": "0" * 64})
    finally:
        await db.dispose()
    rows = sql(database_url, "SELECT chain FROM audit_chain_heads WHERE chain IN (:a, :b)", a=kept, b=dropped)
    assert [r[0] for r in rows] == [kept]


async def test_a_connection_back_with_a_transaction_open_is_rolled_back(sqlite_url: str) -> None:
    """A write made on the driver connection behind the engine's back, after its transaction ended, leaves
    SQLite's transaction open: the pool rolls it back at check-in, so the write is gone and the database's
    write lock is free for the next writer."""
    stray = new_id()
    db = Database(sqlite_url)
    try:
        async with db.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
            await conn.commit()
            driver = (await conn.get_raw_connection()).driver_connection
            await driver.execute(
                "INSERT INTO audit_chain_heads (chain, sequence, hash, updated_at) VALUES (?, 0, ?, CURRENT_TIMESTAMP)",
                (stray, "0" * 64),
            )
            assert driver.in_transaction
        assert not driver.in_transaction
        async with db.transaction() as session:
            await session.execute(INSERT_HEAD, {"c": new_id(), "h": "0" * 64})
    finally:
        await db.dispose()
    assert sql(sqlite_url, "SELECT count(*) FROM audit_chain_heads WHERE chain = :c", c=stray) == [(0,)]


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
            values = [
                (await session.execute(text(f"PRAGMA {name}"))).scalar()
                for name in ("journal_mode", "synchronous", "foreign_keys", "temp_store")
            ]
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
