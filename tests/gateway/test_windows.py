"""The moving windows themselves: the boundary schedules of security.md §6.3 on a simulated clock, a
property over random weighted schedules, all-or-nothing across limits, and the same on a real Redis."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import gateway.windows as windows_module
from gateway.windows import Limit, LocalWindows, RedisWindows, StoreUnavailable
from tests.gateway.test_admission_shared import max_in_any_window
from tests.services import free_port


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def weighted_max_in_any_window(hits: list[tuple[int, int]], window_ms: int) -> int:
    hits = sorted(hits)
    best, start, total = 0, 0, 0
    for t, w in hits:
        total += w
        while t - hits[start][0] >= window_ms:
            total -= hits[start][1]
            start += 1
        best = max(best, total)
    return best


async def run_schedule(schedule: list[float], limit: Limit) -> list[int]:
    clock = Clock()
    base = clock.now
    windows = LocalWindows(clock)
    admitted = []
    for at in schedule:
        clock.now = base + at
        outcome = await windows.take([limit])
        if outcome.admitted:
            admitted.append(outcome.now_ms)
    return admitted


async def test_c079_boundary_schedule_one() -> None:
    """1 hit at 0 s, 9 at 59.9 s, 10 at 60.1 s, 10 at 60.2 s against 10 a minute (fixed windows admit 19
    in one 60 s span here)."""
    schedule = [0.0] + [59.9] * 9 + [60.1] * 10 + [60.2] * 10
    admitted = await run_schedule(schedule, Limit("m", "k", 10, 60))
    assert max_in_any_window(admitted, 60_000) <= 10
    assert len(admitted) >= 10


async def test_c079_boundary_schedule_two() -> None:
    """10 at 59.99 s, then one every 0.5 s from 60 s (a sliding-window counter admits 12 in a span here)."""
    schedule = [59.99] * 10 + [60 + 0.5 * i for i in range(240)]
    admitted = await run_schedule(schedule, Limit("m", "k", 10, 60))
    assert max_in_any_window(admitted, 60_000) <= 10
    assert len(admitted) >= 20  # and it keeps admitting as the window moves


@settings(max_examples=60, deadline=None)
@given(
    amount=st.integers(min_value=0, max_value=30),
    hits=st.lists(st.tuples(st.floats(min_value=0, max_value=200, allow_nan=False), st.integers(0, 8)),
                  max_size=120),
)
def test_no_window_ever_holds_more_than_the_amount(amount: int, hits: list[tuple[float, int]]) -> None:
    async def run() -> list[tuple[int, int]]:
        clock = Clock()
        base = clock.now
        windows = LocalWindows(clock)
        admitted = []
        for at, weight in sorted(hits):
            clock.now = base + at
            outcome = await windows.take([Limit("c", "k", amount, 10, weight)])
            if outcome.admitted:
                admitted.append((outcome.now_ms, weight))
        return admitted

    admitted = asyncio.run(run())
    assert weighted_max_in_any_window(admitted, 10_000) <= amount


async def test_all_or_nothing_and_weights_locally() -> None:
    clock = Clock()
    windows = LocalWindows(clock)
    cost = Limit("cost", "c", 12, 60, 5)
    requests = Limit("req", "r", 100, 60)
    assert (await windows.take([requests, cost])).admitted
    assert (await windows.take([requests, cost])).admitted
    refused = await windows.take([requests, cost])
    assert not refused.admitted
    assert refused.refused_by == cost
    assert 60_000 <= refused.retry_ms <= 60_500
    assert [s.used for s in refused.states] == [2, 10]  # the refused request spent nothing
    clock.now += 61
    assert [s.used for s in (await windows.take([requests, cost])).states] == [1, 5]


@pytest.fixture
async def redis_windows(redis_url: str) -> AsyncIterator[RedisWindows]:
    from redis.asyncio import BlockingConnectionPool, Redis

    redis = Redis.from_pool(BlockingConnectionPool.from_url(redis_url, max_connections=20))
    windows = RedisWindows(redis, prefix=f"test:{uuid.uuid4().hex}:")
    try:
        yield windows
    finally:
        await windows.aclose()
        await redis.aclose()


@pytest.mark.redis
async def test_redis_all_or_nothing_weights_and_server_time(redis_windows: RedisWindows) -> None:
    cost = Limit("cost", "c", 12, 60, 5)
    requests = Limit("req", "r", 100, 60)
    first = await redis_windows.take([requests, cost])
    assert first.admitted
    seconds, micros = await redis_windows.redis.time()
    assert abs(first.now_ms - (seconds * 1000 + micros // 1000)) < 1000  # the Redis server's clock
    assert (await redis_windows.take([requests, cost])).admitted
    refused = await redis_windows.take([requests, cost])
    assert not refused.admitted
    assert refused.refused_by == cost
    assert 59_000 <= refused.retry_ms <= 60_500
    assert [s.used for s in refused.states] == [2, 10]
    peek = await redis_windows.take([Limit("req", "r", 100, 60, 0)], spend=False)
    assert [s.used for s in peek.states] == [2]


@pytest.mark.redis
async def test_redis_concurrent_takes_admit_exactly_the_amount(redis_windows: RedisWindows) -> None:
    limit = Limit("m", "k", 50, 60)
    outcomes = await asyncio.gather(*(redis_windows.take([limit]) for _ in range(200)))
    assert sum(o.admitted for o in outcomes) == 50


@pytest.mark.redis
async def test_redis_zero_limit_refuses_with_the_window(redis_windows: RedisWindows) -> None:
    outcome = await redis_windows.take([Limit("m", "z", 0, 60)])
    assert not outcome.admitted
    assert outcome.retry_ms == 60_000
    assert outcome.states[0].remaining == 0


# The script on a simulated clock: the same text with its one `TIME` read replaced by the last ARGV, so
# a schedule can be replayed against the in-process windows, which are the reference.
_TIME = ("local t = redis.call('TIME')\n"
         "local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n")
assert _TIME in windows_module._SCRIPT
_SIMULATED = windows_module._SCRIPT.replace(_TIME, "local now = tonumber(ARGV[#ARGV])\n")

_LIMITS = (
    st.tuples(st.sampled_from(["a", "b", "c"]), st.integers(0, 30), st.sampled_from([1, 2, 10]), st.integers(0, 8))
)


@pytest.mark.redis
@settings(max_examples=60, deadline=None)
@given(steps=st.lists(
    st.tuples(st.integers(0, 2_500), st.lists(_LIMITS, min_size=1, max_size=3, unique_by=lambda x: x[0]),
              st.booleans()),
    max_size=60,
))
def test_redis_script_agrees_with_the_local_windows(
    redis_url: str, steps: list[tuple[int, list[tuple[str, int, int, int]], bool]]
) -> None:
    """Random schedules of weighted, multi-limit takes (and reads): the script answers exactly what
    `LocalWindows` answers, to the admission, the retry time, the refusing limit, each count and
    each reset time."""
    import redis as sync_redis

    client = sync_redis.Redis.from_url(redis_url)
    try:
        script = client.register_script(_SIMULATED)
        prefix = f"test:{uuid.uuid4().hex}:"
        seconds, _ = client.time()
        now_ms = (seconds + 86_400) * 1000  # ahead of the server's clock: no key expires meanwhile
        local = LocalWindows(lambda: (now_ms + 0.5) / 1000)
        for delta, specs, spend in steps:
            now_ms += delta
            # amounts and windows belong to the key: vary them per key, not per take
            limits = [Limit(name, f"{name}{amount}w{window}", amount, window, weight)
                      for name, amount, window, weight in specs]
            expected = asyncio.run(local.take(limits, spend=spend))
            args: list[int] = [1 if spend else 0]
            for limit in limits:
                args += [limit.amount, limit.window * 1000, limit.bucket_ms, limit.weight]
            raw = [int(v) for v in script(keys=[prefix + limit.key for limit in limits], args=[*args, now_ms])]
            refused = limits.index(expected.refused_by) + 1 if expected.refused_by is not None else 0
            assert raw[:4] == [int(expected.admitted), expected.now_ms, expected.retry_ms, refused]
            assert raw[4:] == [v for s in expected.states for v in (s.used, s.reset_ms)]
    finally:
        client.close()


@pytest.mark.redis
async def test_redis_concurrent_takes_share_few_connections_exactly(redis_url: str) -> None:
    """More takes in flight than connections: they wait their turn, each reads its own reply, and the
    counts are exact."""
    from redis.asyncio import Redis

    redis = Redis.from_url(redis_url)
    windows = RedisWindows(redis, prefix=f"test:{uuid.uuid4().hex}:", max_connections=4)
    try:
        shared = Limit("m", "shared", 120, 60)
        # each take also spends its own key by its own weight: a reply read by the wrong take shows
        outcomes = await asyncio.gather(*(
            windows.take([shared, Limit("own", f"own{i}", 1000, 60, i + 1)]) for i in range(300)
        ))
        assert sum(o.admitted for o in outcomes) == 120
        for i, outcome in enumerate(outcomes):
            assert outcome.states[1].used == (i + 1 if outcome.admitted else 0)
        assert len(windows._free) <= 4
    finally:
        await windows.aclose()
        await redis.aclose()


_BUSY = """
local t = redis.call('TIME')
local until_us = tonumber(t[1]) * 1000000 + tonumber(t[2]) + tonumber(ARGV[1])
repeat t = redis.call('TIME') until tonumber(t[1]) * 1000000 + tonumber(t[2]) >= until_us
return 1
"""


@pytest.mark.redis
async def test_redis_takes_cancelled_mid_command_poison_nothing(redis_url: str) -> None:
    """Takes cancelled while their command is in Redis (held up by a busy script) or while they wait
    for a connection: their connections are closed, never reused, and every later take reads its own
    reply."""
    from redis.asyncio import Redis

    redis = Redis.from_url(redis_url)
    windows = RedisWindows(redis, prefix=f"test:{uuid.uuid4().hex}:", max_connections=6)
    try:
        await windows.take([Limit("m", "warm", 10, 60)])
        busy = asyncio.create_task(redis.eval(_BUSY, 0, 300_000))
        await asyncio.sleep(0.05)
        pending = [asyncio.create_task(windows.take([Limit("m", f"cancelled{i}", 1000, 60, i + 1)]))
                   for i in range(20)]
        await asyncio.sleep(0.05)  # six sent and waiting for Redis, fourteen waiting for a connection
        for task in pending:
            task.cancel()
        assert await busy == 1
        for task in pending:
            with pytest.raises(asyncio.CancelledError):
                await task
        assert windows._free == [] or all(c.is_connected for c in windows._free)
        assert not windows._slots.locked()
        outcomes = await asyncio.gather(*(
            windows.take([Limit("own", f"after{i}", 1000, 60, i + 1)]) for i in range(100)
        ))
        assert [o.states[0].used for o in outcomes] == [i + 1 for i in range(100)]
        assert len(windows._free) <= 6
    finally:
        await windows.aclose()
        await redis.aclose()


@pytest.mark.redis
async def test_redis_script_flushed_is_loaded_again(redis_windows: RedisWindows) -> None:
    limit = Limit("m", "k", 10, 60)
    assert (await redis_windows.take([limit])).states[0].used == 1
    await redis_windows.redis.script_flush()
    assert (await redis_windows.take([limit])).states[0].used == 2  # NOSCRIPT: loaded, sent once more
    assert (await redis_windows.redis.script_exists(windows_module._SHA.decode())) == [True]
    assert (await redis_windows.take([limit])).states[0].used == 3


@contextlib.contextmanager
def _redis_on(port: int, workdir: Path) -> Iterator[None]:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("no redis-server on PATH")
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(workdir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)
        yield
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.mark.redis
async def test_redis_down_is_unavailable_then_recovers(tmp_path: Path) -> None:
    """Redis stops: every take fails with StoreUnavailable (nothing hangs, nothing is counted in the
    process); Redis comes back (empty, without the script): takes work again."""
    from redis.asyncio import BlockingConnectionPool, Redis

    port = free_port()
    redis = Redis.from_pool(BlockingConnectionPool.from_url(
        f"redis://127.0.0.1:{port}/0", max_connections=4, timeout=5, socket_timeout=2, socket_connect_timeout=2))
    windows = RedisWindows(redis, prefix="test:restart:")
    limit = Limit("m", "k", 100, 60)
    try:
        with _redis_on(port, tmp_path):
            outcomes = await asyncio.gather(*(windows.take([limit]) for _ in range(8)))
            assert sorted(o.states[0].used for o in outcomes) == list(range(1, 9))
        # more failures than connections: a take that could not connect gives its place back
        for _ in range(6):
            with pytest.raises(StoreUnavailable):
                await windows.take([limit])
        assert not windows._slots.locked()
        with _redis_on(port, tmp_path):
            assert (await windows.take([limit])).states[0].used == 1
            outcomes = await asyncio.gather(*(windows.take([limit]) for _ in range(8)))
            assert sorted(o.states[0].used for o in outcomes) == list(range(2, 10))
    finally:
        await windows.aclose()
        await redis.aclose()


async def _until_unusable(link: windows_module._Link) -> None:
    for _ in range(200):
        if not link.usable:
            return
        await asyncio.sleep(0.01)
    pytest.fail("the connection is still taken for usable")


async def test_redis_connection_out_of_step_or_closed_is_replaced(redis_windows: RedisWindows) -> None:
    """A reply no take asked for, or the server closing the connection, retires it: the next take runs on
    a new one, and counts once."""
    limit = Limit("m", "k", 10, 60)
    assert (await redis_windows.take([limit])).states[0].used == 1
    (link,) = redis_windows._free
    link._transport.write(b"*1\r\n$4\r\nPING\r\n")  # its PONG reaches a connection nobody waits on
    await _until_unusable(link)
    assert (await redis_windows.take([limit])).states[0].used == 2
    (second,) = redis_windows._free
    assert second is not link
    await redis_windows.redis.client_kill_filter(_type="normal", skipme=True)  # Redis drops the store's connection
    await _until_unusable(second)
    assert (await redis_windows.take([limit])).states[0].used == 3
    assert redis_windows._free[0] is not second


@pytest.mark.redis
async def test_begin_sends_at_once_on_a_free_connection(redis_windows: RedisWindows) -> None:
    """`begin` writes the take before it returns and counts exactly like `take`; with no free connection
    it sends nothing and says so (None)."""
    limit = Limit("m", "k", 10, 60)
    assert redis_windows.begin([limit]) is None  # no connection opened yet: nothing sent
    assert (await redis_windows.take([limit])).states[0].used == 1
    pending = redis_windows.begin([limit])
    assert pending is not None
    assert redis_windows._free == []  # the one connection carries the command
    outcome = await pending
    assert outcome.admitted
    assert outcome.states[0].used == 2
    assert len(redis_windows._free) == 1
    # a refusal comes back the same way, and spends nothing
    full = Limit("m", "k", 2, 60)
    refused = await redis_windows.begin([full])  # type: ignore[misc]
    assert not refused.admitted
    assert refused.refused_by == full
    assert refused.states[0].used == 2


@pytest.mark.redis
async def test_begin_and_take_together_count_exactly(redis_url: str) -> None:
    """Takes sent early and takes sent the usual way, many at once on few connections: each reads its own
    reply, and exactly the amount is admitted."""
    from redis.asyncio import Redis

    redis = Redis.from_url(redis_url)
    windows = RedisWindows(redis, prefix=f"test:{uuid.uuid4().hex}:", max_connections=4)
    try:
        await asyncio.gather(*(windows.take([Limit("own", f"warm{i}", 10, 60)]) for i in range(4)))
        shared = Limit("m", "shared", 120, 60)
        waiting: list[Any] = []
        early = 0
        for i in range(300):
            limits = [shared, Limit("own", f"own{i}", 1000, 60, i + 1)]
            pending = windows.begin(limits) if i % 2 == 0 else None
            if pending is None:
                waiting.append(windows.take(limits))
            else:
                early += 1
                waiting.append(pending)
        outcomes = await asyncio.gather(*waiting)
        assert early >= 2  # some went early, the rest waited for a connection the usual way
        assert sum(o.admitted for o in outcomes) == 120
        for i, outcome in enumerate(outcomes):
            assert outcome.states[1].used == (i + 1 if outcome.admitted else 0)
        assert len(windows._free) <= 4
        assert not windows._slots.locked()
    finally:
        await windows.aclose()
        await redis.aclose()


@pytest.mark.redis
async def test_begin_after_a_script_flush_loads_it_again(redis_windows: RedisWindows) -> None:
    limit = Limit("m", "k", 10, 60)
    assert (await redis_windows.take([limit])).states[0].used == 1
    await redis_windows.redis.script_flush()
    pending = redis_windows.begin([limit])
    assert pending is not None
    assert (await pending).states[0].used == 2  # NOSCRIPT: loaded, sent once more
    assert (await redis_windows.take([limit])).states[0].used == 3
    assert len(redis_windows._free) == 1


@pytest.mark.redis
async def test_begin_whose_caller_gives_up_leaves_a_clean_connection(redis_windows: RedisWindows) -> None:
    """A caller cancelled while its early take is in Redis: the reply is still read, the connection goes
    back clean, and the next take reads its own reply. A connection Redis drops fails the take
    (StoreUnavailable), and the next one runs on a new connection."""
    limit = Limit("m", "k", 10, 60)
    await redis_windows.take([limit])
    pending = redis_windows.begin([limit])
    assert pending is not None
    waiting = asyncio.ensure_future(pending)
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    for _ in range(200):
        if redis_windows._free:
            break
        await asyncio.sleep(0.01)
    (link,) = redis_windows._free
    assert link.usable
    assert (await redis_windows.take([limit])).states[0].used == 3  # the cancelled take counted once
    (link,) = redis_windows._free
    await redis_windows.redis.client_kill_filter(_type="normal", skipme=True)
    await _until_unusable(link)
    assert redis_windows.begin([limit]) is None  # the only free connection is gone: nothing sent
    assert (await redis_windows.take([limit])).states[0].used == 4


@pytest.mark.redis
async def test_begin_when_redis_stops_answering_is_unavailable(tmp_path: Path) -> None:
    from redis.asyncio import Redis

    port = free_port()
    with _redis_on(port, tmp_path):
        redis = Redis.from_url(f"redis://127.0.0.1:{port}/0", socket_timeout=0.5)
        windows = RedisWindows(redis, prefix="t:")
        try:
            await windows.take([Limit("m", "k", 10, 60)])
            busy = asyncio.create_task(redis.eval(_BUSY, 0, 1_500_000))  # Redis busy for 1.5 s
            await asyncio.sleep(0.05)
            pending = windows.begin([Limit("m", "k", 10, 60)])
            assert pending is not None
            with pytest.raises(StoreUnavailable):
                await pending
            assert not windows._slots.locked()
            assert windows._free == []
            with contextlib.suppress(Exception):
                await busy
        finally:
            await windows.aclose()
            await redis.aclose()
