"""C-093: 200 concurrent audited mutations through two uvicorn processes on PostgreSQL, running as the
application role of a database migrated by its owner: exactly 200 entries, each tenant's chain
contiguous and unforked, and the verifier passes; then the owner edits, deletes and truncates, and
the verifier names the first broken sequence each time."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest

from store import audit
from store.audit import ChainHead
from store.db import Database
from store.migrate import upgrade
from tests.conftest import gql, login, make_tenant, sql
from tests.gateway.test_audit_cli import owned_database
from tests.gateway.test_shared_mode import gateway_env, gateway_processes

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

UPDATE = "mutation($n: String!) { updateOrganization(input: {name: $n}) { name } }"
VERIFY = "{ verifyAuditChain { ok checked firstBrokenSequence } }"


async def verify(url: str, checkpoint: list[ChainHead] | None = None) -> audit.VerificationReport:
    db = Database(url)
    try:
        async with db.transaction() as session:
            return await audit.verify(session, checkpoint=checkpoint or [])
    finally:
        await db.dispose()


def as_table_owner(url: str, statement: str, **params: Any) -> None:
    """What the tables' owner can do past the triggers: switch them off, change rows, switch them on."""
    sql(url, "ALTER TABLE audit_log DISABLE TRIGGER USER")
    try:
        sql(url, statement, **params)
    finally:
        sql(url, "ALTER TABLE audit_log ENABLE TRIGGER USER")


@pytest.mark.slow
async def test_c093_two_processes_two_hundred_mutations_one_chain_each(
    postgres_admin_url: str, redis_url: str, signing_key: str, tmp_path: Path
) -> None:
    roles = owned_database(postgres_admin_url)
    owner_url, app_url, app_role = roles.owner_url, roles.app_url, roles.app_role
    upgrade(owner_url, app_role=app_role)
    tenants = [await make_tenant(app_url, slug=f"t{i}", email=f"owner@t{i}.test") for i in range(2)]

    env = gateway_env(app_url, redis_url, signing_key, DATABASE_POOL_SIZE="20")
    with gateway_processes(2, env, tmp_path) as urls:
        limits = httpx.Limits(max_connections=100)
        async with (
            httpx.AsyncClient(base_url=urls[0], limits=limits, timeout=60) as c1,
            httpx.AsyncClient(base_url=urls[1], limits=limits, timeout=60) as c2,
        ):
            clients = [c1, c2]
            tokens = [(await login(c1, t))["accessToken"] for t in tenants]

            async def mutate(i: int) -> int:
                r = await gql(clients[i % 2], UPDATE, {"n": f"name {i}"}, token=tokens[(i // 2) % 2])
                assert r.json().get("data"), r.text
                return r.status_code

            statuses = await asyncio.gather(*(mutate(i) for i in range(200)))
            assert set(statuses) == {200}
            checked = (await gql(c2, VERIFY, token=tokens[0])).json()["data"]["verifyAuditChain"]
            assert checked["ok"] is True

    assert sql(app_url, "SELECT count(*) FROM audit_log WHERE action = 'org_updated'") == [(200,)]
    for tenant in tenants:
        assert sql(
            app_url, "SELECT count(*) FROM audit_log WHERE chain = :c AND action = 'org_updated'", c=tenant.org_id
        ) == [(100,)]
        sequences = [
            r[0]
            for r in sql(app_url, "SELECT sequence FROM audit_log WHERE chain = :c ORDER BY sequence", c=tenant.org_id)
        ]
        assert sequences == list(range(1, len(sequences) + 1))
    forks = sql(app_url, "SELECT chain, previous_hash FROM audit_log GROUP BY chain, previous_hash HAVING count(*) > 1")
    assert forks == []
    report = await verify(app_url)
    assert report.ok
    assert report.checked == len(sql(app_url, "SELECT id FROM audit_log"))

    chain = tenants[0].org_id
    head = sql(app_url, "SELECT sequence, hash FROM audit_chain_heads WHERE chain = :c", c=chain)[0]
    checkpoint = [ChainHead(chain, head[0], head[1])]
    # an edit
    as_table_owner(owner_url, "UPDATE audit_log SET result = 'denied' WHERE chain = :c AND sequence = 40", c=chain)
    assert (await verify(app_url)).chains[chain].first_broken_sequence == 40
    as_table_owner(owner_url, "UPDATE audit_log SET result = 'success' WHERE chain = :c AND sequence = 40", c=chain)
    assert (await verify(app_url)).ok
    # a deletion
    as_table_owner(owner_url, "DELETE FROM audit_log WHERE chain = :c AND sequence = 70", c=chain)
    broken = (await verify(app_url)).chains[chain]
    assert (broken.first_broken_sequence, broken.gaps) == (70, [(70, 70)])
    # a truncation of the tail, head row made to agree: only the checkpoint tells
    as_table_owner(owner_url, "DELETE FROM audit_log WHERE chain = :c AND sequence >= 60", c=chain)
    last = sql(
        app_url, "SELECT sequence, hash FROM audit_log WHERE chain = :c ORDER BY sequence DESC LIMIT 1", c=chain
    )[0]
    sql(
        owner_url,
        "UPDATE audit_chain_heads SET sequence = :s, hash = :h WHERE chain = :c",
        s=last[0],
        h=last[1],
        c=chain,
    )
    assert (await verify(app_url)).ok
    truncated = (await verify(app_url, checkpoint)).chains[chain]
    assert truncated.first_broken_sequence == 60
