"""The gateway's own metrics, served at `GET /metrics` (docs/observability.md)."""

from __future__ import annotations

import platform
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, PlatformCollector, ProcessCollector

from gateway.address_blocks import WindowAbuseSignals
from gateway.admission import EdgeAdmission
from gateway.http_proxy import HttpUpstreams
from gateway.route_limits import RouteLimits
from gateway.upstreams import UpstreamCollector
from identity.address_blocks import AddressBlocks, BlockMatcher
from identity.redis_health import RedisHealth
from schema.upstreams import Forwarder


def portcullis_version() -> str:
    try:
        return version("portcullis")
    except PackageNotFoundError:
        return "unknown"


class GatewayMetrics:
    """The gateway's own counters, served at `GET /metrics`: with the process's (CPU, memory, open files) and
    the platform's (`python_info`), and `portcullis_build_info{version,python}`."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        Gauge(
            "portcullis_build_info",
            "The running version of Portcullis and of Python (always 1)",
            ["version", "python"],
            registry=self.registry,
        ).labels(portcullis_version(), platform.python_version()).set(1)
        self.auth_failures = Counter(
            "portcullis_authentication_failures",
            "Requests refused at the edge for their credential",
            registry=self.registry,
        )
        self.rate_limited = Counter(
            "portcullis_rate_limited",
            "Requests refused by admission, by the limit that refused them",
            ["limit"],
            registry=self.registry,
        )
        self.limiter_errors = Counter(
            "portcullis_rate_limiter_errors",
            "Requests admitted or refused without the limiter (Redis failed)",
            ["outcome"],
            registry=self.registry,
        )

    def watch(self, limiter: EdgeAdmission | RouteLimits) -> None:
        """Counts the limiter's refusals by limit, and what it decided when its store failed."""
        limiter.on_refused = lambda name: self.rate_limited.labels(name).inc()
        limiter.on_store_error = lambda outcome: self.limiter_errors.labels(outcome).inc()

    def watch_redis(self, health: RedisHealth | None) -> None:
        """Every failed call to Redis by the part that made it, each change of state, and the state now."""
        if health is None:
            return
        errors = Counter(
            "portcullis_redis_errors",
            "Failed calls to Redis, by the part that made them (admission, route-limits, revocation-bus, readiness, "
            "abuse-signals, rate-limit-audit)",
            ["component"],
            registry=self.registry,
        )
        changes = Counter(
            "portcullis_redis_state_changes",
            "Redis found unreachable (down) or back (up) by this process",
            ["state"],
            registry=self.registry,
        )
        Gauge("portcullis_redis_up", "1 while Redis answers this process, else 0", registry=self.registry).set_function(
            lambda: 1 if health.up else 0
        )
        health.on_error = lambda component: errors.labels(component).inc()
        health.on_change = lambda state: changes.labels(state).inc()

    def watch_blocks(self, blocks: AddressBlocks | None, signals: WindowAbuseSignals | None) -> None:
        """Active blocks by scope (platform, tenant), refusals by scope, automatic blocks by signal."""
        if blocks is None:
            return
        active = Gauge(
            "portcullis_address_blocks_active", "Address blocks in force, by scope", ["scope"], registry=self.registry
        )
        refusals = Counter(
            "portcullis_address_block_refusals",
            "Requests and sign-ins refused for a blocked address, by scope (platform, tenant)",
            ["scope"],
            registry=self.registry,
        )
        automatic = Counter(
            "portcullis_address_blocks_automatic",
            "Addresses blocked automatically, by abuse signal",
            ["signal"],
            registry=self.registry,
        )

        def installed(matcher: BlockMatcher) -> None:
            active.labels("platform").set(matcher.platform.count)
            active.labels("tenant").set(matcher.tenant_count)

        installed(blocks.matcher)
        blocks.on_installed = installed
        blocks.on_refused = lambda scope: refusals.labels(scope).inc()
        if signals is not None:
            signals.on_blocked = lambda signal: automatic.labels(signal).inc()

    def watch_upstreams(self, forwarder: Forwarder | None, http: HttpUpstreams | None = None) -> None:
        """Each upstream's requests, failures (no answer, or a 5xx), circuit and requests in flight, read when
        /metrics is; the latency of every call by upstream and outcome. GraphQL and HTTP upstreams alike."""
        latency = Histogram(
            "portcullis_upstream_request_duration_seconds",
            "Calls to each upstream by outcome: ok, error (a 5xx, or an answer that is not a usable GraphQL "
            "response), timeout, unavailable (refused), circuit_open (failed fast), and for HTTP routes "
            "truncated (closed mid-answer), body_too_large and client_gone",
            ["upstream", "outcome"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )

        children: dict[tuple[str, str], Any] = {}  # each (upstream, outcome)'s series, looked up once

        def observe(name: str, outcome: str, seconds: float) -> None:
            child = children.get((name, outcome))
            if child is None:
                child = children[(name, outcome)] = latency.labels(name, outcome)
            child.observe(seconds)

        for client in forwarder.clients.values() if forwarder is not None else ():
            client.observe = observe
        if http is not None:
            http.observe = observe
        self.registry.register(UpstreamCollector(forwarder, http))

    def request_metrics(self) -> RequestMetrics:
        return RequestMetrics(self.registry)


class RequestMetrics:
    """Every request at the edge by what it was and how it ended: `kind` graphql (named by its operation),
    route (an HTTP route, by method and template) or gateway (the gateway's own paths); `outcome` the status
    class (2xx, 3xx, 4xx, 5xx). The histogram's `_count` is the request count. GraphQL operation names come
    from clients: the first `max_names` distinct ones are kept, later ones are counted as `other`."""

    def __init__(self, registry: CollectorRegistry, max_names: int = 200) -> None:
        self.latency = Histogram(
            "portcullis_request_duration_seconds",
            "Requests by kind (graphql, route, gateway), name (operation name, route, or path) and outcome",
            ["kind", "name", "outcome"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=registry,
        )
        # counted in a plain integer (one event loop per process), read when /metrics is
        self.in_flight = 0
        Gauge("portcullis_requests_in_flight", "Requests being answered", registry=registry).set_function(
            lambda: self.in_flight
        )
        self.max_names = max_names
        self._names: set[str] = set()
        # each label set's series, looked up once: bounded by the names kept, the routes and the status classes
        self._children: dict[tuple[str, str, int], Any] = {}

    def _bounded(self, name: str) -> str:
        if name in self._names:
            return name
        if len(self._names) < self.max_names:
            self._names.add(name)
            return name
        return "other"

    def observe(self, state: dict[str, Any], path: str, status: int, seconds: float) -> None:
        route = state.get("metric_route")
        if route is not None:
            kind, name = "route", route
        elif path == "/graphql":
            kind, name = "graphql", self._bounded(state.get("operation") or "anonymous")
        else:
            kind, name = "gateway", path if path in _GATEWAY_PATHS else "other"
        key = (kind, name, status // 100)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self.latency.labels(kind, name, f"{status // 100}xx")
        child.observe(seconds)


_GATEWAY_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/.well-known/jwks.json"})
