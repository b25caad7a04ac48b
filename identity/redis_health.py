"""Redis as this process sees it, up or down, logged once per change of state.

Every part that talks to Redis (admission windows, route limits, the revocation bus, readiness, the abuse
signals, the rate-limit refusals' audit counts) reports here:
`failed` on an error, `ok` on a success. The first failure after a success logs one `redis_unavailable`
warning (which part, what error, no traceback); later failures are only counted (`on_error`, the metric
`portcullis_redis_errors_total`); the first success after a failure logs `redis_available` with how long
Redis was away. A Redis that stays down therefore writes one line, not one per request or per retry.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

log = logging.getLogger("portcullis.redis")


class RedisHealth:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.down_since: float | None = None
        self.on_error: Callable[[str], None] = lambda _component: None
        self.on_change: Callable[[str], None] = lambda _state: None

    @property
    def up(self) -> bool:
        return self.down_since is None

    def failed(self, component: str, exc: BaseException) -> None:
        self.on_error(component)
        if self.down_since is not None:
            return
        self.down_since = self.clock()
        log.warning(
            "redis_unavailable",
            extra={"component": component, "error": f"{type(exc).__name__}: {exc}"[:300]},
        )
        self.on_change("down")

    def ok(self, component: str) -> None:
        if self.down_since is None:
            return
        down_seconds = round(self.clock() - self.down_since, 3)
        self.down_since = None
        log.warning("redis_available", extra={"component": component, "down_seconds": down_seconds})
        self.on_change("up")
