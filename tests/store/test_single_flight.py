"""One load for the callers that miss a cache together (store/single_flight.py), and the per-process caches
of the edge that use it: the security policies, the organizations' limits and the sessions, each read once by
concurrent requests on a real database, and never kept when an invalidation arrived during the read."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import event

from gateway.admission import OrgLimitCache
from identity.security_policies import PolicyCache
from store.db import Database
from store.single_flight import SingleFlight
from tests.conftest import make_tenant


async def test_callers_of_one_key_share_one_load() -> None:
    flight: SingleFlight[str] = SingleFlight()
    started = 0
    release = asyncio.Event()

    async def load() -> str:
        nonlocal started
        started += 1
        await release.wait()
        return f"value {started}"

    callers = [asyncio.create_task(flight.load("k", load)) for _ in range(10)]
    other = asyncio.create_task(flight.load("other", load))
    await asyncio.sleep(0)
    assert len(flight) == 2
    release.set()
    assert set(await asyncio.gather(*callers)) in ({"value 1"}, {"value 2"})
    assert await other in ("value 1", "value 2")
    assert started == 2
    assert len(flight) == 0
    # the load ended: the next caller loads again
    assert await flight.load("k", load) == "value 3"


async def test_a_failed_load_fails_every_caller_and_the_next_caller_loads_again() -> None:
    flight: SingleFlight[int] = SingleFlight()
    calls = 0

    async def failing() -> int:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.01)
        raise RuntimeError("the database went away")

    results = await asyncio.gather(*(flight.load("k", failing) for _ in range(5)), return_exceptions=True)
    assert calls == 1
    assert all(isinstance(r, RuntimeError) for r in results)

    async def working() -> int:
        return 7

    assert await flight.load("k", working) == 7


async def test_a_caller_that_goes_away_leaves_the_load_to_the_others() -> None:
    flight: SingleFlight[str] = SingleFlight()
    release = asyncio.Event()

    async def load() -> str:
        await release.wait()
        return "read"

    first = asyncio.create_task(flight.load("k", load))
    second = asyncio.create_task(flight.load("k", load))
    await asyncio.sleep(0)
    first.cancel()
    await asyncio.sleep(0)
    release.set()
    assert await second == "read"
    with pytest.raises(asyncio.CancelledError):
        await first


async def test_a_load_whose_every_caller_went_away_ends_unreported(caplog: pytest.LogCaptureFixture) -> None:
    flight: SingleFlight[str] = SingleFlight()

    async def failing() -> str:
        await asyncio.sleep(0.01)
        raise RuntimeError("nobody waits for this")

    caller = asyncio.create_task(flight.load("k", failing))
    await asyncio.sleep(0)
    caller.cancel()
    await asyncio.sleep(0.05)
    assert len(flight) == 0
    assert "exception was never retrieved" not in caplog.text


@contextlib.contextmanager
def selects_of(db: Database, table: str) -> Iterator[list[str]]:
    """The SELECT statements that read `table`, as the engine runs them."""
    seen: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT") and table in statement:
            seen.append(statement)

    engine = db.engine.sync_engine
    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)


@pytest.mark.parametrize(
    ("cache_type", "table"), [(PolicyCache, "security_policies"), (OrgLimitCache, "organizations")]
)
async def test_concurrent_misses_read_once_and_keep_what_they_read(
    database_url: str, cache_type: Any, table: str
) -> None:
    tenant = await make_tenant(database_url)
    db = Database(database_url)
    try:
        cache = cache_type(db)
        with selects_of(db, table) as reads:
            answers = await asyncio.gather(*(cache.get(tenant.org_id) for _ in range(20)))
        assert len(reads) == 1
        assert all(a == answers[0] for a in answers)
        with selects_of(db, table) as reads:
            assert await cache.get(tenant.org_id) == answers[0]
        assert reads == []  # kept
    finally:
        await db.dispose()


@pytest.mark.parametrize("cache_type", [OrgLimitCache, PolicyCache])
async def test_a_read_running_when_its_organization_changes_is_not_kept(database_url: str, cache_type: Any) -> None:
    """`org:<id>` arrives while the organization is being read: that read answers its callers (it is as
    recent as the request), but the next request reads again, and a caller that arrives after the
    announcement does not join the read that predates it."""
    tenant = await make_tenant(database_url)
    db = Database(database_url)
    try:
        cache = cache_type(db)
        table = "organizations" if cache_type is OrgLimitCache else "security_policies"
        with selects_of(db, table) as reads:
            before = asyncio.create_task(cache.get(tenant.org_id))
            await asyncio.sleep(0)  # its read has started
            cache.invalidate([f"org:{tenant.org_id}"])
            await before
            await cache.get(tenant.org_id)
            assert len(reads) == 2  # what the first read found was not kept
            await cache.get(tenant.org_id)
            assert len(reads) == 2  # what the second found is
        with selects_of(db, table) as reads:
            cache.invalidate([f"org:{tenant.org_id}"])
            before = asyncio.create_task(cache.get(tenant.org_id))
            await asyncio.sleep(0)
            cache.invalidate([f"org:{tenant.org_id}"])
            after = asyncio.create_task(cache.get(tenant.org_id))
            await asyncio.gather(before, after)
            assert len(reads) == 2  # the caller after the announcement read for itself
    finally:
        await db.dispose()


async def test_concurrent_requests_read_an_expired_session_once(database_url: str, signing_key: str) -> None:
    """The session cache's entry gone (its lifetime over) while twenty requests of the session arrive: one
    read of the session, and every request is answered."""
    from gateway.app import create_app
    from tests.conftest import login, make_settings, running

    tenant = await make_tenant(database_url)
    app = create_app(make_settings(database_url, signing_key, log_level="WARNING"))
    async with running(app) as client:
        token = (await login(client, tenant))["accessToken"]
        services = app.state.services
        services.sessions.invalidate(["*"])
        with selects_of(services.db, "FROM auth_sessions") as reads:
            answers = await asyncio.gather(
                *(
                    client.post(
                        "/graphql",
                        json={"query": "{ me { user { email } } }"},
                        headers={"authorization": f"Bearer {token}"},
                    )
                    for _ in range(20)
                )
            )
        assert [r.status_code for r in answers] == [200] * 20
        assert all(r.json()["data"]["me"]["user"]["email"] == tenant.email for r in answers)
        assert len(reads) == 1
