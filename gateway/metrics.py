"""The gateway's own metrics, served at `GET /metrics` (docs/observability.md)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

from gateway.admission import EdgeAdmission
from gateway.route_limits import RouteLimits
from gateway.upstreams import UpstreamCollector
from schema.upstreams import Forwarder


class GatewayMetrics:
    """The gateway's own counters, served at `GET /metrics`."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
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

    def watch_upstreams(self, forwarder: Forwarder) -> None:
        """Each upstream's requests, failures (no answer, or a 5xx), circuit and requests in flight, read when
        /metrics is; the latency of every call by upstream and outcome."""
        latency = Histogram(
            "portcullis_upstream_request_duration_seconds",
            "Calls to each upstream by outcome: ok, error (an answer that is not a usable GraphQL response), "
            "timeout, unavailable (refused) or circuit_open (failed fast)",
            ["upstream", "outcome"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )
        for client in forwarder.clients.values():
            client.observe = lambda name, outcome, seconds: latency.labels(name, outcome).observe(seconds)
        self.registry.register(UpstreamCollector(forwarder))
