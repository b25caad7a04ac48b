"""The pruning job (resolvers/pruning.py, gateway/retention.py): each kind of data deleted once past the
tenant's retention, in batches, for that tenant only; the audit chain cut at a signed checkpoint and still
verifying (`verifyAuditChain`, `portcullis audit verify --checkpoint`); one pruner at a time; the audit
log's guard still refusing an ordinary DELETE."""

from __future__ import annotations

import asyncio
import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event as sa_event
from sqlalchemy.exc import DBAPIError

from gateway import cli
from gateway.retention import RetentionPruner
from identity.tokens import KeyRing
from resolvers.audit import checkpoint
from resolvers.pruning import prune, take_lease
from store.audit import entries_to_verify
from store.db import Database
from store.migrate import upgrade
from store.models import AuthSession, MailMessage, RefreshToken, RefreshTokenFamily, Report, ReportRow, UsageDaily
from store.security import SignIn
from tests.conftest import Tenant, gql, login, make_tenant, sql
from tests.gateway.test_audit_cli import owned_database
from tests.schema.test_reports import generated
from tests.store.test_audit import event, write

NOW = datetime.now(UTC)
OLD = NOW - timedelta(days=800)  # past every plan's default for every kind
RECENT = NOW - timedelta(days=2)  # within every plan's minimum
MID = NOW - timedelta(days=300)


async def run(args: list[str]) -> int:
    return await asyncio.to_thread(cli.main, args)


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, database_url: str, signing_key: str) -> pytest.MonkeyPatch:
    for name in list(os.environ):
        if name.startswith("PORTCULLIS_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PORTCULLIS_DATABASE_URL", database_url)
    monkeypatch.setenv("PORTCULLIS_ENV", "dev")
    monkeypatch.setenv("PORTCULLIS_SIGNING_KEY", signing_key)
    return monkeypatch


def rows_of(org: str, at: datetime, n: int) -> list[Any]:
    """`n` rows of each prunable kind but audit entries, of `org`, dated `at`."""
    out: list[Any] = []
    for i in range(n):
        session = AuthSession(organization_id=org, user_id=_USERS[org], auth_method="password", expires_at=at)
        family = RefreshTokenFamily(organization_id=org, session_id=session.id, user_id=_USERS[org])
        report = Report(
            organization_id=org,
            kind="usage",
            period_start=at,
            period_end=at,
            created_at=at,
            created_by_type="user",
            digest="0" * 64,
        )
        out += [
            session,
            family,
            RefreshToken(organization_id=org, family_id=family.id, token_hash=os.urandom(16).hex(), expires_at=at),
            report,
            ReportRow(report_id=report.id, seq=1, organization_id=org, line="[]"),
            UsageDaily(organization_id=org, day=at.date() - timedelta(days=i), subject_type="total"),
            MailMessage(
                organization_id=org,
                recipient="a@b.test",
                template="t",
                content_encrypted="x",
                message_id=f"<{i}>",
                status="sent",
                created_at=at,
            ),
            SignIn(organization_id=org, user_id=_USERS[org], method="password", outcome="success", at=at),
        ]
    return out


_USERS: dict[str, str] = {}
KINDS = {
    "auth_sessions": "SESSIONS",
    "refresh_token_families": "SESSIONS",
    "refresh_tokens": "SESSIONS",
    "reports": "REPORTS",
    "report_rows": "REPORTS",
    "usage_daily": "USAGE",
    "mail_outbox": "SENT_MAIL",
    "sign_ins": "SIGN_INS",
}


def count(url: str, table: str, org: str) -> int:
    return int(sql(url, f"SELECT count(*) FROM {table} WHERE organization_id = :o", o=org)[0][0])


async def test_each_kind_past_retention_is_pruned_in_batches_for_its_tenant_only(database_url, signing_key) -> None:
    acme = await make_tenant(database_url)
    other = await make_tenant(database_url, slug="other", email="o@other.test", plan="enterprise")
    _USERS.update({acme.org_id: acme.user_id, other.org_id: other.user_id})
    db = Database(database_url)
    try:
        async with db.transaction() as s:
            for row in rows_of(acme.org_id, OLD, 5) + rows_of(acme.org_id, RECENT, 2) + rows_of(other.org_id, MID, 3):
                s.add(row)
                await s.flush()
        # the other tenant keeps everything (at least a year) longer than its rows' 300 days: nothing of it is past
        sql(
            database_url,
            "INSERT INTO retention_settings (organization_id, days, updated_at) VALUES (:o, :d, :t)",
            o=other.org_id,
            d=json.dumps(
                {k: 2555 for k in ("AUDIT_ENTRIES", "USAGE", "REPORTS")}
                | {"SESSIONS": 365, "SENT_MAIL": 365, "SIGN_INS": 730}
            ),
            t=NOW,
        )
        before_other = {t: count(database_url, t, other.org_id) for t in KINDS}
        deletes: list[str] = []
        engine = db.engine.sync_engine

        def seen(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
            if statement.lstrip().upper().startswith("DELETE FROM SIGN_INS"):
                deletes.append(statement)

        sa_event.listen(engine, "before_cursor_execute", seen)
        try:
            counts = await prune(db, KeyRing(signing_key), NOW, batch=2)
        finally:
            sa_event.remove(engine, "before_cursor_execute", seen)
    finally:
        await db.dispose()
    # five old rows of each kind, two at a time: three batches (2, 2, 1)
    assert len(deletes) == 3
    assert counts == {"AUDIT_ENTRIES": 0, "SESSIONS": 5, "USAGE": 5, "REPORTS": 5, "SENT_MAIL": 5, "SIGN_INS": 5}
    for table in KINDS:
        assert count(database_url, table, acme.org_id) == 2, table  # the recent ones stay
    assert {t: count(database_url, t, other.org_id) for t in KINDS} == before_other


async def test_a_tenants_shorter_setting_prunes_sooner(database_url, signing_key) -> None:
    acme = await make_tenant(database_url)
    _USERS[acme.org_id] = acme.user_id
    ten_days = NOW - timedelta(days=10)
    db = Database(database_url)
    try:
        async with db.transaction() as s:
            for row in rows_of(acme.org_id, ten_days, 1):
                s.add(row)
                await s.flush()
        keys = KeyRing(signing_key)
        # the plan's default (30 days of sent mail) keeps it; a week's setting does not
        assert (await prune(db, keys, NOW))["SENT_MAIL"] == 0
        sql(
            database_url,
            "INSERT INTO retention_settings (organization_id, days, updated_at) VALUES (:o, :d, :t)",
            o=acme.org_id,
            d=json.dumps({"SENT_MAIL": 7}),
            t=NOW,
        )
        assert (await prune(db, keys, NOW))["SENT_MAIL"] == 1
    finally:
        await db.dispose()


async def test_pruning_cuts_the_chain_at_a_signed_checkpoint_and_it_still_verifies(
    env, client, database_url, signing_key, tenant: Tenant, tmp_path: Path, capsys
) -> None:
    await login(client, tenant)
    org = tenant.org_id
    await write(database_url, *(event(org) for _ in range(5)))
    keys = KeyRing(signing_key)
    db = Database(database_url)
    try:
        async with db.transaction() as s:
            document = await checkpoint(s, keys, now=datetime.now(UTC))
        path = tmp_path / "cp.json"
        path.write_text(json.dumps(document))
        [through] = [h["sequence"] for h in document["heads"] if h["chain"] == org]
        await write(database_url, *(event(org) for _ in range(3)))
        head = int(sql(database_url, "SELECT sequence FROM audit_chain_heads WHERE chain = :c", c=org)[0][0])
        # a year and a half later, past the plan's year of audit entries; three at a time
        counts = await prune(db, keys, NOW + timedelta(days=550), batch=3, organizations=[org])
    finally:
        await db.dispose()
    assert counts["AUDIT_ENTRIES"] == through
    remaining = [s for (s,) in sql(database_url, "SELECT sequence FROM audit_log WHERE chain = :c ORDER BY 1", c=org)]
    assert remaining == list(range(through + 1, head + 1))
    # verification is priced by the entries it will read: the remaining ones only
    db = Database(database_url)
    try:
        async with db.transaction() as s:
            assert await entries_to_verify(s, chains=[org]) == len(remaining)
    finally:
        await db.dispose()
    # the tenant's own verification (signed in anew: the first session was pruned with the rest, long
    # expired by then), and the operator's against the checkpoint file, pass
    token = (await login(client, tenant))["accessToken"]
    body = (await gql(client, "{ verifyAuditChain { ok checked firstBrokenSequence } }", token=token)).json()
    assert body["data"]["verifyAuditChain"]["ok"] is True, body
    assert await run(["audit", "verify", "--checkpoint", str(path)]) == 0
    assert await run(["audit", "verify"]) == 0
    # and so does the COMPLIANCE report's check of the chain
    report = await generated(client, token, "COMPLIANCE")
    assert {c["check"]: c["status"] for c in report["summary"]["checks"]}["audit_chain"] == "pass"
    # a checkpoint made after the pruning vouches for the pruned chain too
    assert await run(["audit", "checkpoint", "--out", str(tmp_path / "after.json")]) == 0
    assert await run(["audit", "verify", "--checkpoint", str(tmp_path / "after.json")]) == 0
    capsys.readouterr()
    # a start no checkpoint attests is ignored: the chain then misses its first entries
    sql(database_url, "UPDATE audit_chain_starts SET sequence = sequence + 1 WHERE chain = :c", c=org)
    assert await run(["audit", "verify"]) == 1
    assert f"sequence gap: 1..{through} missing" in capsys.readouterr().out


async def test_no_checkpoint_before_the_cut_means_no_audit_entry_is_pruned(database_url, signing_key) -> None:
    org = (await make_tenant(database_url)).org_id
    await write(database_url, *(event(org) for _ in range(4)))
    db = Database(database_url)
    try:
        async with db.transaction() as s:
            await checkpoint(s, KeyRing(signing_key), now=datetime.now(UTC))
        # the checkpoint is younger than the plan's year: nothing before it may go yet
        counts = await prune(db, KeyRing(signing_key), NOW + timedelta(days=200), organizations=[org])
    finally:
        await db.dispose()
    assert counts["AUDIT_ENTRIES"] == 0
    assert sql(database_url, "SELECT count(*) FROM audit_log WHERE chain = :c", c=org)[0][0] == 4


async def test_the_guard_still_refuses_an_ordinary_delete_after_pruning(database_url, signing_key) -> None:
    org = (await make_tenant(database_url)).org_id
    await write(database_url, *(event(org) for _ in range(4)))
    db = Database(database_url)
    try:
        async with db.transaction() as s:
            await checkpoint(s, KeyRing(signing_key), now=datetime.now(UTC))
        await write(database_url, *(event(org) for _ in range(2)))
        await prune(db, KeyRing(signing_key), NOW + timedelta(days=550), organizations=[org])
    finally:
        await db.dispose()
    statements = ["DELETE FROM audit_log WHERE chain = :c", "DELETE FROM audit_log WHERE chain = :c AND sequence = 6"]
    if not database_url.startswith("sqlite"):
        # the prune function's mark, set by hand, does not reach past the recorded start either
        statements.append(
            "DELETE FROM audit_log WHERE chain = :c AND sequence = 5 "
            "AND set_config('portcullis.audit_prune', :c, true) IS NOT NULL"
        )
    for statement in statements:
        with pytest.raises(DBAPIError, match="append-only"):
            sql(database_url, statement, c=org)
    assert [s for (s,) in sql(database_url, "SELECT sequence FROM audit_log WHERE chain = :c ORDER BY 1", c=org)] == [
        5,
        6,
    ]


async def test_one_pruner_at_a_time(database_url, signing_key) -> None:
    first, second = Database(database_url), Database(database_url)
    lease = timedelta(minutes=10)
    try:
        taken = await asyncio.gather(*(take_lease(d, h, NOW, lease) for d, h in ((first, "a"), (second, "b"))))
        assert sorted(taken) == [False, True]
        holder, other = ("a", "b") if taken[0] else ("b", "a")
        # the holder renews; the other keeps being refused until the lease lapses
        assert await take_lease(first, holder, NOW + timedelta(minutes=5), lease)
        assert not await take_lease(second, other, NOW + timedelta(minutes=14), lease)
        assert await take_lease(second, other, NOW + timedelta(minutes=16), lease)
    finally:
        await first.dispose()
        await second.dispose()


async def _one_at_a_time(one: Any, two: Any, url: str) -> None:
    first, second = one.state.retention_pruner, two.state.retention_pruner
    assert isinstance(first, RetentionPruner)
    assert first.holder != second.holder
    db = Database(url)
    try:
        # while the first app's pruner holds the lease (as during its pass), the second's finds it taken
        assert await take_lease(db, first.holder, datetime.now(UTC), timedelta(minutes=10))
        assert await second.run_once() is None
        # the first runs its pass (renewing the lease on the way) and releases it: then the second may run
        assert await first.run_once() is not None
        assert await second.run_once() is not None
    finally:
        await db.dispose()


async def test_two_apps_pruners_never_run_together(database_url, app, signing_key) -> None:
    from gateway.app import create_app
    from tests.conftest import make_settings, running

    two = create_app(make_settings(database_url, signing_key))
    async with running(two):
        await _one_at_a_time(app, two, database_url)


async def test_two_apps_in_shared_mode_take_turns(postgresql_url, redis_url, signing_key, shared_tenant) -> None:
    from tests.conftest import shared_apps

    async with shared_apps(postgresql_url, redis_url, signing_key, shared_tenant) as (_, _, _, one, two):
        await _one_at_a_time(one, two, postgresql_url)


async def test_the_app_role_prunes_only_through_the_sanctioned_function(postgres_admin_url, signing_key) -> None:
    """With the deployment's roles (the application's may only INSERT and SELECT audit entries), the job
    still prunes, through `audit_log_prune`; a DELETE of the application role's own is refused."""
    owned = owned_database(postgres_admin_url)
    upgrade(owned.owner_url, app_role=owned.app_role)
    app_url = owned.app_url
    org = (await make_tenant(app_url)).org_id
    await write(app_url, *(event(org) for _ in range(4)))
    keys = KeyRing(signing_key)
    db = Database(app_url)
    try:
        async with db.transaction() as s:
            await checkpoint(s, keys, now=datetime.now(UTC))
        await write(app_url, event(org))
        counts = await prune(db, keys, NOW + timedelta(days=550), batch=3, organizations=[org])
    finally:
        await db.dispose()
    assert counts["AUDIT_ENTRIES"] == 4
    with pytest.raises(DBAPIError) as caught:
        sql(app_url, "DELETE FROM audit_log WHERE chain = :c", c=org)
    assert caught.value.orig.sqlstate == "42501"  # type: ignore[union-attr]
    assert sql(owned.owner_url, "SELECT sequence FROM audit_log WHERE chain = :c", c=org) == [(5,)]
