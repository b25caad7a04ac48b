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


# KEYS: the counters of every take, in order. ARGV: the number of takes, then per take: spend (1/0), its number
# of limits n, and per limit (amount, window ms, bucket ms, weight). The reply: the server's time (ms), then per
# take: admitted (1/0, or -1 when the take failed), the retry time (ms; the failure's message when it failed),
# the refusing limit (its place, 1-based; 0 when admitted), and per limit its count and reset time (ms).
# The takes of one call run in order, each as it would alone, at one reading of the server's clock.
# Hash fields: h (the head: the oldest bucket still counted), s (the sum of the buckets), one field per
# bucket id holding its count, and in a window of many buckets t (a marker that keeps the hash a table).
# Whenever s > 0 the head is a bucket that exists, so the time at which the oldest counted hit stops
# counting is (h + 1) * g + window, with no scan. Each counter the call names is read once (one HMGET: h, s
# and the current bucket; an older bucket with one HGET, only as the head moves on or a refusal looks for
# room) and written once, after the last take (one HSET of what changed, one HDEL of the buckets that
# stopped counting): the takes of a call that share counters (a tenant's concurrent requests) share their
# reads and writes. The expiry is set when a bucket is created (the key lives until its newest bucket stops
# counting), with a PTTL.
SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local TABLE = 'a moving window of counters, kept as a hash table so that a field is found directly'

-- each counter named by the call, as the takes so far left it: read on first use, written at the end.
-- A counter is an array (cheaper to make than a table of named fields): [1] its head, [2] its sum, [3] the
-- bucket it was read at, [4] its counts (bucket -> count, false for a bucket that does not exist), [5] it
-- changed, [6] a bucket was created (and [7] when the newest one stops counting), [8] it is kept as a hash
-- table, [9] the buckets other than [3] to write (true) or delete (false), made when first needed
local windows = {}
local order = {}

local function window(key, cur)
  local w = windows[key]
  if w == nil then
    local hs = redis.call('HMGET', key, 'h', 's', tostring(cur))
    local counts = {[cur] = tonumber(hs[3]) or false}
    w = {tonumber(hs[1]) or cur, tonumber(hs[2]) or 0, cur, counts, false, false, 0, false, false}
    windows[key] = w
    order[#order + 1] = key
  end
  return w
end

local function count(key, w, b)
  local v = w[4][b]
  if v == nil then
    v = tonumber(redis.call('HGET', key, tostring(b))) or false
    w[4][b] = v
  end
  return v
end

-- one take: its limits are KEYS[k0 + 1 .. k0 + n], their values from ARGV[a0 + 1]
local function take(k0, a0, n, spend)
  local admitted = 1
  local retry = 0
  local refused = 0
  local st = {}
  for i = 1, n do
    local a = a0 + (i - 1) * 4
    local amount = tonumber(ARGV[a + 1])
    local window_ms = tonumber(ARGV[a + 2])
    local g = tonumber(ARGV[a + 3])
    local weight = tonumber(ARGV[a + 4])
    local key = KEYS[k0 + i]
    local cur = math.floor(now / g)
    local w = window(key, cur)
    local h, s = w[1], w[2]
    if h < cur and (h + 1) * g + window_ms <= now then
      -- the head no longer counts: drop buckets until one counts (or none is left)
      w[5] = true
      repeat
        local x = count(key, w, h)
        if x then
          s = s - x
          w[4][h] = false
          if not w[9] then w[9] = {} end
          w[9][h] = false
        end
        h = h + 1
      until h >= cur or s <= 0 or (h + 1) * g + window_ms > now
      if s > 0 then
        -- keep the head on a bucket that exists
        while h < cur and not count(key, w, h) do
          h = h + 1
        end
      end
    end
    if s < 0 then s = 0 end
    w[1], w[2] = h, s
    if s + weight > amount then
      local wait = window_ms
      if weight <= amount then
        local need = s + weight - amount
        local freed = 0
        local b = h
        while b <= cur do
          local x = count(key, w, b)
          if x then
            freed = freed + x
            if freed >= need then
              wait = (b + 1) * g + window_ms - now
              break
            end
          end
          b = b + 1
        end
      end
      if wait < 1 then wait = 1 end
      if refused == 0 or wait > retry then
        retry = wait
        refused = i
      end
      admitted = 0
    end
    st[i] = {w, window_ms, g, weight, cur}
  end
  local out = {admitted, retry, refused}
  for i = 1, n do
    local w, window_ms, g, weight, cur = unpack(st[i])
    if spend and admitted == 1 and weight > 0 then
      -- nothing counted yet, or a clock that stepped back: the new bucket is the oldest
      if w[2] == 0 or cur < w[1] then w[1] = cur end
      w[2] = w[2] + weight
      w[5] = true
      local counts = w[4]
      local c = counts[cur]
      if c then
        counts[cur] = c + weight
      else
        -- a new bucket; a window of many buckets is kept as a hash table (a value longer than the
        -- default hash-max-listpack-value), whose fields are found directly: as a listpack, each lookup
        -- would scan up to 120 buckets. A window of few buckets stays a (smaller) listpack.
        counts[cur] = weight
        w[6] = true
        if cur - w[1] >= 32 then w[8] = true end
        local expires = (cur + 1) * g + window_ms
        if expires > w[7] then w[7] = expires end
      end
      if cur ~= w[3] then
        -- a bucket other than the one the counter was read at (a limit of another width on the same key)
        if not w[9] then w[9] = {} end
        w[9][cur] = true
      end
    end
    local reset = now
    if w[2] > 0 then reset = (w[1] + 1) * g + window_ms end
    out[#out + 1] = w[2]
    out[#out + 1] = reset
  end
  return out
end

local out = {now}
local k0 = 0
local a = 2
for _ = 1, tonumber(ARGV[1]) do
  local spend = ARGV[a] == '1'
  local n = tonumber(ARGV[a + 1])
  -- a take that fails (a counter of another type) fails alone: the others still answer
  local ok, answer = pcall(take, k0, a + 1, n, spend)
  if not ok then
    local reason = answer
    if type(reason) == 'table' then reason = reason.err end
    answer = {-1, tostring(reason), 0}
    for _ = 1, 2 * n do answer[#answer + 1] = 0 end
  end
  for _, v in ipairs(answer) do out[#out + 1] = v end
  k0 = k0 + n
  a = a + 2 + 4 * n
end

-- every counter written once
for _, key in ipairs(order) do
  local w = windows[key]
  if w[9] then
    local gone = {}
    for b, kept in pairs(w[9]) do
      if not kept then gone[#gone + 1] = tostring(b) end
    end
    if #gone > 0 then redis.call('HDEL', key, unpack(gone)) end
  end
  if w[5] then
    local c = w[4][w[3]]
    if c and not w[9] and not w[8] then
      -- the common case: the head, the sum and the bucket of now
      redis.call('HSET', key, 'h', tostring(w[1]), 's', tostring(w[2]), tostring(w[3]), tostring(c))
    else
      local fields = {'h', tostring(w[1]), 's', tostring(w[2])}
      if c then
        fields[5] = tostring(w[3])
        fields[6] = tostring(c)
      end
      if w[9] then
        for b, kept in pairs(w[9]) do
          if kept then
            fields[#fields + 1] = tostring(b)
            fields[#fields + 1] = tostring(w[4][b])
          end
        end
      end
      if w[8] then
        fields[#fields + 1] = 't'
        fields[#fields + 1] = TABLE
      end
      redis.call('HSET', key, unpack(fields))
    end
  end
  if w[6] then
    -- the key lives until its newest bucket stops counting: a clock that stepped back never shortens that
    local left = redis.call('PTTL', key)
    if left < 0 or now + left < w[7] then
      redis.call('PEXPIREAT', key, w[7])
    end
  end
end
return out
"""


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
