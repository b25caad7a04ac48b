"""Pruning and audit streams: an audit entry past retention is deleted only once every enabled stream of
its chain has delivered it (`streams_delivered_through`); a disabled stream holds nothing back."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from identity.tokens import KeyRing
from resolvers.audit import checkpoint
from resolvers.pruning import prune, streams_delivered_through
from store.audit_streams import AuditStream
from store.db import Database
from tests.conftest import make_tenant, sql
from tests.store.test_audit import event, write

LATER = datetime.now(UTC) + timedelta(days=550)  # past the plan's year of audit entries


async def add_stream(database_url: str, org: str, delivered: int, *, disabled: bool = False) -> str:
    db = Database(database_url)
    try:
        async with db.transaction() as s:
            row = AuditStream(
                organization_id=org,
                kind="json_lines",
                url="https://siem.example.com/in",
                delivered_sequence=delivered,
                disabled_at=datetime.now(UTC) if disabled else None,
            )
            s.add(row)
        return row.id
    finally:
        await db.dispose()


async def delivered_through(database_url: str, chain: str) -> int | None:
    db = Database(database_url)
    try:
        async with db.transaction() as s:
            return await streams_delivered_through(s, chain)
    finally:
        await db.dispose()


async def test_the_lowest_cursor_of_the_enabled_streams(database_url: str) -> None:
    org = (await make_tenant(database_url)).org_id
    other = (await make_tenant(database_url, slug="globex", email="owner@globex.test")).org_id
    assert await delivered_through(database_url, org) is None  # no stream holds anything back
    await add_stream(database_url, org, 6)
    slow = await add_stream(database_url, org, 3)
    await add_stream(database_url, org, 1, disabled=True)
    await add_stream(database_url, other, 0)
    assert await delivered_through(database_url, org) == 3
    sql(database_url, "UPDATE audit_streams SET disabled_at = :t WHERE id = :i", t=datetime.now(UTC), i=slow)
    assert await delivered_through(database_url, org) == 6
    sql(
        database_url, "UPDATE audit_streams SET disabled_at = :t WHERE organization_id = :o", t=datetime.now(UTC), o=org
    )
    assert await delivered_through(database_url, org) is None
    assert await delivered_through(database_url, other) == 0


async def test_entries_a_stream_has_not_delivered_are_kept_past_retention(database_url: str, signing_key: str) -> None:
    org = (await make_tenant(database_url)).org_id
    await write(database_url, *(event(org) for _ in range(5)))
    keys = KeyRing(signing_key)
    stream = await add_stream(database_url, org, 2)
    db = Database(database_url)
    try:
        async with db.transaction() as s:
            await checkpoint(s, keys, now=datetime.now(UTC))
        held = await prune(db, keys, LATER, organizations=[org])
        assert held["AUDIT_ENTRIES"] == 0
        assert sql(database_url, "SELECT count(*) FROM audit_log WHERE chain = :c", c=org)[0][0] == 5
        # delivered through the checkpoint's head: now they go
        sql(database_url, "UPDATE audit_streams SET delivered_sequence = 5 WHERE id = :i", i=stream)
        pruned = await prune(db, keys, LATER, organizations=[org])
    finally:
        await db.dispose()
    assert pruned["AUDIT_ENTRIES"] == 5
    assert sql(database_url, "SELECT count(*) FROM audit_log WHERE chain = :c", c=org)[0][0] == 0
