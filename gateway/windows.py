"""Moving windows that take every limit of a request at once: all admit, or nothing is spent.

A limit is `amount` units per `window` seconds. Each window is a ring of counters, one per `window/120`
(a bucket): a hit is added to the bucket of the time it was admitted and counts against the limit
until the *end* of its bucket plus the window. A hit therefore counts for at least the full window,
never less, so no span of `window` seconds ever holds more than `amount` admitted units, whatever the
schedule (it may count up to 1/120 of the window longer: the only imprecision, and on the safe side).
Unlike a log of timestamps, a bucketed window takes weights (the cost of an operation) at constant
memory: a tenant's 60,000 requests per minute are at most 121 counters.

Two stores with one algorithm: `LocalWindows` (one process, embedded mode) and `RedisWindows`, a Lua
script (an EVALSHA through redis-py's client; the takes of requests that arrive together are run by one call
of it, one command and one round trip, which reads each counter once and writes it once) that reads the time
from the Redis server (`TIME`), so every process shares one clock and one count, and each take's check and
spend are atomic.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from redis.exceptions import NoScriptError, ResponseError

from gateway.windows_script import SCRIPT

if TYPE_CHECKING:
    from redis.asyncio import Redis

BUCKETS_PER_WINDOW = 120


@dataclass(frozen=True, slots=True)
class Limit:
    name: str  # the policy name in `RateLimit-Policy`: "tenant-minute", "login-account", ...
    key: str  # the counter: "t:<org>:m", "a:<account>", ...
    amount: int
    window: int  # seconds
    weight: int = 1  # what this request spends

    @property
    def bucket_ms(self) -> int:
        return max(1, self.window * 1000 // BUCKETS_PER_WINDOW)


@dataclass(frozen=True, slots=True)
class LimitState:
    limit: Limit
    used: int
    reset_ms: int  # server time (ms) at which the oldest counted hit stops counting

    @property
    def remaining(self) -> int:
        return max(0, self.limit.amount - self.used)


@dataclass(frozen=True, slots=True)
class Outcome:
    admitted: bool
    now_ms: int  # the store's clock (Redis TIME in shared mode)
    retry_ms: int  # when refused: until the refusing limit has room
    refused_by: Limit | None
    states: tuple[LimitState, ...]


class StoreUnavailable(Exception):
    """The store (Redis) did not answer: the caller decides whether to fail closed or open."""


class WindowStore(Protocol):
    async def take(self, limits: Sequence[Limit], *, spend: bool = True) -> Outcome:
        """Admit when every limit has room for its weight, then spend them all; `spend=False` only reads."""
        ...


class LocalWindows:
    def __init__(self, clock: Callable[[], float] = time.time, max_keys: int = 200_000) -> None:
        self.clock = clock
        self.max_keys = max_keys
        # key -> [head bucket, sum, {bucket: count} in time order (the first is the oldest), expires_ms]
        self._windows: dict[str, list[Any]] = {}

    def _window(self, limit: Limit, now: int) -> list[Any]:
        w = self._windows.get(limit.key)
        g = limit.bucket_ms
        cur = now // g
        if w is None or w[3] <= now:
            if len(self._windows) >= self.max_keys:
                self._windows = {k: v for k, v in self._windows.items() if v[3] > now}
            w = self._windows[limit.key] = [cur, 0, {}, now + limit.window * 1000 + g]
            return w
        window_ms = limit.window * 1000
        h, s, buckets = w[0], w[1], w[2]
        while h < cur and (h + 1) * g + window_ms <= now:
            s -= buckets.pop(h, 0)
            h += 1
        w[0], w[1] = h, max(0, s)
        return w

    @staticmethod
    def _wait(limit: Limit, w: list[Any], now: int) -> int:
        if limit.weight > limit.amount:
            return limit.window * 1000
        need = w[1] + limit.weight - limit.amount
        freed = 0
        g = limit.bucket_ms
        for b, count in w[2].items():
            freed += count
            if freed >= need:
                return max(1, int((b + 1) * g + limit.window * 1000 - now))
        return limit.window * 1000

    async def take(self, limits: Sequence[Limit], *, spend: bool = True) -> Outcome:
        now = int(self.clock() * 1000)
        windows = [self._window(limit, now) for limit in limits]
        retry, refused_by = 0, None
        for limit, w in zip(limits, windows, strict=True):
            if w[1] + limit.weight > limit.amount:
                wait = self._wait(limit, w, now)
                if wait > retry or refused_by is None:
                    retry, refused_by = wait, limit
        admitted = refused_by is None
        if spend:
            for limit, w in zip(limits, windows, strict=True):
                if admitted and limit.weight:
                    g = limit.bucket_ms
                    cur = now // g
                    buckets = w[2]
                    if cur in buckets:
                        buckets[cur] += limit.weight
                    else:
                        stepped_back = bool(buckets) and cur < next(reversed(buckets))
                        buckets[cur] = limit.weight
                        if stepped_back:  # the clock went back: the buckets are put in time order again,
                            w[2] = dict(sorted(buckets.items()))
                            w[0] = min(w[0], cur)  # and the head is the oldest, where expiry starts
                    w[1] += limit.weight
                    w[3] = max(w[3], now + limit.window * 1000 + g)  # until the newest hit stops counting
        # the oldest counted hit stops counting at the end of the first bucket plus the window
        states = tuple(
            LimitState(limit, w[1], (next(iter(w[2])) + 1) * limit.bucket_ms + limit.window * 1000 if w[2] else now)
            for limit, w in zip(limits, windows, strict=True)
        )
        return Outcome(admitted, now, retry, refused_by, states)


class RedisWindows:
    """The windows in Redis: the takes of concurrent requests evaluated together, by one call of the script.

    The script is registered once (`Redis.register_script`, whose `sha` names it). Takes requested while the
    event loop is busy with other work are sent in the next turn of the loop as one EVALSHA that runs them in
    order (up to `MAX_TAKES_PER_CALL` per call; a larger batch is a pipeline of such calls): under load, one
    round trip, one command and one reply serve many requests, the takes that share a counter share its read
    and its write, and each request reads its own part of the reply. On NOSCRIPT (a restarted or flushed
    Redis) the script is loaded and the calls it refused are sent once more (a NOSCRIPT call ran nothing).
    redis-py parses the replies with hiredis and bounds the wait by the client's `socket_timeout`, and closes
    a connection whose command failed, timed out or was cancelled mid-way, so a late reply is never read by
    the next call. Every failure is `StoreUnavailable`; a take the script could not run (a counter of another
    type under its key) fails alone. A take whose request was cancelled still goes out (it may be counted, as
    a take that timed out may be), and none is ever sent twice.
    """

    # takes per call of the script: Redis runs a script without serving anyone else meanwhile
    MAX_TAKES_PER_CALL = 32

    def __init__(self, redis: Redis, prefix: str = "portcullis:rl:") -> None:
        self.redis = redis
        self.prefix = prefix
        self.script = redis.register_script(SCRIPT)
        self._pending: list[_Take] = []
        self._sending: set[asyncio.Task[None]] = set()

    async def take(self, limits: Sequence[Limit], *, spend: bool = True) -> Outcome:
        keys = [self.prefix + limit.key for limit in limits]
        args = [1 if spend else 0, len(limits)]
        for limit in limits:
            args += (limit.amount, limit.window * 1000, limit.bucket_ms, limit.weight)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[Any]] = loop.create_future()
        self._pending.append((keys, args, future))
        if len(self._pending) == 1:
            loop.call_soon(self._flush)
        raw = await future
        try:
            now, values = int(raw[0]), raw[1:]
            admitted, retry, refused = int(values[0]), values[1], int(values[2])
            if admitted == -1:
                reason = retry.decode(errors="replace") if isinstance(retry, bytes) else str(retry)
                raise StoreUnavailable(f"Redis answered an error: {reason[:200]}")
            states = tuple(
                LimitState(limit, int(values[3 + 2 * i]), int(values[4 + 2 * i])) for i, limit in enumerate(limits)
            )
        except StoreUnavailable:
            raise
        except Exception as exc:
            raise StoreUnavailable(f"unexpected reply from Redis ({type(exc).__name__})") from exc
        return Outcome(admitted == 1, now, int(retry), limits[refused - 1] if refused else None, states)

    def _flush(self) -> None:
        batch, self._pending = self._pending, []
        if batch:
            task = asyncio.ensure_future(self._send(batch))
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)

    async def _send(self, batch: list[_Take]) -> None:
        size = self.MAX_TAKES_PER_CALL
        calls = [batch[i : i + size] for i in range(0, len(batch), size)]
        replies: list[Any]
        try:
            replies = await self._replies([_call(takes) for takes in calls])
        except Exception as exc:
            replies = [exc] * len(calls)
        for takes, reply in zip(calls, replies, strict=True):
            parts: list[Any] = [reply] * len(takes)
            if not isinstance(reply, BaseException):
                try:
                    parts = _split(reply, takes)
                except Exception as exc:  # a reply of another shape: no take can trust it
                    parts = [exc] * len(takes)
            for (_, _, future), part in zip(takes, parts, strict=True):
                if future.done():
                    continue  # the request went away; its take was sent all the same
                if isinstance(part, BaseException):
                    future.set_exception(_unavailable(part))
                else:
                    future.set_result(part)

    async def _replies(self, calls: list[tuple[list[str], list[int]]]) -> list[Any]:
        if len(calls) == 1:
            keys, args = calls[0]
            try:
                return [await self.script(keys=keys, args=args)]  # loads the script on NOSCRIPT
            except Exception as exc:
                return [exc]
        results = await self._pipeline(calls)
        refused = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
        if refused:
            await self.redis.script_load(SCRIPT)
            again = await self._pipeline([calls[i] for i in refused])
            for i, result in zip(refused, again, strict=True):
                results[i] = result
        return results

    async def _pipeline(self, calls: list[tuple[list[str], list[int]]]) -> list[Any]:
        pipe = self.redis.pipeline(transaction=False)
        for keys, args in calls:
            pipe.evalsha(self.script.sha, len(keys), *keys, *args)
        return list(await pipe.execute(raise_on_error=False))


# a take waiting to be sent: its keys, its part of ARGV, and the future its reply part is set on
_Take = tuple[list[str], list[int], "asyncio.Future[list[Any]]"]


def _call(takes: list[_Take]) -> tuple[list[str], list[int]]:
    """The keys and arguments of one call of the script for `takes`."""
    keys: list[str] = []
    args: list[int] = [len(takes)]
    for take_keys, take_args, _ in takes:
        keys += take_keys
        args += take_args
    return keys, args


def _split(reply: Any, takes: list[_Take]) -> list[list[Any]]:
    """Each take's part of a call's reply, as `[now, admitted, retry, refused, count, reset, ...]`."""
    now = reply[0]
    parts = []
    at = 1
    for keys, _, _ in takes:
        size = 3 + 2 * len(keys)
        part = reply[at : at + size]
        if len(part) != size:
            raise ValueError("a reply shorter than its takes")
        parts.append([now, *part])
        at += size
    if at != len(reply):
        raise ValueError("a reply longer than its takes")
    return parts


def _unavailable(exc: BaseException) -> StoreUnavailable:
    if isinstance(exc, ResponseError):
        return StoreUnavailable(f"Redis answered an error: {str(exc)[:200]}")
    return StoreUnavailable(type(exc).__name__)


def retry_seconds(retry_ms: int) -> int:
    return max(1, math.ceil(retry_ms / 1000))
