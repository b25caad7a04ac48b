"""Moving windows that take every limit of a request at once: all admit, or nothing is spent.

A limit is `amount` units per `window` seconds. Each window is a ring of counters, one per `window/120`
(a bucket): a hit is added to the bucket of the time it was admitted and counts against the limit
until the *end* of its bucket plus the window. A hit therefore counts for at least the full window,
never less, so no span of `window` seconds ever holds more than `amount` admitted units, whatever the
schedule (it may count up to 1/120 of the window longer: the only imprecision, and on the safe side).
Unlike a log of timestamps, a bucketed window takes weights (the cost of an operation) at constant
memory: a tenant's 60,000 requests per minute are at most 121 counters.

Two stores with one algorithm: `LocalWindows` (one process, embedded mode) and `RedisWindows`, one
Lua script per request (a single EVALSHA, sent on connections the store keeps for itself) that reads
the time from the Redis server (`TIME`), so every process shares one clock and one count, and the check
and the spend are atomic.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import hiredis

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
        # key -> [head bucket, sum, {bucket: count}, expires_ms]
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
        for b in sorted(w[2]):
            freed += w[2][b]
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
                    w[2][cur] = w[2].get(cur, 0) + limit.weight
                    w[1] += limit.weight
                    w[3] = now + limit.window * 1000 + g
        states = tuple(
            LimitState(limit, w[1], (min(w[2]) + 1) * limit.bucket_ms + limit.window * 1000 if w[2] else now)
            for limit, w in zip(limits, windows, strict=True)
        )
        return Outcome(admitted, now, retry, refused_by, states)


# KEYS: the limits' counters. ARGV: spend (1/0), then per limit (amount, window ms, bucket ms, weight).
# Hash fields: h (the head: the oldest bucket still counted), s (the sum of the buckets), one field per
# bucket id holding its count, and in a window of many buckets t (a marker that keeps the hash a table).
# Whenever s > 0 the head is a bucket that exists, so the time at which the oldest counted hit stops
# counting is (h + 1) * g + window, with no scan. A limit costs one HMGET (h, s and the current bucket)
# and, when it spends, one HSET; the expiry is set when a bucket is created (the key lives until its
# newest bucket stops counting); HGET/HDEL only as the head moves on.
_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local spend = ARGV[1] == '1'
local TABLE = 'a moving window of counters, kept as a hash table so that a field is found directly'
local n = #KEYS
local admitted = 1
local retry = 0
local refused = 0
local st = {}
for i = 1, n do
  local a = 1 + (i - 1) * 4
  local amount = tonumber(ARGV[a + 1])
  local window = tonumber(ARGV[a + 2])
  local g = tonumber(ARGV[a + 3])
  local weight = tonumber(ARGV[a + 4])
  local key = KEYS[i]
  local cur = math.floor(now / g)
  local curf = tostring(cur)
  local hs = redis.call('HMGET', key, 'h', 's', curf)
  local h = tonumber(hs[1]) or cur
  local s = tonumber(hs[2]) or 0
  local c = tonumber(hs[3])
  local changed = false
  if h < cur and (h + 1) * g + window <= now then
    -- the head no longer counts: drop buckets until one counts (or none is left)
    changed = true
    repeat
      local f = tostring(h)
      local x = redis.call('HGET', key, f)
      if x then
        s = s - tonumber(x)
        redis.call('HDEL', key, f)
      end
      h = h + 1
    until h >= cur or s <= 0 or (h + 1) * g + window > now
    if s > 0 then
      -- keep the head on a bucket that exists
      while h < cur and not redis.call('HGET', key, tostring(h)) do
        h = h + 1
      end
    end
  end
  if s < 0 then s = 0 end
  if s + weight > amount then
    local wait = window
    if weight <= amount then
      local need = s + weight - amount
      local freed = 0
      local b = h
      while b <= cur do
        local x = redis.call('HGET', key, tostring(b))
        if x then
          freed = freed + tonumber(x)
          if freed >= need then
            wait = (b + 1) * g + window - now
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
  st[i] = {key, window, g, weight, cur, curf, c, h, s, changed}
end
local out = {admitted, now, retry, refused}
for i = 1, n do
  local key, window, g, weight, cur, curf, c, h, s, changed = unpack(st[i])
  if spend and admitted == 1 and weight > 0 then
    -- nothing counted yet, or a clock that stepped back: the new bucket is the oldest
    if s == 0 or cur < h then h = cur end
    s = s + weight
    if c then
      redis.call('HSET', key, curf, tostring(c + weight), 'h', tostring(h), 's', tostring(s))
    else
      -- a new bucket: the key lives until it stops counting
      if cur - h >= 32 then
        -- a window of many buckets is kept as a hash table (a value longer than the default
        -- hash-max-listpack-value), whose fields are found directly: as a listpack, each lookup would
        -- scan up to 120 buckets. A window of few buckets stays a (smaller) listpack.
        redis.call('HSET', key, curf, tostring(weight), 'h', tostring(h), 's', tostring(s), 't', TABLE)
      else
        redis.call('HSET', key, curf, tostring(weight), 'h', tostring(h), 's', tostring(s))
      end
      redis.call('PEXPIREAT', key, (cur + 1) * g + window)
    end
  elseif changed then
    redis.call('HSET', key, 'h', tostring(h), 's', tostring(s))
  end
  local reset = now
  if s > 0 then reset = (h + 1) * g + window end
  out[#out + 1] = s
  out[#out + 1] = reset
end
return out
"""
# the name Redis gives the script (EVALSHA), not a security measure
_SHA = hashlib.sha1(_SCRIPT.encode(), usedforsecurity=False).hexdigest().encode()


def _command(*parts: bytes) -> bytes:
    """One command in the Redis protocol (RESP): an array of bulk strings."""
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        out.append(b"$%d\r\n%s\r\n" % (len(part), part))
    return b"".join(out)


_SCRIPT_LOAD = _command(b"SCRIPT", b"LOAD", _SCRIPT.encode())


class RedisWindows:
    """The windows in Redis: one EVALSHA per take, on connections of its own.

    Each connection is opened by redis-py with the client's settings (address, credentials, database,
    TLS, connect timeout, protocol version), then taken over (`_Link`): the take writes its command on the
    transport and hiredis parses the reply as it arrives, with no stream, lock or task in between. The
    store keeps a free list of them, at most the pool's `max_connections`. A take holds one connection
    for its one round trip and nobody else uses it meanwhile; a connection that failed, timed out
    (`socket_timeout`), was closed by the server, sent bytes nobody asked for, or whose take was
    cancelled mid-command is closed, never reused. Waiting for a free connection is bounded by the
    pool's `timeout` (5 s otherwise). Every failure is `StoreUnavailable`; NOSCRIPT (a restarted or
    flushed Redis) loads the script and sends the take once more, on the same connection.
    """

    def __init__(self, redis: Any, prefix: str = "portcullis:rl:", *, max_connections: int | None = None) -> None:
        self.redis = redis
        self.prefix = prefix
        pool = redis.connection_pool
        self._connection_class = pool.connection_class
        self._connection_kwargs = dict(pool.connection_kwargs)
        self.max_connections = max_connections or min(getattr(pool, "max_connections", 100) or 100, 10_000)
        timeout = getattr(pool, "timeout", None)
        self._wait_timeout: float = timeout if isinstance(timeout, int | float) else 5.0
        self._slots = _Slots(self.max_connections)
        self._reply_timeout: float | None = self._connection_kwargs.get("socket_timeout")
        self._free: list[_Link] = []
        self._closed = False

    def _command(self, limits: Sequence[Limit], spend: bool) -> bytes:
        parts = [b"EVALSHA", _SHA, b"%d" % len(limits)]
        prefix = self.prefix
        for limit in limits:
            parts.append((prefix + limit.key).encode())
        parts.append(b"1" if spend else b"0")
        for limit in limits:
            parts += (b"%d" % limit.amount, b"%d" % (limit.window * 1000), b"%d" % limit.bucket_ms,
                      b"%d" % limit.weight)
        return _command(*parts)

    @staticmethod
    def _outcome(limits: Sequence[Limit], raw: Any) -> Outcome:
        try:
            values = [int(v) for v in raw]
            admitted, now, retry, refused = values[0], values[1], values[2], values[3]
            states = tuple(
                LimitState(limit, values[4 + 2 * i], values[5 + 2 * i]) for i, limit in enumerate(limits)
            )
        except Exception as exc:
            raise StoreUnavailable(f"unexpected reply from Redis ({type(exc).__name__})") from exc
        return Outcome(admitted == 1, now, retry, limits[refused - 1] if refused else None, states)

    async def take(self, limits: Sequence[Limit], *, spend: bool = True) -> Outcome:
        try:
            raw = await self._call(self._command(limits, spend))
        except StoreUnavailable:
            raise
        except Exception as exc:
            raise StoreUnavailable(type(exc).__name__) from exc
        return self._outcome(limits, raw)

    def begin(self, limits: Sequence[Limit], *, spend: bool = True) -> asyncio.Future[Outcome] | None:
        """Sends the take at once, on a free connection, and returns the future of its outcome; None
        (nothing sent) when no connection is free, and the caller takes the usual way.

        The command is written before this returns, so Redis works on it while the caller goes on with
        other work; the reply is read by the connection's own callback, whether or not anyone still
        waits for the future (a caller cancelled meanwhile leaves a clean connection behind)."""
        if self._closed or not self._free or not self._slots.try_take():
            return None
        link = self._free_link()
        if link is None:
            self._slots.give()
            return None
        loop = asyncio.get_running_loop()
        outcome: asyncio.Future[Outcome] = loop.create_future()
        command = self._command(limits, spend)
        waiter = link.send(command)
        expiry = (loop.call_later(self._reply_timeout, _expire, waiter)
                  if self._reply_timeout is not None else None)

        def replied(waiter: asyncio.Future[Any]) -> None:
            if expiry is not None:
                expiry.cancel()
            if waiter.cancelled() or waiter.exception() is not None:
                link.close()
                self._slots.give()
                exc = None if waiter.cancelled() else waiter.exception()
                _settle(outcome, error=StoreUnavailable(type(exc).__name__ if exc else "cancelled"))
                return
            reply = waiter.result()
            if isinstance(reply, hiredis.ReplyError) and str(reply).startswith("NOSCRIPT"):
                # a restarted or flushed Redis: load the script and send once more, the usual way
                task = loop.create_task(self._again(link, command, limits))
                task.add_done_callback(lambda t: _settle(outcome, task=t))
                return
            self._release(link)
            if isinstance(reply, hiredis.ReplyError):
                _settle(outcome, error=StoreUnavailable(f"Redis answered an error: {str(reply)[:200]}"))
                return
            try:
                result = self._outcome(limits, reply)
            except StoreUnavailable as exc:
                _settle(outcome, error=exc)
                return
            _settle(outcome, value=result)

        waiter.add_done_callback(replied)
        return outcome

    async def _again(self, link: _Link, command: bytes, limits: Sequence[Limit]) -> Outcome:
        """After NOSCRIPT on a connection `begin` holds: the script loaded, the take sent again."""
        released = False
        try:
            await link.call(_SCRIPT_LOAD, self._reply_timeout)
            reply = await link.call(command, self._reply_timeout)
            self._release(link)  # the reply was read whole
            released = True
        except Exception as exc:
            raise StoreUnavailable(type(exc).__name__) from exc
        finally:
            if not released:
                link.close()
                self._slots.give()
        if isinstance(reply, hiredis.ReplyError):
            raise StoreUnavailable(f"Redis answered an error: {str(reply)[:200]}")
        return self._outcome(limits, reply)

    def _free_link(self) -> _Link | None:
        """The most recently freed connection that is still usable (the others found on the way are closed)."""
        free = self._free
        while free:
            candidate = free.pop()
            if candidate.usable:
                return candidate
            candidate.close()
        return None

    def _release(self, link: _Link) -> None:
        """A connection whose reply was read whole goes back to the free list (or is closed, after `aclose`)."""
        if self._closed:
            link.close()
        else:
            self._free.append(link)
        self._slots.give()

    async def _call(self, command: bytes) -> Any:
        slots = self._slots
        if not slots.try_take():
            try:
                async with asyncio.timeout(self._wait_timeout):
                    await slots.take()
            except TimeoutError:
                raise StoreUnavailable("no free Redis connection") from None
        link: _Link | None = None
        released = False
        try:
            if self._closed:
                raise StoreUnavailable("closed")
            link = self._free_link()
            if link is None:
                link = await self._open()
            reply = await link.call(command, self._reply_timeout)
            if isinstance(reply, hiredis.ReplyError) and str(reply).startswith("NOSCRIPT"):
                await link.call(_SCRIPT_LOAD, self._reply_timeout)
                reply = await link.call(command, self._reply_timeout)
            if isinstance(reply, hiredis.ReplyError):
                raise StoreUnavailable(f"Redis answered an error: {str(reply)[:200]}")
            # the reply was read whole: the connection is clean
            clean, link = link, None
            self._release(clean)
            released = True
            return reply
        finally:
            if link is not None:  # failed or cancelled mid-command: its state is unknown
                link.close()
            if not released:
                slots.give()

    async def _open(self) -> _Link:
        """A new connection: redis-py connects, authenticates and selects the database, then hands the
        transport over."""
        connection = self._connection_class(**self._connection_kwargs)
        await connection.connect()
        try:
            return _Link(connection)
        except BaseException:
            with contextlib.suppress(Exception):
                await connection.disconnect(nowait=True)
            raise

    async def aclose(self) -> None:
        """Closes the free connections; one in use is closed when its take ends."""
        self._closed = True
        free, self._free = self._free, []
        for link in free:
            link.close()


class _Link(asyncio.Protocol):
    """One connection to Redis, taken over from redis-py once it has connected: the transport's protocol
    becomes this object, which hands each reply (parsed by hiredis) to the one take waiting for it.
    Anything else that arrives (a reply nobody waits for, the server closing) breaks the link."""

    def __init__(self, connection: Any) -> None:
        # redis-py's stream, whose transport carries the handshake just made: the link owns it from now on
        # (and closes it through the writer), and the redis-py connection no longer refers to it
        self._writer: asyncio.StreamWriter = connection._writer
        connection._writer = connection._reader = None
        self._transport: asyncio.Transport = self._writer.transport
        self._reader = hiredis.Reader()
        self._waiter: asyncio.Future[Any] | None = None
        self._broken = False
        self._transport.set_protocol(self)

    @property
    def usable(self) -> bool:
        return not self._broken and self._waiter is None and not self._transport.is_closing()

    def send(self, command: bytes) -> asyncio.Future[Any]:
        """Writes one command now; the future gets its reply (an error reply is a value, not raised)."""
        if not self.usable:
            raise ConnectionError("the Redis connection is closed")
        self._waiter = waiter = asyncio.get_running_loop().create_future()
        self._transport.write(command)
        return waiter

    async def call(self, command: bytes, reply_timeout: float | None) -> Any:
        """Writes one command and waits for its reply (an error reply is returned, not raised)."""
        waiter = self.send(command)
        loop = asyncio.get_running_loop()
        if reply_timeout is None:
            return await waiter
        expiry = loop.call_later(reply_timeout, _expire, waiter)
        try:
            return await waiter
        finally:
            expiry.cancel()

    def data_received(self, data: bytes) -> None:
        try:
            self._reader.feed(data)
            while (reply := self._reader.gets()) is not False:
                waiter, self._waiter = self._waiter, None
                if waiter is None:  # nobody asked: the stream is out of step
                    self.close()
                    return
                if not waiter.done():
                    waiter.set_result(reply)
        except hiredis.ProtocolError as exc:
            self._fail(ConnectionError(f"unreadable reply from Redis: {exc}"))

    def eof_received(self) -> bool:
        self._fail(ConnectionError("Redis closed the connection"))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(ConnectionError("the Redis connection was lost") if exc is None else exc)

    def _fail(self, exc: Exception) -> None:
        self._broken = True
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
        self._writer.close()

    def close(self) -> None:
        self._fail(ConnectionError("the Redis connection was closed"))


class _Slots:
    """How many more connections may be in use: taken at once when one is left, else waited for in turn.
    A slot given back goes straight to the longest waiter, so one taken at once never jumps the queue."""

    def __init__(self, count: int) -> None:
        self._left = count
        self._waiters: deque[asyncio.Future[None]] = deque()

    def locked(self) -> bool:
        return self._left <= 0

    def try_take(self) -> bool:
        if self._left > 0:
            self._left -= 1
            return True
        return False

    async def take(self) -> None:
        if self.try_take():
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self.give()  # handed a slot just as the wait ended: pass it on
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
            raise

    def give(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._left += 1


def _settle(outcome: asyncio.Future[Any], *, value: Any = None, error: BaseException | None = None,
            task: asyncio.Task[Any] | None = None) -> None:
    """Completes `outcome` unless its caller has given up on it (cancelled)."""
    if task is not None:
        if task.cancelled():
            error = StoreUnavailable("cancelled")
        else:
            error = task.exception()
            value = None if error is not None else task.result()
    if outcome.done():
        return
    if error is not None:
        outcome.set_exception(error)
    else:
        outcome.set_result(value)


def _expire(waiter: asyncio.Future[Any]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError("Redis did not answer in time"))


def retry_seconds(retry_ms: int) -> int:
    return max(1, math.ceil(retry_ms / 1000))
