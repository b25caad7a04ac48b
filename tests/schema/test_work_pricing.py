"""Work that grows with the data is priced by that work (C-130): `verifyAuditChain` and `generateReport`
take one cost point per ENTRIES_PER_COST_POINT audit entries they read from the tenant's cost budget,
before reading them, and a verification leaves the event loop to other requests while it runs."""

from __future__ import annotations

import asyncio
import math
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

import store.audit
from resolvers.budgets import ENTRIES_PER_COST_POINT
from store.audit import AuditEvent
from store.db import Database
from tests.conftest import Tenant, error_codes, gql, login, make_tenant, shared_apps, sql

VERIFY = "query($from: DateTime, $to: DateTime) { verifyAuditChain(from: $from, to: $to) { ok checked } }"
BUDGET = "{ rateLimit { costPerMinute { remaining } } }"  # costs 2
GENERATE = (
    "mutation($kind: ReportKind!, $from: DateTime!, $to: DateTime!) { generateReport(kind: $kind, "
    "from: $from, to: $to) { id } }"
)  # costs 11


def head(url: str, chain: str) -> int:
    rows = sql(url, "SELECT sequence FROM audit_chain_heads WHERE chain = :c", c=chain)
    return int(rows[0][0]) if rows else 0


async def grow_chain(url: str, chain: str, to: int, *, action: str = "mutation") -> None:
    """Appends entries through the audit writer until the chain holds `to`."""
    missing = to - head(url, chain)
    db = Database(url)
    try:
        for start in range(0, missing, 1000):
            async with db.transaction() as session:
                await store.audit.append(
                    session,
                    [
                        AuditEvent(
                            action=action,
                            organization_id=chain,
                            actor_type="user",
                            actor_id="u-seed",
                            request_id=f"seed-{start + i}",
                            ip="203.0.113.9",
                            details={"field": "seeded"},
                        )
                        for i in range(min(1000, missing - start))
                    ],
                    entries=False,
                )
    finally:
        await db.dispose()
    assert head(url, chain) == to


async def remaining(client: httpx.AsyncClient, token: str) -> int:
    body = (await gql(client, BUDGET, token=token)).json()
    return int(body["data"]["rateLimit"]["costPerMinute"]["remaining"])


@pytest.fixture
def verifications(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every chain verification that starts (the real one runs)."""
    calls: list[Any] = []
    original = store.audit.verify

    async def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs)
        return await original(*args, **kwargs)

    monkeypatch.setattr(store.audit, "verify", spy)
    return calls


def stamp(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


async def test_verification_is_charged_by_the_entries_it_verifies(client, tenant: Tenant, database_url: str) -> None:
    """C-130: a 3,000-entry chain costs ceil(3000 / N) points beyond the field's static cost, taken from
    the tenant's COST_PER_MINUTE budget and reported in `extensions.cost`."""
    token = (await login(client, tenant))["accessToken"]
    await grow_chain(database_url, tenant.org_id, 3000)
    price = math.ceil(3000 / ENTRIES_PER_COST_POINT)
    before = await remaining(client, token)
    r = await gql(client, VERIFY, token=token)
    body = r.json()
    assert body["data"]["verifyAuditChain"] == {"ok": True, "checked": 3000}, body
    assert body["extensions"]["cost"]["requested"] == 1 + price
    assert body["extensions"]["cost"]["remaining"] == before - 1 - price
    assert await remaining(client, token) == before - 1 - price - 2


async def test_a_range_is_charged_by_the_entries_in_it(client, tenant: Tenant, database_url: str) -> None:
    """C-130: with from/to, the price follows the entries of the range, not of the chain."""
    token = (await login(client, tenant))["accessToken"]
    await grow_chain(database_url, tenant.org_id, 400)
    cut = datetime.now(UTC) + timedelta(seconds=1)
    await asyncio.sleep(1.1)
    await grow_chain(database_url, tenant.org_id, 650)
    before = await remaining(client, token)
    body = (await gql(client, VERIFY, {"from": stamp(cut)}, token=token)).json()
    assert body["data"]["verifyAuditChain"] == {"ok": True, "checked": 250}, body
    assert body["extensions"]["cost"]["requested"] == 1 + math.ceil(250 / ENTRIES_PER_COST_POINT)
    assert await remaining(client, token) == before - 1 - math.ceil(250 / ENTRIES_PER_COST_POINT) - 2


async def test_a_budget_smaller_than_the_price_refuses_and_verifies_nothing(
    client, database_url: str, verifications: list[Any]
) -> None:
    """C-130: a tenant whose cost budget cannot pay for the chain gets RATE_LIMITED (429, retryAfter,
    Retry-After), nothing is verified and nothing but the static cost is spent."""
    tenant = await make_tenant(
        database_url, slug="smallco", email="owner@smallco.test", limits={"COST_PER_MINUTE": 200}
    )
    token = (await login(client, tenant))["accessToken"]
    await grow_chain(database_url, tenant.org_id, 3000)
    before = await remaining(client, token)
    r = await gql(client, VERIFY, token=token)
    body = r.json()
    assert r.status_code == 429, body
    assert body["data"] is None
    assert error_codes(body) == ["RATE_LIMITED"]
    [error] = body["errors"]
    assert error["path"] == ["verifyAuditChain"]
    assert error["extensions"]["retryAfter"] >= 1
    assert int(r.headers["retry-after"]) == error["extensions"]["retryAfter"]
    assert verifications == []
    assert await remaining(client, token) == before - 1 - 2


async def test_reports_reading_the_audit_log_are_charged_by_it(client, tenant: Tenant, database_url: str) -> None:
    """C-130: COMPLIANCE re-verifies the whole chain and SECURITY reads the period's security events:
    each is charged for those entries; USAGE reads no audit entry and costs its static cost."""
    token = (await login(client, tenant))["accessToken"]
    await grow_chain(database_url, tenant.org_id, 1200)
    start, end = datetime.now(UTC) - timedelta(hours=1), datetime.now(UTC) + timedelta(hours=1)
    span = {"from": stamp(start), "to": stamp(end)}

    async def charged(kind: str) -> int:
        r = await gql(client, GENERATE, {"kind": kind, **span}, token=token)
        body = r.json()
        assert body["data"]["generateReport"]["id"], body
        return int(body["extensions"]["cost"]["requested"]) - 11

    chain = head(database_url, tenant.org_id)
    assert await charged("COMPLIANCE") == math.ceil(chain / ENTRIES_PER_COST_POINT)
    await grow_chain(database_url, tenant.org_id, head(database_url, tenant.org_id) + 333, action="authn_login_fail")
    assert await charged("SECURITY") == math.ceil(333 / ENTRIES_PER_COST_POINT)
    assert await charged("USAGE") == 0


async def test_a_verification_leaves_the_loop_to_other_requests(client, tenant: Tenant, database_url: str) -> None:
    """C-130: verifying a 10,000-entry chain hands the event loop back between small batches: no stall of
    the loop holds a sizeable part of the verification (a probe on the same loop measures the gaps)."""
    token = (await login(client, tenant))["accessToken"]
    await grow_chain(database_url, tenant.org_id, 10_000)
    gaps: list[float] = []
    done = asyncio.Event()

    async def probe() -> None:
        last = time.perf_counter()
        while not done.is_set():
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    probing = asyncio.create_task(probe())
    await asyncio.sleep(0.01)
    started = time.perf_counter()
    body = (await gql(client, VERIFY, token=token)).json()
    took = time.perf_counter() - started
    done.set()
    await probing
    assert body["data"]["verifyAuditChain"] == {"ok": True, "checked": 10_000}, body
    # The third-longest gap, so that a pause or two of the process (a collection, a busy machine) is not
    # taken for the verifier's. In batches of 2,000 entries it held the loop for 1/7 to 1/5 of the whole
    # verification at a time; in batches of 200, for 1/50 to 1/25.
    third = sorted(gaps)[-3]
    assert third < took / 12, f"the loop stalled {third * 1000:.0f} ms of a {took * 1000:.0f} ms verification"


async def test_the_charge_is_shared_by_every_process(
    postgresql_url: str, redis_url: str, signing_key: str, shared_tenant: Tenant
) -> None:
    """C-130, shared mode: the price is taken from the tenant's budget in Redis, so another process of the
    gateway sees it spent."""
    await grow_chain(postgresql_url, shared_tenant.org_id, 1000)
    async with shared_apps(postgresql_url, redis_url, signing_key, shared_tenant) as (c1, c2, token, _, _):
        before = await remaining(c2, token)
        body = (await gql(c1, VERIFY, token=token)).json()
        assert body["data"]["verifyAuditChain"]["checked"] == head(postgresql_url, shared_tenant.org_id), body
        price = math.ceil(body["data"]["verifyAuditChain"]["checked"] / ENTRIES_PER_COST_POINT)
        assert body["extensions"]["cost"]["requested"] == 1 + price
        assert await remaining(c2, token) == before - 1 - price - 2
