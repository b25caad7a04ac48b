"""Writing entries: one statement per entry, in the caller's transaction.

An entry is appended by ONE statement, `INSERT INTO audit_log ... SELECT ... FROM audit_chain_heads`,
which reads the chain's head row (its sequence and hash), numbers the entry, and computes its hash in the
database (store.audit.chain). A trigger on audit_log (migration 0008) then advances the head row in the
same statement. On PostgreSQL the SELECT locks the head row (`FOR UPDATE`), so concurrent appenders of
one chain, in one process or many, wait for each other and each reads the head its predecessor left; on
SQLite the insert takes the database's write lock. Only the first entry of a chain costs more: the head
row does not exist yet, so the insert adds nothing, the head row is created and the insert repeated.
Everything runs in the caller's transaction: an entry whose transaction rolls back leaves no trace, not
even a gap.

The statement goes through the session like any other (its engine's own conversions of the values, its
compiled-statement cache); it asks for the stored links back (`RETURNING`) only when the caller reads
the entries, and otherwise learns from the row count whether the head row was there. On aiosqlite a
statement is three hand-offs to the connection's thread (cursor, statement, close) and the COMMIT a
fourth; sending the entry on the driver connection with the COMMIT in one hand-off was measurably
cheaper, but reached into the driver's internals, which break on its upgrades.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import Text, bindparam, insert, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.expression import Executable

from store.audit.chain import CANONICAL_FIELDS, GENESIS_HASH, canonical, sql_link_hash
from store.audit.cleaning import entry_values
from store.audit.sealing import seal_all
from store.audit.vocabulary import AuditEvent
from store.db import Database
from store.models import AuditChainHead, AuditEntry, utcnow

# the columns the append statement binds (everything but the chain links, which come from the head row)
_BOUND = ("id", "at", *CANONICAL_FIELDS)
_STATEMENTS: dict[tuple[str, bool], Executable] = {}


def _append_statement(dialect: str, returning: bool) -> Executable:
    """INSERT INTO audit_log (...) SELECT :id, ..., h.sequence + 1, h.hash, <hash> FROM audit_chain_heads h
    WHERE h.chain = :chain [FOR UPDATE] [RETURNING sequence, previous_hash, hash] (built once per dialect)."""
    stmt = _STATEMENTS.get((dialect, returning))
    if stmt is not None:
        return stmt
    log_table = AuditEntry.__table__  # type: ignore[attr-defined]
    heads = AuditChainHead.__table__  # type: ignore[attr-defined]
    columns = {name: bindparam(name, type_=log_table.c[name].type) for name in _BOUND}
    sequence = heads.c.sequence + 1
    digest = sql_link_hash(dialect, heads.c.hash, sequence, bindparam("body", type_=Text))
    source = select(*columns.values(), sequence, heads.c.hash, digest).where(heads.c.chain == columns["chain"])
    if dialect == "postgresql":
        source = source.with_for_update()
    appended = insert(log_table).from_select([*_BOUND, "sequence", "previous_hash", "hash"], source)
    if returning:
        appended = appended.returning(log_table.c.sequence, log_table.c.previous_hash, log_table.c.hash)
    else:
        # the row count tells whether the head row was there (an INSERT's is kept only when asked for)
        appended = appended.execution_options(preserve_rowcount=True)
    _STATEMENTS[(dialect, returning)] = appended
    return appended


async def _create_head(session: AsyncSession, dialect: str, chain: str) -> None:
    """The chain's head row at the genesis, unless another transaction has just created it."""
    insert_ = postgresql.insert if dialect == "postgresql" else sqlite.insert
    table = AuditChainHead.__table__  # type: ignore[attr-defined]
    await session.execute(
        insert_(table)
        .values(chain=chain, sequence=0, hash=GENESIS_HASH, updated_at=utcnow())
        .on_conflict_do_nothing(index_elements=["chain"])
    )


async def _insert(session: AsyncSession, stmt: Executable, params: dict[str, Any], returning: bool) -> Any:
    """The stored (sequence, previous_hash, hash) with `returning`, else True; None when the chain has no
    head row yet (nothing was inserted)."""
    result = await session.execute(stmt, params)
    if returning:
        return result.first()
    return True if result.rowcount == 1 else None  # type: ignore[attr-defined]


async def append(
    session: AsyncSession, events: Iterable[AuditEvent], *, now: datetime | None = None, entries: bool = True
) -> list[AuditEntry]:
    """Chain and insert `events` in the session's transaction; they commit (or roll back) with it.

    One statement per entry (two more for a chain's very first entry). Call it last in a unit of work,
    just before the commit: on PostgreSQL the chain's head row stays locked until then. Returns the
    entries as stored, unless `entries=False` (writers that do not read them skip building them).
    """
    by_chain: dict[str, list[AuditEvent]] = {}
    for event in events:
        by_chain.setdefault(event.chain, []).append(event)
    if not by_chain:
        return []
    bind = session.bind
    if bind is None:
        raise RuntimeError("the audit log needs a session bound to the database")
    dialect = bind.dialect.name
    stmt = _append_statement(dialect, entries)
    # what the unit of work has pending goes first, as it would before an ORM statement
    pending = session.sync_session
    if pending.new or pending.dirty or pending.deleted:
        await session.flush()
    written: list[AuditEntry] = []
    # one lock order for every transaction: no deadlock between two that append to the same two chains
    ordered: list[tuple[str, dict[str, Any]]] = []
    for chain in sorted(by_chain):
        at = now or utcnow()
        ordered.extend((chain, entry_values(event, at)) for event in by_chain[chain])
    # personal fields sealed under their owners' keys before the entry is chained (store/audit/sealing.py)
    sealed = await seal_all(session, [values for _, values in ordered])
    for (chain, _), params in zip(ordered, sealed, strict=True):
        params["body"] = canonical(params)
        row = await _insert(session, stmt, params, entries)
        if row is None:  # the chain's first entry: no head row yet
            await _create_head(session, dialect, chain)
            row = await _insert(session, stmt, params, entries)
            if row is None:
                raise RuntimeError(f"audit chain {chain!r} has no head row")
        if entries:
            del params["body"]
            written.append(AuditEntry(**params, sequence=int(row[0]), previous_hash=str(row[1]), hash=str(row[2])))
    return written


class AuditTrail:
    """Entries that commit on their own: authentication events, denials and failures, which happen in
    requests that roll back or write nothing. Built once per process (`Services.audit`)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def record(self, *events: AuditEvent) -> None:
        if not events:
            return
        async with self.db.transaction() as session:
            await append(session, events, entries=False)
