"""Admission in shared mode: processes on one PostgreSQL and one Redis.

C-078 (three uvicorn processes, 200 concurrent requests, exactly 50 admitted), C-079/C-084 (a burst
schedule over several window boundaries from three processes, one of them 5 s ahead and one 5 s behind:
no W-span of Redis server timestamps holds more than N), C-085 across processes, C-086/C-087 (Redis
stopped: login closed, tenant limits as configured, counted in /metrics), usage counted once.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.app import create_app
from tests.conftest import (
    LOGIN,
    Tenant,
    error_codes,
    gql,
    login,
    make_settings,
    make_tenant,
    running,
    shared_apps,
    sql,
)
from tests.gateway.test_admission import ORG, assert_rate_limited, set_limits
from tests.gateway.test_shared_mode import ROOT, gateway_env, gateway_processes
from tests.services import redis_server

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


def max_in_any_window(stamps_ms: list[int], window_ms: int) -> int:
    """The most stamps in any half-open span [t, t + window)."""
    stamps = sorted(stamps_ms)
    best, start = 0, 0
    for end, t in enumerate(stamps):
        while t - stamps[start] >= window_ms:
            start += 1
        best = max(best, end - start + 1)
    return best


def test_max_in_any_window() -> None:
    assert max_in_any_window([0, 999, 1000, 1001, 1999], 1000) == 3
    assert max_in_any_window([], 1000) == 0


@pytest.mark.slow
async def test_c078_three_processes_admit_exactly_the_limit(
    postgresql_url: str, redis_url: str, signing_key: str, shared_tenant: Tenant, tmp_path: Path
) -> None:
    other = await make_tenant(postgresql_url, slug=f"b-{shared_tenant.slug}", email=f"b@{shared_tenant.slug}.test")
    env = gateway_env(postgresql_url, redis_url, signing_key, LOG_LEVEL="WARNING")
    sql(
        postgresql_url,
        "UPDATE organizations SET limit_overrides = CAST(:v AS JSON) WHERE id = :id",
        v=json.dumps({"REQUESTS_PER_MINUTE": 50}),
        id=shared_tenant.org_id,
    )
    with gateway_processes(3, env, tmp_path) as urls:
        limits = httpx.Limits(max_connections=100)
        clients = [httpx.AsyncClient(base_url=u, limits=limits, timeout=60) for u in urls]
        try:
            a = (await login(clients[0], shared_tenant))["accessToken"]
            b = (await login(clients[1], other))["accessToken"]
            responses = await asyncio.gather(*(gql(clients[i % 3], ORG, token=a) for i in range(200)))
            statuses = [r.status_code for r in responses]
            assert statuses.count(200) == 50, statuses
            assert statuses.count(429) == 150
            for r in responses:
                if r.status_code == 429:
                    assert int(r.headers["retry-after"]) >= 1
                    assert error_codes(r.json()) == ["RATE_LIMITED"]
            # tenant isolation: B, on every process, is unaffected
            for c in clients:
                assert (await gql(c, ORG, token=b)).status_code == 200
        finally:
            for c in clients:
                await c.aclose()


_BURST = textwrap.dedent("""
    import asyncio, json, sys, time
    skew = float(sys.argv[3])
    real = time.time
    time.time = lambda: real() + skew  # this process's clock is off; admission must not care
    from redis.asyncio import Redis
    from gateway.windows import Limit, RedisWindows

    async def main():
        redis = Redis.from_url(sys.argv[1])
        windows = RedisWindows(redis, prefix=sys.argv[4])
        start = float(sys.argv[2])
        limit = Limit("burst", "k", 10, 2)
        admitted = []
        # bursts of 6 just before and just after each second, for 5 seconds
        for t in [s + d for s in range(1, 6) for d in (-0.02, 0.02)]:
            await asyncio.sleep(max(0.0, start + t - real()))
            for _ in range(6):
                outcome = await windows.take([limit])
                if outcome.admitted:
                    admitted.append(outcome.now_ms)
        await redis.aclose()
        print(json.dumps(admitted))

    asyncio.run(main())
""")


@pytest.mark.slow
def test_c079_c084_boundary_bursts_from_skewed_processes(redis_url: str, tmp_path: Path) -> None:
    """Three processes (clocks 0, +5 s, -5 s) burst on both sides of every second against 10 per 2 s;
    the Redis TIME of every admission is recorded: no 2-second span holds more than 10."""
    script = tmp_path / "burst.py"
    script.write_text(_BURST)
    start = time.time() + 1.0
    prefix = f"test:{time.monotonic_ns()}:"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), redis_url, str(start), str(skew), prefix],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for skew in (0.0, 5.0, -5.0)
    ]
    stamps: list[int] = []
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err.decode()[-2000:]
        stamps += json.loads(out)
    assert max_in_any_window(stamps, 2_000) <= 10
    # and it does not over-limit: 5 s of pressure admit at least two full windows' worth
    assert len(stamps) >= 20


async def test_c085_downgrade_reaches_the_other_process(
    postgresql_url: str, redis_url: str, signing_key: str, shared_tenant: Tenant
) -> None:
    async with shared_apps(postgresql_url, redis_url, signing_key, shared_tenant) as (c1, c2, token, one, _):
        await set_limits(one, postgresql_url, shared_tenant.org_id, {"REQUESTS_PER_MINUTE": 10})
        await asyncio.sleep(0.2)
        for c in (c1, c2, c1, c2, c1, c2):
            assert (await gql(c, ORG, token=token)).status_code == 200
        await set_limits(one, postgresql_url, shared_tenant.org_id, {"REQUESTS_PER_MINUTE": 3})
        deadline = time.monotonic() + 1.0
        while (r := await gql(c2, ORG, token=token)).status_code == 200:
            assert time.monotonic() < deadline, "the downgrade did not reach process two"
            await asyncio.sleep(0.02)
        assert_rate_limited(r, "tenant-minute")
        assert r.headers["ratelimit"].startswith('"tenant-minute";r=0;')


async def test_usage_is_counted_once_across_processes(
    postgresql_url: str, redis_url: str, signing_key: str, shared_tenant: Tenant
) -> None:
    async with shared_apps(postgresql_url, redis_url, signing_key, shared_tenant) as (c1, c2, token, one, two):
        for c in (c1, c2, c1, c2, c2):
            assert (await gql(c, ORG, token=token)).status_code == 200
        await one.state.services.usage.flush()
        await two.state.services.usage.flush()
    rows = sql(
        postgresql_url,
        "SELECT subject_type, requests, cost FROM usage_daily WHERE organization_id = :o ORDER BY subject_type",
        o=shared_tenant.org_id,
    )
    assert [tuple(r) for r in rows] == [("total", 5, 5), ("user", 5, 5)]


MEMBERS_FIRST = "query($n: Int) { organization { members(first: $n) { edges { cursor } } } }"


async def test_each_operation_is_counted_once_at_its_cost_in_shared_mode(
    postgresql_url: str, redis_url: str, signing_key: str, shared_tenant: Tenant
) -> None:
    """The same operation again and again: each request counted once, at its cost; a body the view
    refuses before the operation starts, or one over the size limit, counts nothing; a cost read from
    the variables is measured anew each time; a refusal is 429 with its headers."""
    async with shared_apps(postgresql_url, redis_url, signing_key, shared_tenant) as (c1, c2, token, one, _):
        remaining = []
        for _ in range(3):
            r = await gql(c1, ORG, token=token)
            assert r.status_code == 200
            assert r.json()["data"]["organization"]["slug"] == shared_tenant.slug
            remaining.append(r.json()["extensions"]["cost"]["remaining"])
        bad = await c1.post(
            "/graphql", json={"query": ORG, "variables": "not an object"}, headers={"Authorization": f"Bearer {token}"}
        )
        assert bad.status_code == 400

        # a body over the limit, sent in chunks with no declared length, is refused at the edge
        async def chunks() -> Any:
            yield b'{"query": "{ organization { slug } }", "pad": "'
            for _ in range(40):
                yield b"x" * 32 * 1024
            yield b'"}'

        big = await c1.post(
            "/graphql",
            content=chunks(),
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        assert big.status_code == 413
        assert error_codes(big.json()) == ["BAD_USER_INPUT"]
        assert remaining[0] - remaining[1] == remaining[1] - remaining[2] == 1  # the cost, once each
        rate = (await gql(c2, "{ rateLimit { requestsPerMinute { remaining } } }", token=token)).json()
        assert rate["data"]["rateLimit"]["requestsPerMinute"]["remaining"] == 6_000 - 4

        for n in (3, 30, 3):
            r = await gql(c1, MEMBERS_FIRST, {"n": n}, token=token)
            assert r.status_code == 200, r.text
            assert r.json()["extensions"]["cost"]["requested"] == 2 + n
        r = await gql(c1, ORG, token=token, headers={"X-Portcullis-Explain": "1"})
        assert r.status_code == 200
        assert r.json()["extensions"]["explain"]["cost"] == 1

        await set_limits(one, postgresql_url, shared_tenant.org_id, {"REQUESTS_PER_MINUTE": 10})
        statuses = [(await gql(c1, ORG, token=token)).status_code for _ in range(3)]
        assert statuses == [200, 200, 429]
        assert_rate_limited(await gql(c1, ORG, token=token), "tenant-minute")


async def test_rate_limit_field_in_shared_mode(
    postgresql_url: str, redis_url: str, signing_key: str, shared_tenant: Tenant
) -> None:
    query = "{ rateLimit { requestsPerMinute { limit remaining } } }"
    async with shared_apps(postgresql_url, redis_url, signing_key, shared_tenant) as (c1, c2, token, *_):
        seen = [
            (await gql(c, query, token=token)).json()["data"]["rateLimit"]["requestsPerMinute"] for c in (c1, c2, c1)
        ]
        assert seen == [{"limit": 6_000, "remaining": 6_000 - n} for n in (1, 2, 3)]


@pytest.mark.parametrize("on_error", ["closed", "open"])
async def test_c086_login_fails_closed_when_redis_is_down(
    postgresql_url: str, signing_key: str, shared_tenant: Tenant, on_error: str
) -> None:
    with redis_server() as url:
        app = create_app(make_settings(postgresql_url, signing_key, redis_url=url, limits_on_redis_error=on_error))
        async with running(app) as client:
            assert (await gql(client, LOGIN, {"email": shared_tenant.email, "password": "wrong"})).status_code == 200
            assert _stop_redis(url)
            for _ in range(3):
                r = await gql(client, LOGIN, {"email": shared_tenant.email, "password": shared_tenant.password})
                assert r.status_code == 503, r.text
                assert "data" not in r.json()
                assert r.headers["retry-after"] == "1"
            metrics = (await client.get("/metrics")).text
            assert 'portcullis_rate_limiter_errors_total{outcome="refused"} 3.0' in metrics


async def test_c087_tenant_limits_follow_the_setting_when_redis_is_down(
    postgresql_url: str, signing_key: str, shared_tenant: Tenant
) -> None:
    with redis_server() as url:
        closed = create_app(make_settings(postgresql_url, signing_key, redis_url=url))
        opened = create_app(make_settings(postgresql_url, signing_key, redis_url=url, limits_on_redis_error="open"))
        async with running(closed) as c_closed, running(opened) as c_open:
            token = (await login(c_closed, shared_tenant))["accessToken"]
            assert (await gql(c_closed, ORG, token=token)).status_code == 200
            assert (await gql(c_open, ORG, token=token)).status_code == 200
            assert _stop_redis(url)
            r = await gql(c_closed, ORG, token=token)
            assert r.status_code == 503, r.text
            r = await gql(c_open, ORG, token=token)
            assert r.status_code == 200, r.text
            assert r.json()["data"]["organization"]["slug"] == shared_tenant.slug
            assert (
                'portcullis_rate_limiter_errors_total{outcome="refused"} 1.0' in (await c_closed.get("/metrics")).text
            )
            assert 'portcullis_rate_limiter_errors_total{outcome="admitted"} 1.0' in (await c_open.get("/metrics")).text


def _stop_redis(url: str) -> bool:
    """Stops the Redis server at `url` (one this test started) by asking it to shut down."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        client.shutdown(nosave=True)
    except redis.exceptions.ConnectionError:
        pass
    finally:
        client.close()
    try:
        redis.Redis.from_url(url, socket_connect_timeout=0.5).ping()
    except redis.exceptions.ConnectionError:
        return True
    return False
