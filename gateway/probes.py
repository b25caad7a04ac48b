"""The operator's endpoints: `/healthz`, `/readyz` (database, migrations, Redis) and `/metrics` (a bearer token
when one is set, and always in prod), and the metrics port (`PORTCULLIS_METRICS_PORT`). docs/observability.md."""

from __future__ import annotations

import hmac
import logging
import math
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest, start_http_server
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.middleware import graphql_error
from resolvers.deps import Services
from store.migrate import MigrationState, head_revision

log = logging.getLogger("portcullis")


async def healthz(_: Request) -> Response:
    return JSONResponse({"status": "ok"})


class Readiness:
    """`/readyz`: 200 when the database answers and is migrated to this version's latest revision and Redis (in
    shared mode) answers; else 503 with the reason. Once the database is at the latest revision it is not asked
    again (migrations do not go backwards under a running gateway); until then, at most every `recheck_seconds`.
    `status` is the upstreams' state, detail rather than readiness (the gateway answers everything else)."""

    def __init__(
        self,
        services: Services,
        status: Callable[[], dict[str, Any]] | None = None,
        *,
        recheck_seconds: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.services = services
        self.status = status
        self.recheck_seconds = recheck_seconds
        self.clock = clock
        self.migrated = False
        self.head = head_revision()  # read from the migration scripts once, here rather than in a probe
        self._checked_at = -math.inf
        self._pending: str | None = None

    async def migrations(self) -> str | None:
        """None when the database is at the latest revision; else why not, with the command that fixes it."""
        if self.migrated:
            return None
        now = self.clock()
        if now - self._checked_at >= self.recheck_seconds:
            state = MigrationState(await self.services.db.schema_revision(), self.head)
            self._checked_at = now
            self.migrated = state.at_head
            self._pending = None if state.at_head else f"the database is {state.describe()}: run `portcullis migrate`"
        return self._pending

    async def endpoint(self, _: Request) -> Response:
        checks: dict[str, str] = {}
        reasons: list[str] = []
        try:
            await self.services.db.ping()
            checks["database"] = "ok"
            pending = await self.migrations()
            checks["migrations"] = "ok" if pending is None else "pending"
            if pending is not None:
                reasons.append(pending)
        except Exception as exc:
            log.warning("readiness: database unreachable", extra={"error": f"{type(exc).__name__}: {exc}"[:300]})
            checks["database"] = "unavailable"
            reasons.append("the database is unreachable")
        redis, health = self.services.redis, self.services.redis_health
        if redis is not None:
            try:
                await redis.ping()
                checks["redis"] = "ok"
                if health is not None:
                    health.ok("readiness")
            except Exception as exc:
                if health is not None:
                    health.failed("readiness", exc)
                checks["redis"] = "unavailable"
                reasons.append("Redis is unreachable")
        body: dict[str, Any] = {"status": "unavailable" if reasons else "ok", "checks": checks}
        if reasons:
            body["reason"] = "; ".join(reasons)
        if self.status is not None:
            upstreams = self.status()
            if upstreams:
                body["upstreams"] = upstreams
        return JSONResponse(body, status_code=503 if reasons else 200)


class MetricsPage:
    """`/metrics` on the API port. With a token, only `Authorization: Bearer <token>` reads it; in prod without
    a token nobody does there (the metrics port, or a token, serves the scraper)."""

    def __init__(self, registry: CollectorRegistry, *, token: str | None, required: bool) -> None:
        self.registry = registry
        self.expected = f"Bearer {token}".encode() if token else None
        self.required = required

    async def endpoint(self, request: Request) -> Response:
        if self.expected is not None or self.required:
            given = request.headers.get("authorization", "").encode("latin-1", "replace")
            if self.expected is None or not hmac.compare_digest(given, self.expected):
                return JSONResponse(
                    graphql_error(
                        "The metrics need a bearer token (PORTCULLIS_METRICS_TOKEN) or the metrics port "
                        "(PORTCULLIS_METRICS_PORT).",
                        "UNAUTHENTICATED",
                    ),
                    status_code=401,
                    headers={"www-authenticate": 'Bearer realm="metrics"'},
                )
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)


class MetricsPort:
    """The registry served on a port of its own by this process (prometheus_client's server, in a thread), from
    start to stop; `port` is the one bound (useful when 0 asked for any free one)."""

    def __init__(self, registry: CollectorRegistry, host: str, port: int) -> None:
        self.registry, self.host, self.requested = registry, host, port
        self.server: Any = None
        self.port: int | None = None

    def start(self) -> None:
        self.server, _thread = start_http_server(self.requested, addr=self.host, registry=self.registry)
        self.port = int(self.server.server_address[1])
        log.info("metrics_port_listening", extra={"host": self.host, "port": self.port})

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None
