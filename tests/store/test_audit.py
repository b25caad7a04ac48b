"""The audit writer and verifier on both backends: chains per tenant, append-only tables, and the
tampering the verifier must name (C-089 to C-095)."""

from __future__ import annotations

import asyncio
import json
import re
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import bindparam, create_engine, select, text
from sqlalchemy import event as event_module
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from store import audit
from store.audit import AuditEvent, ChainHead
from store.db import Database, async_url, install_sqlite_pragmas, is_sqlite, sync_url
from store.migrate import upgrade
from store.models import AuditEntry, new_id
from store.types import UtcDateTime
from tests.conftest import _fresh_postgres_database, sql


def event(org: str | None, action: str = "org_updated", **kw: Any) -> AuditEvent:
    values: dict[str, Any] = {
        "actor_type": "user",
        "actor_id": "u-1",
        "request_id": "req-1",
        "ip": "203.0.113.7",
        "resource_type": "organization",
        "resource_id": org,
    }
    values.update(kw)
    return AuditEvent(action=action, organization_id=org, **values)


async def readable(url: str) -> list[Any]:
    """Every entry, as a reader sees it (store.audit.readable_entries)."""
    from sqlmodel import select

    db = Database(url)
    try:
        async with db.transaction() as session:
            rows = list((await session.execute(select(AuditEntry))).scalars().all())
            return await audit.readable_entries(session, rows)
    finally:
        await db.dispose()


async def write(url: str, *events: AuditEvent) -> list[Any]:
    db = Database(url)
    try:
        async with db.transaction() as session:
            return await audit.append(session, events)
    finally:
        await db.dispose()


async def verify(url: str, **kw: Any) -> audit.VerificationReport:
    db = Database(url)
    try:
        async with db.transaction() as session:
            return await audit.verify(session, **kw)
    finally:
        await db.dispose()


def as_owner(url: str, statement: str, **params: Any) -> None:
    """Out-of-band change by the database's owner, past the append-only triggers."""
    engine = create_engine(sync_url(url))
    try:
        with engine.begin() as conn:
            if is_sqlite(url):
                triggers = conn.execute(
                    text("SELECT name, sql FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'audit_log'")
                ).all()
                for name, _ in triggers:
                    conn.execute(text(f'DROP TRIGGER "{name}"'))
                conn.execute(text(statement), params)
                for _, ddl in triggers:
                    conn.execute(text(ddl))
            else:
                conn.execute(text("SET LOCAL session_replication_role = replica"))
                conn.execute(text(statement), params)
    finally:
        engine.dispose()


async def test_each_tenant_has_its_own_contiguous_chain(database_url: str) -> None:
    a, b = new_id(), new_id()
    await write(database_url, event(a), event(b), event(a))
    await write(database_url, event(a, "member_added"), event(None, "authn_login_fail"))
    rows = sql(database_url, "SELECT chain, sequence, previous_hash, hash FROM audit_log ORDER BY chain, sequence")
    by_chain: dict[str, list[int]] = {}
    for chain, seq, _, _ in rows:
        by_chain.setdefault(chain, []).append(seq)
    assert by_chain == {a: [1, 2, 3], b: [1], "platform": [1]}
    first = [r for r in rows if r[0] == a]
    assert first[0][2] == audit.GENESIS_HASH
    assert [r[2] for r in first[1:]] == [r[3] for r in first[:-1]]
    report = await verify(database_url)
    assert report.ok
    assert report.checked == 5
    assert report.chains[a].head_sequence == 3
    assert sql(database_url, "SELECT sequence, hash FROM audit_chain_heads WHERE chain = :c", c=a) == [
        (3, first[-1][3])
    ]


async def test_each_engine_appends_with_its_own_bind_processors(database_url: str) -> None:
    """The prepared append belongs to its engine: an engine built with its own JSON serializer writes its
    entries' details with it, and another engine's entries never are."""
    org = new_id()
    await write(database_url, event(org))
    plain = Database(database_url)
    custom = create_async_engine(async_url(database_url), json_serializer=lambda value: json.dumps(value, indent=1))
    if plain.sqlite:
        install_sqlite_pragmas(custom.sync_engine)
    sessions = async_sessionmaker(custom)
    try:
        for new_session in (plain.session, sessions, plain.session):
            async with new_session() as session:
                await audit.append(session, [event(org, details={"n": 2}, actor_type="system")])
                await session.commit()
    finally:
        await plain.dispose()
        await custom.dispose()
    texts = [
        r[0]
        for r in sql(
            database_url, "SELECT CAST(details AS TEXT) FROM audit_log WHERE chain = :c ORDER BY sequence", c=org
        )
    ]
    assert [json.loads(t) for t in texts[1:]] == [{"n": 2}] * 3
    assert ["\n" in t for t in texts[1:]] == [False, True, False]


async def test_an_append_is_one_statement_once_the_chain_has_a_head(database_url: str) -> None:
    """The entry is numbered, linked and hashed in the database, and the head row moves by trigger: one
    statement sent, and on SQLite one statement run (its trigger program included)."""
    org = new_id()
    await write(database_url, event(org))  # the chain's first entry also creates its head row
    db = Database(database_url)
    sent: list[str] = []
    run: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        sent.append(statement)

    event_module.listen(db.engine.sync_engine, "before_cursor_execute", count)
    try:
        async with db.transaction() as session:
            driver = (await (await session.connection()).get_raw_connection()).driver_connection
            if db.sqlite:
                await driver.set_trace_callback(run.append)
            entries = await audit.append(session, [event(org, details={"n": 2})])
            if db.sqlite:
                await driver.set_trace_callback(None)
    finally:
        await db.dispose()
    appends = [s for s in sent if "audit_log" in s or "audit_chain_heads" in s]
    assert len(appends) == 1
    assert appends[0].lstrip().upper().startswith("INSERT INTO AUDIT_LOG")
    if db.sqlite:
        # SQLite's trace repeats a statement's text as each of its trigger programs starts: one statement
        ran = [s for s in run if "audit_log" in s or "audit_chain_heads" in s]
        assert len(set(ran)) == 1
    stored = sql(
        database_url, "SELECT sequence, previous_hash, hash FROM audit_log WHERE chain = :c ORDER BY sequence", c=org
    )
    assert [r[0] for r in stored] == [1, 2]
    assert stored[1][1] == stored[0][2]
    assert (entries[0].sequence, entries[0].previous_hash, entries[0].hash) == stored[1]
    # the database's hash is the one the verifier recomputes
    assert stored[1][2] == audit.link_hash(stored[0][2], 2, audit.canonical_json(entries[0]))
    assert sql(database_url, "SELECT sequence, hash FROM audit_chain_heads WHERE chain = :c", c=org) == [
        (2, stored[1][2])
    ]


async def test_an_entry_not_read_back_is_written_without_returning(database_url: str) -> None:
    """`entries=False` (the writers that commit without reading what they wrote): the statement asks for
    nothing back, the chain's first entry is still told from the row count, and the chain verifies."""
    org = new_id()
    db = Database(database_url)
    sent: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        sent.append(statement)

    event_module.listen(db.engine.sync_engine, "before_cursor_execute", count)
    try:
        for _ in range(2):  # the chain's first entry (no head row yet), then the next one
            async with db.transaction() as session:
                assert await audit.append(session, [event(org)], entries=False) == []
    finally:
        await db.dispose()
    inserts = [s for s in sent if s.lstrip().upper().startswith("INSERT INTO AUDIT_LOG")]
    assert len(inserts) == 3  # the first entry's insert is repeated once its head row exists
    assert not any("RETURNING" in s.upper() for s in inserts)
    assert [
        r[0] for r in sql(database_url, "SELECT sequence FROM audit_log WHERE chain = :c ORDER BY sequence", c=org)
    ] == [1, 2]
    assert (await verify(database_url, chains=[org])).ok


async def test_a_refused_entry_commits_nothing_of_its_transaction(database_url: str) -> None:
    """If an entry's statement fails, the unit of work rolls back: nothing of the transaction is committed
    (the mutation's own write and the entries before it included), and the chain has no gap."""
    org, marker = new_id(), new_id()  # marker: a write of the same transaction (a head row of its own)
    await write(database_url, event(org))
    if is_sqlite(database_url):
        sql(
            database_url,
            "CREATE TRIGGER test_refuse_entry BEFORE INSERT ON audit_log "
            "WHEN NEW.action = 'refused_by_the_database' BEGIN SELECT RAISE(ABORT, 'refused'); END",
        )
    else:
        sql(
            database_url,
            "CREATE OR REPLACE FUNCTION test_refuse_entry() RETURNS trigger LANGUAGE plpgsql AS $$ "
            "BEGIN IF NEW.action = 'refused_by_the_database' THEN RAISE EXCEPTION 'refused'; END IF; "
            "RETURN NEW; END $$",
        )
        sql(
            database_url,
            "CREATE TRIGGER test_refuse_entry BEFORE INSERT ON audit_log FOR EACH ROW "
            "EXECUTE FUNCTION test_refuse_entry()",
        )
    db = Database(database_url)

    async def mutation() -> None:
        async with db.transaction() as session:
            await session.execute(
                text(
                    "INSERT INTO audit_chain_heads (chain, sequence, hash, updated_at) "
                    "VALUES (:c, 0, :h, CURRENT_TIMESTAMP)"
                ),
                {"c": marker, "h": "0" * 64},
            )
            await audit.append(
                session, [event(org, details={"n": 2}), event(org, action="refused_by_the_database")], entries=False
            )

    try:
        with pytest.raises(DBAPIError, match="refused"):
            await mutation()
    finally:
        await db.dispose()
        if is_sqlite(database_url):
            sql(database_url, "DROP TRIGGER test_refuse_entry")
        else:
            sql(database_url, "DROP TRIGGER test_refuse_entry ON audit_log")
            sql(database_url, "DROP FUNCTION test_refuse_entry()")
    assert sql(database_url, "SELECT sequence FROM audit_log WHERE chain = :c", c=org) == [(1,)]
    assert sql(database_url, "SELECT count(*) FROM audit_chain_heads WHERE chain = :c", c=marker) == [(0,)]
    await write(database_url, event(org))
    assert [
        r[0] for r in sql(database_url, "SELECT sequence FROM audit_log WHERE chain = :c ORDER BY sequence", c=org)
    ] == [1, 2]


async def test_a_rolled_back_append_leaves_no_entry_and_no_gap(database_url: str) -> None:
    org = new_id()
    await write(database_url, event(org))
    db = Database(database_url)

    async def failing_mutation() -> None:
        async with db.transaction() as session:
            await audit.append(session, [event(org)])
            raise RuntimeError("the mutation failed")

    try:
        with pytest.raises(RuntimeError):
            await failing_mutation()
    finally:
        await db.dispose()
    await write(database_url, event(org))
    assert sql(database_url, "SELECT sequence FROM audit_log WHERE chain = :c ORDER BY sequence", c=org) == [(1,), (2,)]
    assert (await verify(database_url)).ok


async def test_concurrent_appends_never_fork_a_chain(database_url: str) -> None:
    org = new_id()
    db = Database(database_url, pool_size=10)
    try:

        async def one(i: int) -> None:
            async with db.transaction() as session:
                await audit.append(session, [event(org, details={"i": i})])

        await asyncio.gather(*(one(i) for i in range(40)))
    finally:
        await db.dispose()
    rows = sql(database_url, "SELECT sequence, previous_hash FROM audit_log WHERE chain = :c", c=org)
    assert sorted(r[0] for r in rows) == list(range(1, 41))
    assert len({r[1] for r in rows}) == 40
    assert (await verify(database_url)).ok


async def test_the_database_refuses_update_and_delete(database_url: str) -> None:
    """The trigger layer, met even by the tables' owner (C-089, second layer)."""
    org = new_id()
    await write(database_url, event(org))
    for statement in ("UPDATE audit_log SET action = 'x' WHERE sequence = 1", "DELETE FROM audit_log"):
        with pytest.raises(DBAPIError, match="append-only"):
            sql(database_url, statement)
    if not is_sqlite(database_url):
        with pytest.raises(DBAPIError, match="append-only") as caught:
            sql(database_url, "TRUNCATE audit_log")
        assert getattr(caught.value.orig, "sqlstate", None) == "23514"  # check_violation
    assert sql(database_url, "SELECT action FROM audit_log") == [("org_updated",)]


@pytest.fixture
def roles_url(postgres_admin_url: str) -> Any:
    """A database whose tables belong to an owner role, migrated as that owner, used by an app role."""
    url = _fresh_postgres_database(postgres_admin_url)
    suffix = new_id()[:8]
    owner, app = f"owner_{suffix}", f"app_{suffix}"
    for statement in (
        f'CREATE ROLE "{owner}" LOGIN',
        f'CREATE ROLE "{app}" LOGIN',
        f'ALTER DATABASE "{url.rsplit("/", 1)[1]}" OWNER TO "{owner}"',
        f'ALTER SCHEMA public OWNER TO "{owner}"',
    ):
        sql(url, statement)
    base, _, name = url.rpartition("/")
    host = base.split("@", 1)[1]
    owner_url = f"postgresql+psycopg://{owner}@{host}/{name}"
    app_url = f"postgresql+psycopg://{app}@{host}/{name}"
    upgrade(owner_url, app_role=app)
    return owner_url, app_url, url


async def test_c089_the_app_role_may_only_insert_and_select(roles_url: Any) -> None:
    owner_url, app_url, superuser_url = roles_url
    org = new_id()
    await write(app_url, event(org), event(org))
    assert (await verify(app_url)).ok
    for statement in (
        "UPDATE audit_log SET action = 'x' WHERE sequence = 1",
        "DELETE FROM audit_log",
        "TRUNCATE audit_log",
    ):
        with pytest.raises(DBAPIError) as caught:
            sql(app_url, statement)
        assert caught.value.orig.sqlstate == "42501", statement  # type: ignore[union-attr]
    assert sql(superuser_url, "SELECT count(*), min(action) FROM audit_log") == [(2, "org_updated")]
    # with the privilege granted by mistake, the trigger still refuses
    app = app_url.split("//", 1)[1].split("@", 1)[0]
    sql(owner_url, f'GRANT UPDATE, DELETE ON audit_log TO "{app}"')
    with pytest.raises(DBAPIError) as caught:
        sql(app_url, "UPDATE audit_log SET action = 'x' WHERE sequence = 1")
    assert caught.value.orig.sqlstate == "23514"  # type: ignore[union-attr]
    # the rest of the schema works for the app role
    sql(app_url, "INSERT INTO audit_chain_heads (chain, sequence, hash, updated_at) VALUES ('z', 0, '0', now())")
    sql(app_url, "UPDATE audit_chain_heads SET sequence = 1 WHERE chain = 'z'")
    sql(app_url, "DELETE FROM audit_chain_heads WHERE chain = 'z'")


async def test_c090_an_edited_entry_is_named(database_url: str) -> None:
    org = new_id()
    await write(database_url, *(event(org, details={"n": i}) for i in range(6)))
    as_owner(
        database_url,
        "UPDATE audit_log SET details = :d WHERE chain = :c AND sequence = 4",
        d=json.dumps({"n": 99}),
        c=org,
    )
    report = await verify(database_url)
    assert not report.ok
    assert report.chains[org].first_broken_sequence == 4
    assert report.first_broken_sequence == 4
    assert any("content does not match" in p for p in report.chains[org].problems)


async def test_c090_a_recomputed_hash_still_breaks_the_next_link(database_url: str) -> None:
    org = new_id()
    entries = await write(database_url, *(event(org) for _ in range(5)))
    forged = entries[2]
    forged.action = "authn_login_success"
    forged.hash = audit.entry_hash(forged.previous_hash, forged)
    as_owner(
        database_url,
        "UPDATE audit_log SET action = :a, hash = :h WHERE id = :i",
        a=forged.action,
        h=forged.hash,
        i=forged.id,
    )
    report = await verify(database_url)
    assert report.chains[org].first_broken_sequence == 4


async def test_c091_a_deleted_entry_is_a_gap_and_a_broken_link(database_url: str) -> None:
    org = new_id()
    await write(database_url, *(event(org) for _ in range(6)))
    as_owner(database_url, "DELETE FROM audit_log WHERE chain = :c AND sequence = 3", c=org)
    chain = (await verify(database_url)).chains[org]
    assert chain.first_broken_sequence == 3
    assert chain.gaps == [(3, 3)]
    assert any(p.startswith("sequence 4: previous_hash") for p in chain.problems)


async def test_c092_truncation_is_found_against_a_checkpoint_only(database_url: str) -> None:
    org = new_id()
    await write(database_url, *(event(org) for _ in range(15)))
    head_hash = sql(database_url, "SELECT hash FROM audit_log WHERE chain = :c AND sequence = 15", c=org)[0][0]
    checkpoint = [ChainHead(org, 15, head_hash)]
    # an owner who removes the last ten rows and makes the head row agree
    as_owner(database_url, "DELETE FROM audit_log WHERE chain = :c AND sequence > 5", c=org)
    new_head = sql(database_url, "SELECT hash FROM audit_log WHERE chain = :c AND sequence = 5", c=org)[0][0]
    as_owner(database_url, "UPDATE audit_chain_heads SET sequence = 5, hash = :h WHERE chain = :c", h=new_head, c=org)
    # without a checkpoint the shortened chain is consistent: truncation is undetectable
    assert (await verify(database_url)).ok
    report = await verify(database_url, checkpoint=checkpoint)
    chain = report.chains[org]
    assert not report.ok
    assert chain.first_broken_sequence == 6
    assert any("checkpoint records sequence 15" in p for p in chain.problems)


async def test_truncation_without_touching_the_head_row_is_found(database_url: str) -> None:
    org = new_id()
    await write(database_url, *(event(org) for _ in range(4)))
    as_owner(database_url, "DELETE FROM audit_log WHERE chain = :c AND sequence = 4", c=org)
    assert (await verify(database_url)).chains[org].first_broken_sequence == 4


async def test_c094_injection_is_stored_escaped_and_bounded(database_url: str) -> None:
    org = new_id()
    forged = "alice\n2026-01-01 INFO authn_login_success admin"
    await write(
        database_url,
        event(
            org,
            "authn_login_fail",
            actor_id=forged,
            user_agent="\x1b[2J" + "A" * 10_000,
            details={"email": forged, "raw": b"\xff\xfe bad utf-8", "ansi": "\x1b[31mred"},
        ),
    )
    (entry,) = await readable(database_url)
    actor, agent, details = entry.actor_id, entry.user_agent, entry.details
    assert "\n" not in actor
    assert actor.startswith("alice\\x0a2026")
    assert len(agent) == 256
    assert agent.startswith("\\x1b[2J")
    stored = details if isinstance(details, dict) else json.loads(details)
    assert "\n" not in stored["email"]
    assert "\x1b" not in stored["ansi"]
    assert stored["raw"].startswith("\\xff\\xfe")
    assert (await verify(database_url)).ok


async def test_c095_secrets_never_reach_the_details(database_url: str) -> None:
    org = new_id()
    jwt = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl"
    await write(
        database_url,
        event(
            org,
            details={
                "password": "P@ss-123-canary",
                "new": {"clientSecret": "canary-secret", "name": "ok"},
                "note": f"token {jwt} and key gw_live_canary0123456789",
                "refresh_token": "canary-refresh",
            },
        ),
    )
    dump = json.dumps(sql(database_url, "SELECT * FROM audit_log"), default=str)
    for canary in ("P@ss-123-canary", "canary-secret", jwt, "gw_live_canary", "canary-refresh"):
        assert canary not in dump
    details = sql(database_url, "SELECT details FROM audit_log")[0][0]
    stored = details if isinstance(details, dict) else json.loads(details)
    assert stored["new"] == {"clientSecret": "[redacted]", "name": "ok"}
    assert stored["password"] == stored["refresh_token"] == "[redacted]"


async def test_time_range_verification_checks_links_inside_the_range(database_url: str) -> None:
    org = new_id()
    await write(database_url, *(event(org) for _ in range(3)))
    report = await verify(database_url, start=datetime(2000, 1, 1, tzinfo=UTC))
    assert report.ok
    assert report.checked == 3


def test_cursors_round_trip_and_refuse_garbage() -> None:
    from store.cursors import CursorError
    from store.models import AuditEntry

    entry = AuditEntry(
        id=new_id(),
        chain="c",
        sequence=1,
        at=datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC),
        actor_type="user",
        action="x",
        result="success",
        request_id="r",
        previous_hash="",
        hash="",
    )
    assert audit.decode_cursor(audit.encode_cursor(entry)) == (entry.at, entry.id)
    for bad in ("", "x", "!!!!", "Zm9vfGJhcg", "a" * 300):
        with pytest.raises(CursorError):
            audit.decode_cursor(bad)


async def test_entries_keep_their_chains_through_the_change_of_key_and_back(tmp_path: Any, request: Any) -> None:
    """Migration 0010 makes (chain, sequence) the primary key (SQLite rebuilds the table): every entry
    survives it, and its downgrade, with its chain intact; the key still refuses a second entry at a
    sequence, and the append-only triggers are back after the rebuild."""
    for backend in ("sqlite", "postgresql"):
        if backend == "sqlite":
            url = f"sqlite:///{tmp_path / 'rekey.db'}"
        else:
            url = _fresh_postgres_database(request.getfixturevalue("postgres_admin_url"))
        upgrade(url, "0009")
        a, b = new_id(), new_id()
        # written as before migration 0017 (no subject keys yet): entries of no person
        await write(url, event(a, actor_type="system"), event(b, actor_type="system"))
        await write(url, event(a, "member_added", actor_type="system"))
        await write(url, event(a, actor_type="system", details={"changes": {"name": {"old": "x", "new": "y"}}}))
        before = sql(url, "SELECT id, chain, sequence, hash FROM audit_log ORDER BY chain, sequence")
        for revision in ("head", "0009", "head"):
            if revision == "head":
                upgrade(url)
            else:
                _downgrade(url, revision)
            assert sql(url, "SELECT id, chain, sequence, hash FROM audit_log ORDER BY chain, sequence") == before
            assert (await verify(url)).ok
        await write(url, event(a))  # the chain goes on from its head
        assert [r[0] for r in sql(url, "SELECT sequence FROM audit_log WHERE chain = :c ORDER BY sequence", c=a)] == [
            1,
            2,
            3,
            4,
        ]
        engine = create_engine(sync_url(url))
        try:
            with pytest.raises(DBAPIError, match=r"(?i)unique|duplicate"), engine.begin() as conn:
                conn.execute(
                    text("INSERT INTO audit_log SELECT * FROM audit_log WHERE chain = :c AND sequence = 1"), {"c": a}
                )
            with pytest.raises(DBAPIError, match="append-only"), engine.begin() as conn:
                conn.execute(text("DELETE FROM audit_log WHERE chain = :c"), {"c": a})
        finally:
            engine.dispose()


def _downgrade(url: str, revision: str) -> None:
    from alembic import command

    from store.migrate import alembic_config

    command.downgrade(alembic_config(url), revision)


def test_the_hashed_time_is_the_same_text_for_an_instant() -> None:
    """The chain hashes an entry's time as UTC text (`store.audit.chain`): an aware time gives the text the
    naive UTC times stored before migration 0012 gave (`isoformat(timespec="microseconds") + "Z"`), whatever
    its offset, so chains written then verify now. A naive time is refused, not guessed."""
    instant = datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC)
    assert audit.iso(instant) == "2026-01-02T03:04:05.000006Z"
    assert audit.iso(instant.astimezone(timezone(timedelta(hours=-5)))) == "2026-01-02T03:04:05.000006Z"
    assert audit.iso(datetime(2026, 1, 2, tzinfo=UTC)) == "2026-01-02T00:00:00.000000Z"
    with pytest.raises(TypeError, match="aware"):
        audit.iso(datetime(2026, 1, 2, 3, 4, 5, 6))


# Two entries as the writer before migration 0012 stored them (naive UTC, SQLAlchemy's text on SQLite), with
# the hashes it computed for them (the canonical text of the time: `2026-12-06T23:59:58.123456Z`).
_OLD_CHAIN = "9f1c2d3e-0000-4000-8000-000000000012"
_OLD_ENTRIES = [
    (
        1,
        "2026-12-06 23:59:58.123456",
        {"n": 1},
        audit.GENESIS_HASH,
        "93d9e66056d40eebfbedb71a69e12d33405b0fd0a69a94d267167442e2bc3f3a",
    ),
    (
        2,
        "2026-12-07 00:00:00.000000",
        {"n": 2},
        "93d9e66056d40eebfbedb71a69e12d33405b0fd0a69a94d267167442e2bc3f3a",
        "3e57cfc75ce4f7b7b275f87d5f8ddeb2d7008d0f3f82f20c595d93c125d6036f",
    ),
]


async def test_entries_written_before_aware_times_still_verify(
    tmp_path: Any, request: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Migration 0012 makes every time `timestamp with time zone` on PostgreSQL (SQLite keeps its text): a
    chain written before it keeps its hashes and verifies after it, and after its downgrade, even read in a
    session whose time zone is not UTC; times come back aware in UTC, and the chain goes on from its head."""
    for backend in ("sqlite", "postgresql"):
        if backend == "sqlite":
            url = f"sqlite:///{tmp_path / 'aware.db'}"
        else:
            url = _fresh_postgres_database(request.getfixturevalue("postgres_admin_url"))
        monkeypatch.delenv("PGTZ", raising=False)
        upgrade(url, "0011")
        sql(
            url,
            "INSERT INTO audit_chain_heads (chain, sequence, hash, updated_at) "
            "VALUES (:c, 0, :h, '2026-12-06 23:59:58.000000')",
            c=_OLD_CHAIN,
            h=audit.GENESIS_HASH,
        )
        for sequence, at, details, previous, hash_ in _OLD_ENTRIES:
            sql(
                url,
                "INSERT INTO audit_log (id, chain, sequence, organization_id, at, actor_type, actor_id, action, "
                "resource_type, resource_id, result, request_id, ip, user_agent, details, previous_hash, hash) "
                "VALUES (:id, :c, :s, :c, :at, 'user', 'u-1', 'org_updated', 'organization', :c, 'success', "
                "'req-1', '203.0.113.7', NULL, :d, :p, :h)",
                id=new_id(),
                c=_OLD_CHAIN,
                s=sequence,
                at=at,
                d=json.dumps(details),
                p=previous,
                h=hash_,
            )
        assert (await verify(url)).ok
        # the session's time zone moves neither the stored instants nor what is read back
        monkeypatch.setenv("PGTZ", "America/New_York")
        upgrade(url)
        assert (await verify(url)).ok
        db = Database(url)
        try:
            async with db.session() as session:
                stored = (
                    (
                        await session.execute(
                            select(AuditEntry.at).where(AuditEntry.chain == _OLD_CHAIN).order_by(AuditEntry.sequence)
                        )
                    )
                    .scalars()
                    .all()
                )
                # raw SQL comparing a time with a bound aware one
                later = (
                    await session.execute(
                        text("SELECT count(*) FROM audit_log WHERE at >= :t").bindparams(
                            bindparam("t", type_=UtcDateTime())
                        ),
                        {"t": datetime(2026, 12, 7, tzinfo=UTC)},
                    )
                ).scalar_one()
        finally:
            await db.dispose()
        assert stored == [datetime(2026, 12, 6, 23, 59, 58, 123456, tzinfo=UTC), datetime(2026, 12, 7, tzinfo=UTC)]
        assert all(at.utcoffset() == timedelta(0) for at in stored)
        assert later == 1
        await write(url, event(_OLD_CHAIN))
        assert (await verify(url)).ok
        texts = [r[0] for r in sql(url, "SELECT CAST(at AS TEXT) FROM audit_log ORDER BY sequence")]
        if backend == "sqlite":
            assert texts[:2] == [e[1] for e in _OLD_ENTRIES]
            assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}", texts[2])  # the same text as ever
        else:
            assert texts[:2] == ["2026-12-06 18:59:58.123456-05", "2026-12-06 19:00:00-05"]
        _downgrade(url, "0011")
        assert (await verify(url)).ok
        if backend == "postgresql":
            assert [r[0] for r in sql(url, "SELECT CAST(at AS TEXT) FROM audit_log ORDER BY sequence")][:2] == [
                "2026-12-06 23:59:58.123456",
                "2026-12-07 00:00:00",
            ]


async def test_a_filter_on_results_that_did_not_succeed_reads_the_partial_index(sqlite_url: str) -> None:
    """`result: denied` (and `error`) pages through the index that holds only unsuccessful entries; `success`,
    most of every chain, through the chain's own index. On SQLite the query must carry the partial index's
    predicate for the planner to take it."""
    from sqlalchemy import event as sa_event

    from resolvers.audit import AuditFilter, query_entries

    org = new_id()
    await write(sqlite_url, event(org), event(org, "authz_fail", result="denied"), event(org, result="error"))
    db = Database(sqlite_url)
    plans: dict[str, str] = {}
    try:
        for wanted in ("denied", "error", "success"):
            seen: list[tuple[str, Any]] = []

            def keep(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
                if "FROM audit_log" in statement:
                    seen.append((statement, parameters))  # noqa: B023  (read before the next round)

            sa_event.listen(db.engine.sync_engine, "before_cursor_execute", keep)
            try:
                async with db.session() as session:
                    page = await query_entries(session, org, AuditFilter(result=wanted))
                    assert [e.node.result for e in page.edges] == [wanted]
                    statement, parameters = seen[-1]
                    conn = await session.connection()
                    rows = (await conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters)).all()
                    plans[wanted] = " ".join(str(r[-1]) for r in rows)
            finally:
                sa_event.remove(db.engine.sync_engine, "before_cursor_execute", keep)
    finally:
        await db.dispose()
    assert "ix_audit_log_chain_unsuccessful_at" in plans["denied"]
    assert "ix_audit_log_chain_unsuccessful_at" in plans["error"]
    assert "ix_audit_log_chain_at" in plans["success"]


async def test_the_first_entry_of_a_chain_creates_its_head_in_the_transaction(database_url: str) -> None:
    """A chain's very first entry creates the chain's head row on the way, in the caller's transaction, and
    the transaction's other writes commit with it."""
    org, marker = new_id(), new_id()  # marker: a write of the same transaction (a head row of its own)
    db = Database(database_url)
    try:
        async with db.session() as session:
            await session.execute(
                text(
                    "INSERT INTO audit_chain_heads (chain, sequence, hash, updated_at) "
                    "VALUES (:c, 0, :h, CURRENT_TIMESTAMP)"
                ),
                {"c": marker, "h": "0" * 64},
            )
            await audit.append(session, [event(org)], entries=False)
            await session.commit()
    finally:
        await db.dispose()
    assert sql(database_url, "SELECT sequence FROM audit_log WHERE chain = :c", c=org) == [(1,)]
    assert sql(database_url, "SELECT count(*) FROM audit_chain_heads WHERE chain = :c", c=marker) == [(1,)]
    assert (await verify(database_url)).ok
