"""Engines and sessions for both storage modes, behind one code path.

The configured URL is the synchronous one users write (`sqlite:///./portcullis.db`,
`postgresql+psycopg://...`); the request path uses its asyncio twin (aiosqlite, psycopg async),
migrations and the CLI the synchronous one.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry, PoolResetState

from store.telemetry import span


class DatabaseURLError(ValueError):
    pass


def _with_driver(url: str, sqlite_driver: str) -> str:
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return parsed.set(drivername=sqlite_driver).render_as_string(hide_password=False)
    if backend == "postgresql":
        # psycopg 3 serves both the asyncio and the blocking engine
        return parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
    raise DatabaseURLError(f"unsupported database backend {backend!r}: use sqlite:// or postgresql+psycopg://")


def async_url(url: str) -> str:
    return _with_driver(url, "sqlite+aiosqlite")


def sync_url(url: str) -> str:
    return _with_driver(url, "sqlite")


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


SQLITE_SHA256 = "portcullis_sha256"


def sha256_hex(value: str | None) -> str | None:
    """sha256 of a text's UTF-8 bytes, in lowercase hex: what PostgreSQL's
    `encode(sha256(convert_to(value, 'UTF8')), 'hex')` gives, for SQLite (the audit chain's hash)."""
    return None if value is None else hashlib.sha256(value.encode("utf-8")).hexdigest()


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.create_function(SQLITE_SHA256, 1, sha256_hex, deterministic=True)
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    # statement journals (an audit entry's INSERT fires a trigger, so its statement keeps one) and
    # transient tables stay in memory instead of spilling to a temporary file created and unlinked
    cursor.execute("PRAGMA temp_store=MEMORY")
    cursor.close()


def install_sqlite_pragmas(engine: Engine) -> None:
    event.listen(engine, "connect", _sqlite_pragmas)


def _holds_transaction(driver_connection: Any) -> bool:
    """Whether an aiosqlite connection has a transaction open (sqlite3's `in_transaction`); a closed one
    has none."""
    try:
        return bool(driver_connection.in_transaction)
    except ValueError:  # aiosqlite: "no active connection"
        return False


def _rollback_if_open(dbapi_connection: Any, record: ConnectionPoolEntry, state: PoolResetState) -> None:
    """The pool's reset of a connection coming back, sent only when it holds a transaction: after a commit
    or a rollback (every unit of work ends with one) there is nothing to undo, and on aiosqlite each call
    is a trip to the connection's thread and back."""
    if state.asyncio_safe and not state.terminate_only and _holds_transaction(record.driver_connection):
        dbapi_connection.rollback()


class Database:
    """Owns the async engine and hands out sessions; opened and closed by the app's lifespan."""

    def __init__(self, url: str, *, pool_size: int = 10, echo: bool = False) -> None:
        self.url = url
        self.sqlite = is_sqlite(url)
        # parameters (password and token hashes, emails) never appear in error messages or logs
        kwargs: dict[str, Any] = {"echo": echo, "hide_parameters": True}
        if self.sqlite:
            if make_url(url).database in (None, "", ":memory:"):
                raise DatabaseURLError("an in-memory SQLite database cannot be shared; use a file path")
            kwargs["connect_args"] = {"timeout": 30}
            # the most recently used connection first: SQLite empties a connection's page cache whenever
            # another connection has written since its last transaction, so taking turns would start
            # every transaction cold
            kwargs["pool_use_lifo"] = True
            kwargs["pool_reset_on_return"] = None  # see _rollback_if_open
        else:
            kwargs["pool_size"] = pool_size
            kwargs["max_overflow"] = pool_size
            kwargs["pool_pre_ping"] = True
        self.engine: AsyncEngine = create_async_engine(async_url(url), **kwargs)
        if self.sqlite:
            install_sqlite_pragmas(self.engine.sync_engine)
            event.listen(self.engine.sync_engine, "reset", _rollback_if_open)
        self.sessionmaker = async_sessionmaker(self.engine, expire_on_commit=False, autoflush=True)
        self._turn: asyncio.Lock | None = None
        self._turn_loop: asyncio.AbstractEventLoop | None = None

    def writers_turn(self) -> asyncio.Lock | None:
        """On SQLite, the turn a unit of work that will write waits for (None on PostgreSQL).

        SQLite lets one transaction write at a time and makes the others poll for its lock with growing
        sleeps (`busy_timeout`), so under many concurrent writers some wait far longer than their turn,
        seconds at 32 connections, while newcomers take the lock between their polls. An embedded gateway
        is one process: its writing units of work (mutations) queue here instead, first come first served,
        and reach SQLite one after the other. (One lock per event loop: the loop the gateway serves on.)"""
        if not self.sqlite:
            return None
        loop = asyncio.get_running_loop()
        if self._turn is None or self._turn_loop is not loop:
            self._turn, self._turn_loop = asyncio.Lock(), loop
        return self._turn

    def session(self) -> AsyncSession:
        return self.sessionmaker()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        """A unit of work of its own: commits when the block ends, rolls back on any error.

        For writes that must persist whatever happens to the request (failed-login counters,
        refresh-token reuse revocations).
        """
        with span("db transaction"):
            async with self.sessionmaker() as session:
                try:
                    yield session
                    await session.commit()
                except BaseException:
                    await session.rollback()
                    raise

    async def ping(self) -> None:
        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def schema_revision(self) -> str | None:
        """The Alembic revision the database is at; None before its first migration."""
        from alembic.runtime.migration import MigrationContext

        async with self.engine.connect() as conn:
            return await conn.run_sync(lambda sync: MigrationContext.configure(sync).get_current_revision())

    async def dispose(self) -> None:
        await self.engine.dispose()
