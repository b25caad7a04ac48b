"""The parts of the gateway read from its settings beside the services: the upstreams file's GraphQL and HTTP
upstreams, and tracing (gateway/app.py assembles them)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from authz import install_team_permissions
from gateway.http_proxy import HttpUpstreams
from gateway.http_routes import RouteTable
from gateway.tracing import Tracing, otlp_traces_endpoint
from gateway.upstreams import load_upstreams
from identity.context_tokens import ContextTokens
from schema.upstreams import Composition, Forwarder

if TYPE_CHECKING:
    from gateway.settings import Settings
    from resolvers.deps import Services


def gateway_upstreams(settings: Settings, services: Services) -> tuple[Composition | None, HttpUpstreams | None]:
    """The upstreams file read, checked and composed: its GraphQL upstreams' forwarder installed in `services`,
    its HTTP upstreams' routes; None for what the file does not declare (or without a file). The team's
    permissions join the vocabulary either way (none without a file)."""
    if settings.upstreams_file is None:
        install_team_permissions(())
        return None, None
    loaded = load_upstreams(settings.upstreams_file)
    tokens = ContextTokens(services.tokens.keys, issuer=settings.public_url)
    http = None
    if loaded.http:
        http = HttpUpstreams(RouteTable(loaded.http), admission=services.admission, tokens=tokens, audit=services.audit)
    if loaded.composition.empty:
        return None, http
    services.upstreams = Forwarder(loaded.composition, tokens)
    return loaded.composition, http


def gateway_tracing(settings: Settings) -> Tracing:
    return Tracing(
        endpoint=otlp_traces_endpoint(settings.otel_exporter_otlp_endpoint),
        service_name=settings.otel_service_name,
        trusted=settings.trace_trusted_callers or settings.trusted_proxies,
    )
