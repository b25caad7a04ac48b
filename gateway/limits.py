"""Per-key request limits at the edge: the key's own `rateLimitPerMinute`.

`KeyRateLimiter` is the seam the admission step of the limits work replaces. Both implementations
count a moving window (the last `window` seconds, not a calendar minute), so a burst straddling a
minute boundary still admits at most `limit` requests in any window: in-process for the embedded mode,
one Redis round trip (a Lua script over a sorted set) shared by every process in shared mode.
"""

from __future__ import annotations

import time
import uuid
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol


class KeyRateLimiter(Protocol):
    async def hit(self, key: str, limit: int, window_seconds: float = 60.0) -> float | None:
        """Count one request; None when admitted, else the seconds until one would be."""
        ...


class LocalMovingWindow:
    def __init__(self, clock: Callable[[], float] = time.monotonic, max_keys: int = 100_000) -> None:
        self.clock = clock
        self.max_keys = max_keys
        self._hits: dict[str, deque[float]] = {}

    async def hit(self, key: str, limit: int, window_seconds: float = 60.0) -> float | None:
        now = self.clock()
        hits = self._hits.get(key)
        if hits is None:
            if len(self._hits) >= self.max_keys:
                self._hits.clear()
            hits = self._hits[key] = deque()
        while hits and hits[0] <= now - window_seconds:
            hits.popleft()
        if len(hits) >= limit:
            return max(hits[0] + window_seconds - now, 0.001)
        hits.append(now)
        return None


_SCRIPT = """
local now = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local limit = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZCARD', KEYS[1]) < limit then
  redis.call('ZADD', KEYS[1], now, ARGV[4])
  redis.call('PEXPIRE', KEYS[1], window)
  return -1
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return tonumber(oldest[2]) + window - now
"""


class RedisMovingWindow:
    def __init__(self, redis: Any, prefix: str = "portcullis:keyrate:",
                 clock: Callable[[], float] = time.time) -> None:
        self.redis = redis
        self.prefix = prefix
        self.clock = clock
        self._script = redis.register_script(_SCRIPT)

    async def hit(self, key: str, limit: int, window_seconds: float = 60.0) -> float | None:
        now_ms = int(self.clock() * 1000)
        window_ms = int(window_seconds * 1000)
        wait = int(await self._script(keys=[self.prefix + key], args=[now_ms, window_ms, limit, uuid.uuid4().hex]))
        return None if wait < 0 else max(wait, 1) / 1000
