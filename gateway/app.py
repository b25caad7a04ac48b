"""`create_app(settings)`: builds every service once and wires the edge in front of the schema.

The parts it assembles are public (`gateway_parts`: the services, the schema and the edge middleware, each
also built on its own by `build_services`, `build_gateway_schema` and `edge_middleware`; then `assemble`),
so that another build is composed from the same parts rather than switched on in them: the benchmark's
builds without admission, without audit entries or without field authorization live in `bench/apps/`.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route

from gateway.access_log import LOGGER as ACCESS_LOGGER
from gateway.access_log import AccessLog
from gateway.address_blocks import AddressBlockMiddleware, TenantBlockMiddleware, abuse_policy, install_abuse_signals
from gateway.admission import AdmissionPolicy, EdgeAdmission, OrgLimitCache
from gateway.app_parts import gateway_tracing, gateway_upstreams
from gateway.cors import CorsMiddleware
from gateway.exports import ExportDownloads
from gateway.graphiql import GRAPHIQL_CSP, PREFIX, GraphiQLAssets
from gateway.graphql import GraphQLView
from gateway.http_proxy import HttpUpstreams
from gateway.logs import configure_logging
from gateway.mail import build_mailer
from gateway.metrics import GatewayMetrics
from gateway.middleware import (
    AuthenticationMiddleware,
    BodyLimitMiddleware,
    ClientAddress,
    EndpointAtPath,
    RequestTargetMiddleware,
    SecurityHeaders,
)
from gateway.probes import MetricsPage, MetricsPort, Readiness, healthz
from gateway.rate_limit_audit import RateLimitAudit
from gateway.reports import ReportDownloads
from gateway.route_admission import AdmissionMiddleware
from gateway.route_limits import RouteLimits
from gateway.saml import SamlLogin, SamlRoutes
from gateway.settings import Environment, OnRedisError, Settings
from gateway.sso import sso_routes
from gateway.tracing import RequestContextMiddleware, Tracing
from gateway.usage import UsageFlusher
from gateway.windows import LocalWindows, RedisWindows, WindowStore
from gateway.workers import Workers
from identity.address_blocks import AddressBlocks
from identity.api_keys import ApiKeyCache, ApiKeyVerifier, LastUsedRecorder
from identity.authentication import Authenticator
from identity.browser_sessions import BrowserSessionPolicy, BrowserSessions
from identity.lockout import LockoutPolicy, LoginThrottle
from identity.oidc import OidcRelyingParty, TransactionStore
from identity.outbound import OutboundPolicy
from identity.passwords import HashParameters, PasswordHasherService
from identity.redis_health import RedisHealth
from identity.revocation import LocalRevocationBus, RedisRevocationBus, RevocationBus
from identity.secrets import SecretBox
from identity.security_events import install_event_sink
from identity.security_policies import PolicyCache
from identity.sessions import SessionCache, SessionPolicy
from identity.tokens import AccessTokens, KeyRing
from identity.totp import TotpService
from identity.webhooks import WebhookPolicy
from resolvers.deps import Services
from resolvers.security_alerts import SecurityAlerts, severities_of
from schema import ExtensionFactory, PortcullisSchema, build_schema
from schema.upstreams import Composition
from schema.upstreams.direct import DirectForward
from store.db import Database

log = logging.getLogger("portcullis")

# how long embedded mode trusts a verified API key without the database (PORTCULLIS_API_KEY_CACHE_TTL_SECONDS
# at most): what another process's revocation waits for there, where no bus joins the processes
EMBEDDED_API_KEY_CACHE_SECONDS = 0.5


def build_services(settings: Settings) -> Services:
    current, previous = settings.signing_key_pems()
    keys = KeyRing(current, previous)
    tokens = AccessTokens(
        keys,
        issuer=settings.issuer,
        audience=settings.audience,
        lifetime_seconds=settings.access_token_ttl_seconds,
        max_lifetime_seconds=settings.access_token_max_lifetime_seconds,
    )
    db = Database(settings.database_url, pool_size=settings.database_pool_size)
    redis: Any = None
    health: RedisHealth | None = None
    bus: RevocationBus
    if settings.redis_url:
        from redis.asyncio import BlockingConnectionPool, Redis

        # a request waits for a free connection rather than failing when more are in flight than the
        # pool holds: admission would otherwise answer 503 under a burst
        pool = BlockingConnectionPool.from_url(
            settings.redis_url, max_connections=settings.redis_max_connections, timeout=5
        )
        redis = Redis.from_pool(pool)
        health = RedisHealth()
        bus = RedisRevocationBus(redis, health)
    else:
        bus = LocalRevocationBus()
    sessions = SessionCache(ttl_seconds=settings.session_cache_ttl_seconds)
    bus.subscribe(sessions.invalidate)
    key_ttl = settings.api_key_cache_ttl_seconds
    if redis is None:
        # no bus reaches this process from another in embedded mode: a key revoked by `portcullis api-key
        # revoke` is refused once its cached entry is read again from the database
        key_ttl = min(key_ttl, EMBEDDED_API_KEY_CACHE_SECONDS)
    key_cache = ApiKeyCache(ttl_seconds=key_ttl)
    bus.subscribe(key_cache.invalidate)
    policies = PolicyCache(db)
    bus.subscribe(policies.invalidate)
    windows: WindowStore = RedisWindows(redis) if redis is not None else LocalWindows()
    blocks = AddressBlocks(
        db,
        allowlist=[*settings.block_allowlist, *settings.trusted_proxies],
        reload_seconds=settings.block_reload_seconds,
    )
    bus.subscribe(blocks.invalidate)
    org_limits = OrgLimitCache(db, ttl_seconds=settings.limits_cache_ttl_seconds)
    bus.subscribe(org_limits.invalidate)
    admission = EdgeAdmission(
        windows,
        org_limits,
        AdmissionPolicy(
            anonymous_per_minute=settings.anonymous_requests_per_minute,
            login_per_account_per_minute=settings.login_attempts_per_account_per_minute,
            login_per_address_per_minute=settings.login_attempts_per_address_per_minute,
            fail_open=settings.limits_on_redis_error is OnRedisError.OPEN,
        ),
    )
    if health is not None:
        admission.redis_health = health
    hasher = PasswordHasherService(
        HashParameters(
            memory_kib=settings.password_hash_memory_kib,
            time_cost=settings.password_hash_time_cost,
            parallelism=settings.password_hash_parallelism,
        )
    )
    throttle = LoginThrottle(
        db,
        LockoutPolicy(
            threshold=settings.lockout_threshold,
            window_seconds=settings.lockout_window_seconds,
            base_lock_seconds=settings.lockout_base_seconds,
            max_lock_seconds=settings.lockout_max_seconds,
            account_ceiling=settings.lockout_account_ceiling,
            trusted_days=settings.lockout_trusted_address_days,
        ),
    )
    browser = BrowserSessions(
        settings.cookie_secret.get_secret_value(),
        BrowserSessionPolicy(
            idle_seconds=settings.browser_session_idle_seconds,
            absolute_seconds=settings.browser_session_absolute_seconds,
        ),
        secure=settings.session_cookie_secure,
    )
    data_keys = [k.get_secret_value() for k in settings.previous_data_encryption_keys]

    def box(purpose: str = "data") -> SecretBox:
        return SecretBox(settings.data_encryption_key.get_secret_value(), data_keys, purpose=purpose)

    outbound = OutboundPolicy.of(
        enabled=settings.outbound_guard_enabled,
        require_https=settings.is_prod,
        allowed_hosts=settings.outbound_allowed_hosts,
    )
    webhooks = WebhookPolicy(outbound, box("webhook"))
    mailer = build_mailer(settings)
    install_event_sink(db, SecurityAlerts(mailer, severities_of(settings.security_alert_email_severities), webhooks))
    return Services(
        db=db,
        hasher=hasher,
        throttle=throttle,
        tokens=tokens,
        sessions=sessions,
        session_policy=SessionPolicy(
            absolute_lifetime_seconds=settings.session_absolute_lifetime_seconds,
            refresh_idle_seconds=settings.refresh_token_idle_seconds,
        ),
        authenticator=Authenticator(
            tokens,
            sessions,
            db,
            browser=browser,
            policies=policies,
            api_keys=ApiKeyVerifier(
                db, settings.api_key_pepper.get_secret_value().encode(), settings.env.value, key_cache
            ),
        ),
        revocations=bus,
        redis=redis,
        redis_health=health,
        api_key_cache=key_cache,
        admission=admission,
        budgets=admission,
        usage=UsageFlusher(db, admission.usage, interval_seconds=settings.usage_flush_seconds),
        last_used=LastUsedRecorder(db, interval_seconds=settings.api_key_last_used_interval_seconds),
        secrets=box(),
        totp=TotpService(box("totp"), settings.api_key_pepper.get_secret_value().encode()),
        api_key_env=settings.env.value,
        api_key_pepper=settings.api_key_pepper.get_secret_value().encode(),
        oidc=OidcRelyingParty(
            TransactionStore(redis),
            allow_loopback_http=not settings.is_prod,
            outbound=outbound,
            http_timeout_seconds=settings.oidc_http_timeout_seconds,
            jwks_refetch_interval_seconds=settings.oidc_jwks_refetch_interval_seconds,
            state_ttl_seconds=settings.sso_state_ttl_seconds,
        ),
        oidc_secrets=box("oidc"),
        browser=browser,
        public_url=settings.public_url,
        mail=mailer,
        address_blocks=blocks,
        webhooks=webhooks,
    )


def build_gateway_schema(
    settings: Settings,
    *,
    extensions: Callable[[list[ExtensionFactory]], list[ExtensionFactory]] | None = None,
    upstreams: Composition | None = None,
) -> PortcullisSchema:
    """The schema with the settings' options; `extensions` as for `schema.build_schema`; `upstreams` mounted."""
    return build_schema(
        anonymous_introspection=settings.anonymous_introspection,
        field_suggestions=settings.suggestions_enabled,
        reject_unauthorized=settings.reject_unauthorized,
        extensions=extensions,
        upstreams=upstreams,
    )


def edge_middleware(
    settings: Settings,
    services: Services,
    metrics: GatewayMetrics,
    rate_limit_audit: RateLimitAudit,
    routed_prefixes: tuple[str, ...] = (),
    tracing: Tracing | None = None,
    access_log: AccessLog | None = None,
) -> list[Middleware]:
    """The edge in front of the routes, outermost first (gateway/middleware.py). The HTTP upstreams' prefixes
    (`routed_prefixes`) have their own body limits and admission, per route (gateway/http_proxy.py)."""
    blocks = services.address_blocks
    cors = settings.cors_policy()
    return [
        Middleware(
            RequestContextMiddleware,
            tracing=tracing or gateway_tracing(settings),
            security=SecurityHeaders(
                hsts=settings.is_prod, html_csp=GRAPHIQL_CSP if settings.graphiql_enabled else None
            ),
            metrics=metrics.request_metrics(),
            access_log=access_log,
        ),
        # preflights answered before authentication and admission (gateway/cors.py)
        *([Middleware(CorsMiddleware, policy=cors)] if cors is not None else []),
        *(
            [Middleware(AddressBlockMiddleware, blocks=blocks, client_address=ClientAddress(settings.trusted_proxies))]
            if blocks is not None
            else []
        ),
        Middleware(RequestTargetMiddleware),
        Middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes, exempt_prefixes=routed_prefixes),
        Middleware(
            AuthenticationMiddleware,
            authenticator=services.authenticator,
            client_address=ClientAddress(settings.trusted_proxies),
            on_failure=lambda _reason: metrics.auth_failures.inc(),
            last_used=services.last_used,
            audit=services.audit,
            rate_limit_audit=rate_limit_audit,
        ),
        *([Middleware(TenantBlockMiddleware, blocks=blocks)] if blocks is not None else []),
        Middleware(
            AdmissionMiddleware,
            admission=services.admission,
            # GraphiQL's files are a development tool's, not the API's: reloading the page spends no budget
            exempt_prefixes=routed_prefixes + ((PREFIX,) if settings.graphiql_enabled else ()),
        ),
    ]


@dataclass
class GatewayParts:
    """What `assemble` makes an application of: `gateway_parts` builds them, another build replaces some."""

    settings: Settings
    services: Services
    rate_limit_audit: RateLimitAudit
    metrics: GatewayMetrics
    schema: PortcullisSchema
    middleware: list[Middleware]
    http_upstreams: HttpUpstreams | None = None
    tracing: Tracing | None = None
    access_log: AccessLog | None = None


def gateway_parts(settings: Settings) -> GatewayParts:
    """Logging configured, every service built once, the schema and the edge."""
    configure_logging(settings.log_level)
    services = build_services(settings)
    rate_limit_audit = RateLimitAudit(services.audit, redis=services.redis, clock=services.clock)
    if services.redis_health is not None:
        rate_limit_audit.redis_health = services.redis_health
    metrics = GatewayMetrics()
    metrics.watch_redis(services.redis_health)
    metrics.watch_blocks(services.address_blocks, install_abuse_signals(services, abuse_policy(settings)))
    upstreams, http = gateway_upstreams(settings, services)
    tracing = gateway_tracing(settings)
    schema = build_gateway_schema(settings, upstreams=upstreams)
    if services.upstreams is not None or http is not None:
        metrics.watch_upstreams(services.upstreams, http)
    if services.upstreams is not None:
        services.upstreams.direct = DirectForward(schema.authorizer.schema, services.upstreams, schema.cost_model)
    # off with the setting, or with a log level above INFO, as any other INFO line
    logged = settings.access_log and logging.getLogger(ACCESS_LOGGER).isEnabledFor(logging.INFO)
    access_log = AccessLog() if logged else None
    return GatewayParts(
        settings,
        services,
        rate_limit_audit,
        metrics,
        schema,
        edge_middleware(
            settings, services, metrics, rate_limit_audit, http.table.prefixes if http else (), tracing, access_log
        ),
        http,
        tracing,
        access_log,
    )


def create_app(settings: Settings | None = None, *, saml_login: SamlLogin | None = None) -> Starlette:
    """The gateway. `saml_login` replaces what signs in the user of a validated SAML assertion (see
    `gateway.saml`)."""
    return assemble(gateway_parts(settings or Settings.load()), saml_login=saml_login)


def assemble(parts: GatewayParts, *, saml_login: SamlLogin | None = None) -> Starlette:
    """The application: the parts' middleware in front of the routes, and the services' lifespan."""
    settings, services, schema = parts.settings, parts.services, parts.schema
    rate_limit_audit, metrics = parts.rate_limit_audit, parts.metrics
    services.admission.refusals = rate_limit_audit
    metrics.watch(services.admission)
    workers = Workers.build(settings, services)
    route_limits = RouteLimits.build(
        services.redis, audit=rate_limit_audit, fail_open=settings.limits_on_redis_error is OnRedisError.OPEN
    )
    metrics.watch(route_limits)
    if services.redis_health is not None:
        route_limits.redis_health = services.redis_health

    def upstream_status() -> dict[str, Any]:
        status = services.upstreams.status() if services.upstreams is not None else {}
        return {**status, **(parts.http_upstreams.status() if parts.http_upstreams is not None else {})}

    async def jwks(_: Request) -> Response:
        return JSONResponse(services.tokens.keys.jwks(), headers={"cache-control": "public, max-age=300"})

    token = settings.metrics_token.get_secret_value() if settings.metrics_token is not None else None
    metrics_page = MetricsPage(metrics.registry, token=token, required=settings.is_prod)
    metrics_port = (
        MetricsPort(metrics.registry, settings.metrics_host, settings.metrics_port)
        if settings.metrics_port is not None
        else None
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        if metrics_port is not None:
            metrics_port.start()
        await services.revocations.start()
        if services.address_blocks is not None:
            await services.address_blocks.start()
        if services.last_used is not None:
            services.last_used.start()
        if services.usage is not None:
            services.usage.start()
        rate_limit_audit.start()
        workers.start()
        if workers.mail is None:
            log.log(
                logging.WARNING if settings.is_prod else logging.INFO,
                "mail_kept_in_local_mailbox",
                extra={"hint": "no PORTCULLIS_SMTP_URL: email is kept in the database, see `portcullis mail list`"},
            )
        if settings.env is not Environment.TEST:
            # start-up objects live for the whole process: keep them out of every collection (p99)
            gc.collect()
            gc.freeze()
            # a request allocates a few thousand objects, nearly all gone when it ends: collecting the youngest
            # generation every 20,000 allocations instead of Python's 700 keeps collections off most requests
            # (docs/performance.md, "Scenario forward")
            gc.set_threshold(20_000, 20, 20)
        try:
            yield {"services": services}
        finally:
            await workers.stop()
            if services.usage is not None:
                await services.usage.stop()
            if services.last_used is not None:
                await services.last_used.stop()
            with contextlib.suppress(Exception):
                await rate_limit_audit.stop()
            await services.revocations.stop()
            if services.address_blocks is not None:
                await services.address_blocks.stop()
            if services.upstreams is not None:
                await services.upstreams.close()
            if parts.http_upstreams is not None:
                await parts.http_upstreams.close()
            if services.redis is not None:
                await services.redis.aclose()
            await services.db.dispose()
            if metrics_port is not None:
                metrics_port.stop()
            if parts.tracing is not None:
                await asyncio.to_thread(parts.tracing.shutdown)
            if parts.access_log is not None:
                parts.access_log.flush()

    graphql = GraphQLView(schema, services, graphiql=settings.graphiql_enabled)
    saml_routes = SamlRoutes(settings, services, saml_login)
    routes: list[BaseRoute] = [
        Route("/graphql", graphql),  # every method: the view answers 405 with `Allow` itself
        Route("/healthz", healthz),
        Route("/readyz", Readiness(services, upstream_status).endpoint),
        Route("/.well-known/jwks.json", jwks),
        Route("/metrics", metrics_page.endpoint),
        Route(
            "/reports/{name}",
            ReportDownloads(services).download,
            methods=["GET"],
            middleware=route_limits("report-downloads", settings.report_downloads_per_minute),
        ),
        Route(
            "/exports/{name}",
            ExportDownloads(services).download,
            methods=["GET"],
            middleware=route_limits("export-downloads", settings.report_downloads_per_minute),
        ),
        *saml_routes.routes(route_limits),
        *sso_routes(settings, services, starters={"saml": saml_routes.begin}, limit=route_limits),
    ]
    if settings.graphiql_enabled:
        routes.append(Mount(PREFIX, app=GraphiQLAssets()))
    if parts.http_upstreams is not None:
        # the prefix itself and everything under it, with no redirect to a trailing slash
        for prefix in parts.http_upstreams.table.prefixes:
            routes += [Route(prefix, parts.http_upstreams), Mount(prefix, app=parts.http_upstreams)]
    # /graphql is served by the edge's last layer; its route stays for the router's other duties (a trailing
    # slash redirected to it)
    middleware = [*parts.middleware, Middleware(EndpointAtPath, path="/graphql", endpoint=graphql)]
    app = Starlette(routes=routes, middleware=middleware, lifespan=lifespan)
    app.state.settings = settings
    app.state.services = services
    app.state.rate_limit_audit = rate_limit_audit
    app.state.schema = schema
    app.state.saml_routes = saml_routes
    app.state.mail_delivery = workers.mail
    app.state.webhook_delivery = workers.webhooks
    app.state.audit_streams = workers.audit_streams
    app.state.report_scheduler = workers.reports
    app.state.retention_pruner = workers.retention
    app.state.metrics_port = metrics_port
    return app
