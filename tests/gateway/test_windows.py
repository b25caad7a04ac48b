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

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.windows import Limit, LocalWindows, RedisWindows, StoreUnavailable
from gateway.windows_script import SCRIPT
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
    hits=st.lists(st.tuples(st.floats(min_value=0, max_value=200, allow_nan=False), st.integers(0, 8)), max_size=120),
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


async def test_a_clock_that_steps_back_keeps_the_reset_at_the_oldest_hit() -> None:
    """The reset time is read from the oldest bucket without a scan: a hit admitted after the clock went back
    lands in an older bucket than the newest, and becomes the oldest when it is."""
    clock = Clock()
    windows = LocalWindows(clock)
    limit = Limit("req", "r", 100, 60)  # buckets of 500 ms
    start = clock.now = 1_000.0
    first = await windows.take([limit])
    assert first.states[0].reset_ms == 1_000_500 + 60_000
    clock.now = start + 2
    assert (await windows.take([limit])).states[0].reset_ms == 1_000_500 + 60_000
    clock.now = start - 1  # back by three seconds: the bucket of 999 s is older than every other
    back = await windows.take([limit])
    assert back.states[0].used == 3
    assert back.states[0].reset_ms == 999_500 + 60_000
    clock.now = start + 60.2  # the hit of 999 s no longer counts; the one of 1,000 s still does
    later = await windows.take([limit])
    assert later.states[0].used == 3
    assert later.states[0].reset_ms == 1_000_500 + 60_000


@pytest.fixture
async def redis_windows(redis_url: str) -> AsyncIterator[RedisWindows]:
    from redis.asyncio import BlockingConnectionPool, Redis

    redis = Redis.from_pool(BlockingConnectionPool.from_url(redis_url, max_connections=20))
    try:
        yield RedisWindows(redis, prefix=f"test:{uuid.uuid4().hex}:")
    finally:
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
_TIME = "local t = redis.call('TIME')\nlocal now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
assert _TIME in SCRIPT
_SIMULATED = SCRIPT.replace(_TIME, "local now = tonumber(ARGV[#ARGV])\n")

# each example's counters: three keys, each with its own amount and window (they belong to the key), so
# that the takes of one call often share a counter, as a tenant's concurrent requests do
_KEYS = st.fixed_dictionaries({name: st.tuples(st.integers(0, 30), st.sampled_from([1, 2, 10])) for name in "abc"})
# a take: up to three of the keys, each with a weight, and whether it spends
_TAKES = st.lists(
    st.tuples(
        st.lists(
            st.tuples(st.sampled_from(["a", "b", "c"]), st.integers(0, 8)),
            min_size=1,
            max_size=3,
            unique_by=lambda x: x[0],
        ),
        st.booleans(),
    ),
    min_size=1,
    max_size=4,
)


def _call_args(takes: list[tuple[list[Limit], bool]]) -> list[int]:
    """The script's ARGV for `takes` run by one call (gateway/windows.py's layout)."""
    args = [len(takes)]
    for limits, spend in takes:
        args += [1 if spend else 0, len(limits)]
        for limit in limits:
            args += [limit.amount, limit.window * 1000, limit.bucket_ms, limit.weight]
    return args


@pytest.mark.redis
@settings(max_examples=60, deadline=None)
@given(keys=_KEYS, steps=st.lists(st.tuples(st.integers(0, 2_500), _TAKES), max_size=40))
def test_redis_script_agrees_with_the_local_windows(
    redis_url: str,
    keys: dict[str, tuple[int, int]],
    steps: list[tuple[int, list[tuple[list[tuple[str, int]], bool]]]],
) -> None:
    """Random schedules of weighted, multi-limit takes (and reads), up to four run by one call of the script
    as concurrent requests are, often on the same counters: the script answers exactly what `LocalWindows`
    answers to the same takes one after the other, to the admission, the retry time, the refusing limit, each
    count and each reset time."""
    import redis as sync_redis

    client = sync_redis.Redis.from_url(redis_url)
    try:
        script = client.register_script(_SIMULATED)
        prefix = f"test:{uuid.uuid4().hex}:"
        seconds, _ = client.time()
        now_ms = (seconds + 86_400) * 1000  # ahead of the server's clock: no key expires meanwhile
        local = LocalWindows(lambda: (now_ms + 0.5) / 1000)
        for delta, specs in steps:
            now_ms += delta
            takes = [
                ([Limit(name, name, keys[name][0], keys[name][1], weight) for name, weight in t], spend)
                for t, spend in specs
            ]
            counters = [prefix + limit.key for limits, _ in takes for limit in limits]
            raw = [int(v) for v in script(keys=counters, args=[*_call_args(takes), now_ms])]
            assert raw[0] == now_ms
            at = 1
            for limits, spend in takes:
                expected = asyncio.run(local.take(limits, spend=spend))
                refused = limits.index(expected.refused_by) + 1 if expected.refused_by is not None else 0
                assert raw[at : at + 3] == [int(expected.admitted), expected.retry_ms, refused]
                at += 3
                assert raw[at : at + 2 * len(limits)] == [v for s in expected.states for v in (s.used, s.reset_ms)]
                at += 2 * len(limits)
            assert at == len(raw)
    finally:
        client.close()


@pytest.mark.redis
def test_redis_a_clock_that_steps_back_never_shortens_a_windows_life(redis_url: str) -> None:
    """The script on Redis's clock stepped back by three seconds: the hit it admits lands in an older bucket,
    becomes the head, and leaves the key's expiry where the newest bucket set it."""
    import redis as sync_redis

    client = sync_redis.Redis.from_url(redis_url)
    try:
        script = client.register_script(_SIMULATED)
        key = f"test:{uuid.uuid4().hex}:r"
        seconds, _ = client.time()
        now_ms = (seconds + 86_400) * 1000

        def take(at: int) -> list[int]:
            # one take of one limit (100 per minute, weight 1): [now, admitted, retry, refused, count, reset]
            return [int(v) for v in script(keys=[key], args=[1, 1, 1, 100, 60_000, 500, 1, at])]

        first = take(now_ms)
        expiry = client.pexpiretime(key)
        assert expiry == (now_ms // 500 + 1) * 500 + 60_000
        back = take(now_ms - 3_000)
        assert back[4:] == [2, ((now_ms - 3_000) // 500 + 1) * 500 + 60_000]  # the older hit is the head
        assert client.pexpiretime(key) == expiry
        assert first[1] == back[1] == 1
    finally:
        client.close()


async def _store_connections(redis_url: str, prefix: str) -> int:
    """How many connections to Redis carry `prefix` as their client name."""
    from redis.asyncio import Redis

    observer = Redis.from_url(redis_url)
    try:
        return sum(1 for c in await observer.client_list() if c.get("name", "").startswith(prefix))
    finally:
        await observer.aclose()


@pytest.mark.redis
async def test_redis_concurrent_takes_share_the_pool_exactly(redis_url: str) -> None:
    """More takes in flight than the pool's connections: they wait their turn, each reads its own reply,
    the counts are exact, and no more connections are opened than the pool holds."""
    from redis.asyncio import BlockingConnectionPool, Redis

    name = f"windows-{uuid.uuid4().hex}"
    redis = Redis.from_pool(BlockingConnectionPool.from_url(redis_url, max_connections=4, client_name=name))
    windows = RedisWindows(redis, prefix=f"test:{uuid.uuid4().hex}:")
    try:
        shared = Limit("m", "shared", 120, 60)
        # each take also spends its own key by its own weight: a reply read by the wrong take shows
        outcomes = await asyncio.gather(
            *(windows.take([shared, Limit("own", f"own{i}", 1000, 60, i + 1)]) for i in range(300))
        )
        assert sum(o.admitted for o in outcomes) == 120
        for i, outcome in enumerate(outcomes):
            assert outcome.states[1].used == (i + 1 if outcome.admitted else 0)
        assert 1 <= await _store_connections(redis_url, name) <= 4
    finally:
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
    for a connection: no later take reads a reply meant for another, and the pool is whole again."""
    from redis.asyncio import BlockingConnectionPool, Redis

    redis = Redis.from_pool(BlockingConnectionPool.from_url(redis_url, max_connections=6, timeout=5))
    windows = RedisWindows(redis, prefix=f"test:{uuid.uuid4().hex}:")
    busy_client = Redis.from_url(redis_url)
    try:
        await windows.take([Limit("m", "warm", 10, 60)])
        busy = asyncio.create_task(busy_client.eval(_BUSY, 0, 300_000))
        await asyncio.sleep(0.05)
        pending = []
        for i in range(20):  # one by one, each in its own call of the script
            pending.append(asyncio.create_task(windows.take([Limit("m", f"cancelled{i}", 1000, 60, i + 1)])))
            await asyncio.sleep(0.002)
        await asyncio.sleep(0.05)  # six calls sent and waiting for Redis, fourteen waiting for a connection
        for task in pending:
            task.cancel()
        assert await busy == 1
        for task in pending:
            with pytest.raises(asyncio.CancelledError):
                await task
        # every connection of the pool serves again (none is lost to a cancelled take), each reply its own
        outcomes = await asyncio.wait_for(
            asyncio.gather(*(windows.take([Limit("own", f"after{i}", 1000, 60, i + 1)]) for i in range(100))), timeout=5
        )
        assert [o.states[0].used for o in outcomes] == [i + 1 for i in range(100)]
    finally:
        await busy_client.aclose()
        await redis.aclose()


@pytest.mark.redis
async def test_redis_script_flushed_is_loaded_again(redis_windows: RedisWindows) -> None:
    limit = Limit("m", "k", 10, 60)
    assert (await redis_windows.take([limit])).states[0].used == 1
    await redis_windows.redis.script_flush()
    assert (await redis_windows.take([limit])).states[0].used == 2  # NOSCRIPT: loaded, sent once more
    assert (await redis_windows.redis.script_exists(redis_windows.script.sha)) == [True]
    assert (await redis_windows.take([limit])).states[0].used == 3


@pytest.mark.redis
@pytest.mark.parametrize("together", [20, 150], ids=["one-call", "pipelined-calls"])
async def test_redis_takes_sent_together_after_a_flush_are_each_sent_once_more(
    redis_windows: RedisWindows, together: int
) -> None:
    """Takes that arrive together are run by one call of the script (more than `MAX_TAKES_PER_CALL` of them:
    a pipeline of calls); NOSCRIPT refuses every call, the script is loaded and each call is sent once more,
    and each take gets its own part of the reply."""
    assert together < RedisWindows.MAX_TAKES_PER_CALL or together > 2 * RedisWindows.MAX_TAKES_PER_CALL
    shared = Limit("m", "together", 1000, 60)
    await redis_windows.take([shared])
    await redis_windows.redis.script_flush()
    outcomes = await asyncio.gather(
        *(redis_windows.take([shared, Limit("own", f"t{i}", 1000, 60, i + 1)]) for i in range(together))
    )
    assert sorted(o.states[0].used for o in outcomes) == list(range(2, together + 2))
    assert [o.states[1].used for o in outcomes] == [i + 1 for i in range(together)]


@pytest.mark.redis
async def test_redis_a_take_the_script_cannot_run_fails_alone(redis_windows: RedisWindows) -> None:
    """A counter's key that holds another type (written by something else): the take that names it is
    StoreUnavailable with Redis's error, and the takes run by the same call are counted and answered."""
    await redis_windows.redis.set(redis_windows.prefix + "broken", "not a window")
    shared = Limit("m", "beside", 1000, 60)
    outcomes = await asyncio.gather(
        *(redis_windows.take([shared, Limit("own", "broken" if i == 3 else f"fine{i}", 10, 60)]) for i in range(8)),
        return_exceptions=True,
    )
    failed = outcomes[3]
    assert isinstance(failed, StoreUnavailable)
    assert "WRONGTYPE" in str(failed)
    answered = [o for i, o in enumerate(outcomes) if i != 3]
    assert all(not isinstance(o, BaseException) and o.admitted for o in answered)
    # the failed take spent nothing: seven takes counted on the shared key
    assert sorted(o.states[0].used for o in answered if not isinstance(o, BaseException)) == list(range(1, 8))
    assert (await redis_windows.take([shared], spend=False)).states[0].used == 7


@pytest.mark.redis
async def test_redis_takes_that_arrive_together_are_one_command(tmp_path: Path) -> None:
    """Twenty takes requested in one turn of the event loop reach Redis as one EVALSHA, not twenty (counted by
    a Redis of the test's own, whose command statistics nothing else touches)."""
    from redis.asyncio import Redis

    port = free_port()
    with _redis_on(port, tmp_path):
        redis = Redis.from_url(f"redis://127.0.0.1:{port}/0")
        windows = RedisWindows(redis, prefix="t:")
        try:
            await windows.take([Limit("m", "warm", 1000, 60)])
            before = (await redis.info("commandstats")).get("cmdstat_evalsha", {}).get("calls", 0)
            outcomes = await asyncio.gather(*(windows.take([Limit("m", "k", 1000, 60)]) for _ in range(20)))
            after = (await redis.info("commandstats")).get("cmdstat_evalsha", {}).get("calls", 0)
            assert sorted(o.states[0].used for o in outcomes) == list(range(1, 21))
            assert after - before == 1
        finally:
            await redis.aclose()


@contextlib.contextmanager
def _redis_on(port: int, workdir: Path) -> Iterator[None]:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("no redis-server on PATH")
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
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
    process); Redis comes back (empty, without the script): takes work again, on every connection."""
    from redis.asyncio import BlockingConnectionPool, Redis

    port = free_port()
    redis = Redis.from_pool(
        BlockingConnectionPool.from_url(
            f"redis://127.0.0.1:{port}/0", max_connections=4, timeout=5, socket_timeout=2, socket_connect_timeout=2
        )
    )
    windows = RedisWindows(redis, prefix="test:restart:")
    limit = Limit("m", "k", 100, 60)
    try:
        with _redis_on(port, tmp_path):
            outcomes = await asyncio.gather(*(windows.take([limit]) for _ in range(8)))
            assert sorted(o.states[0].used for o in outcomes) == list(range(1, 9))
        # more failures than connections: a take that could not connect gives its place back
        for _ in range(6):
            with pytest.raises(StoreUnavailable):
                await asyncio.wait_for(windows.take([limit]), timeout=5)
        with _redis_on(port, tmp_path):
            assert (await windows.take([limit])).states[0].used == 1
            outcomes = await asyncio.wait_for(asyncio.gather(*(windows.take([limit]) for _ in range(8))), timeout=5)
            assert sorted(o.states[0].used for o in outcomes) == list(range(2, 10))
    finally:
        await redis.aclose()


@pytest.mark.redis
async def test_redis_connection_closed_by_the_server_is_replaced(redis_windows: RedisWindows) -> None:
    """Redis drops the pool's idle connections: the next take runs on a new one, and counts once."""
    limit = Limit("m", "k", 10, 60)
    assert (await redis_windows.take([limit])).states[0].used == 1
    await redis_windows.redis.client_kill_filter(_type="normal", skipme=True)
    assert (await redis_windows.take([limit])).states[0].used == 2


@pytest.mark.redis
async def test_redis_that_does_not_answer_in_time_is_unavailable(tmp_path: Path) -> None:
    """A reply later than the client's socket timeout: the take is StoreUnavailable, and its late reply
    is never read by the next take."""
    from redis.asyncio import Redis

    port = free_port()
    with _redis_on(port, tmp_path):
        redis = Redis.from_url(f"redis://127.0.0.1:{port}/0", socket_timeout=0.5)
        busy_client = Redis.from_url(f"redis://127.0.0.1:{port}/0")
        windows = RedisWindows(redis, prefix="t:")
        try:
            assert (await windows.take([Limit("m", "k", 10, 60)])).states[0].used == 1
            busy = asyncio.create_task(busy_client.eval(_BUSY, 0, 1_500_000))  # Redis busy for 1.5 s
            await asyncio.sleep(0.05)
            with pytest.raises(StoreUnavailable):
                await windows.take([Limit("m", "k", 10, 60)])
            with contextlib.suppress(Exception):
                await busy
            # another key, another weight: a take that read the late reply would see k's count instead
            assert (await windows.take([Limit("m", "other", 100, 60, 7)])).states[0].used == 7
        finally:
            await busy_client.aclose()
            await redis.aclose()
