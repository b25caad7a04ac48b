"""`create_app(settings)`: builds every service once and wires the edge in front of the schema."""

from __future__ import annotations

import contextlib
import gc
import logging
from collections.abc import AsyncIterator
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.admission import Admission, AdmissionPolicy, OrgLimitCache
from gateway.graphql import GraphQLView
from gateway.logs import configure_logging
from gateway.mail import DeliveryPolicy, MailDelivery, build_mailer
from gateway.middleware import (
    AdmissionMiddleware,
    AuthenticationMiddleware,
    BodyLimitMiddleware,
    ClientAddress,
    RequestIdMiddleware,
    RequestTargetMiddleware,
    SecurityHeadersMiddleware,
)
from gateway.reports import ReportDownloads
from gateway.route_limits import RouteLimits
from gateway.saml import SamlLogin, SamlRoutes
from gateway.settings import Environment, OnRedisError, Settings
from gateway.sso import sso_routes
from gateway.usage import UsageFlusher
from gateway.windows import LocalWindows, RedisWindows, WindowStore
from identity.api_keys import ApiKeyCache, ApiKeyVerifier, LastUsedRecorder
from identity.authentication import Authenticator
from identity.browser_sessions import BrowserSessionPolicy, BrowserSessions
from identity.lockout import LockoutPolicy, LoginThrottle
from identity.oidc import OidcRelyingParty, TransactionStore
from identity.outbound import OutboundPolicy
from identity.passwords import HashParameters, PasswordHasherService
from identity.revocation import LocalRevocationBus, RedisRevocationBus, RevocationBus
from identity.secrets import SecretBox
from identity.sessions import SessionCache, SessionPolicy
from identity.tokens import AccessTokens, KeyRing
from identity.totp import TotpService
from resolvers.deps import Services
from schema import build_schema
from store.db import Database

log = logging.getLogger("portcullis")

GRAPHIQL_CSP = (
    b"default-src 'self'; script-src 'self' 'unsafe-inline' https://unpkg.com; "
    b"style-src 'self' 'unsafe-inline' https://unpkg.com; img-src 'self' data:; connect-src 'self'; "
    b"frame-ancestors 'none'"
)


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
    bus: RevocationBus
    if settings.redis_url:
        from redis.asyncio import BlockingConnectionPool, Redis

        # a request waits for a free connection rather than failing when more are in flight than the
        # pool holds: admission would otherwise answer 503 under a burst
        redis = Redis.from_pool(BlockingConnectionPool.from_url(
            settings.redis_url, max_connections=settings.redis_max_connections, timeout=5))
        bus = RedisRevocationBus(redis)
    else:
        bus = LocalRevocationBus()
    sessions = SessionCache(ttl_seconds=settings.session_cache_ttl_seconds)
    bus.subscribe(sessions.invalidate)
    key_cache = ApiKeyCache(ttl_seconds=settings.api_key_cache_ttl_seconds)
    bus.subscribe(key_cache.invalidate)
    windows: WindowStore = RedisWindows(redis) if redis is not None else LocalWindows()
    org_limits = OrgLimitCache(db, ttl_seconds=settings.limits_cache_ttl_seconds)
    bus.subscribe(org_limits.invalidate)
    admission = Admission(
        windows, org_limits,
        AdmissionPolicy(
            anonymous_per_minute=settings.anonymous_requests_per_minute,
            login_per_account_per_minute=settings.login_attempts_per_account_per_minute,
            login_per_address_per_minute=settings.login_attempts_per_address_per_minute,
            fail_open=settings.limits_on_redis_error is OnRedisError.OPEN,
        ),
        shared=redis is not None,
    )
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
        BrowserSessionPolicy(idle_seconds=settings.browser_session_idle_seconds,
                             absolute_seconds=settings.browser_session_absolute_seconds),
        secure=settings.session_cookie_secure,
    )
    data_keys = [k.get_secret_value() for k in settings.previous_data_encryption_keys]
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
            tokens, sessions, db, browser=browser,
            api_keys=ApiKeyVerifier(db, settings.api_key_pepper.get_secret_value().encode(), settings.env.value,
                                    key_cache),
        ),
        revocations=bus,
        redis=redis,
        api_key_cache=key_cache,
        admission=admission,
        budgets=admission,
        usage=UsageFlusher(db, admission.usage, interval_seconds=settings.usage_flush_seconds),
        last_used=LastUsedRecorder(db, interval_seconds=settings.api_key_last_used_interval_seconds),
        secrets=SecretBox(settings.data_encryption_key.get_secret_value(),
                          [k.get_secret_value() for k in settings.previous_data_encryption_keys]),
        totp=TotpService(
            SecretBox(settings.data_encryption_key.get_secret_value(),
                      [k.get_secret_value() for k in settings.previous_data_encryption_keys], purpose="totp"),
            settings.api_key_pepper.get_secret_value().encode(),
        ),
        api_key_env=settings.env.value,
        api_key_pepper=settings.api_key_pepper.get_secret_value().encode(),
        oidc=OidcRelyingParty(
            TransactionStore(redis), allow_loopback_http=not settings.is_prod,
            outbound=OutboundPolicy.of(enabled=settings.outbound_guard_enabled, require_https=settings.is_prod,
                                       allowed_hosts=settings.outbound_allowed_hosts),
            http_timeout_seconds=settings.oidc_http_timeout_seconds,
            jwks_refetch_interval_seconds=settings.oidc_jwks_refetch_interval_seconds,
            state_ttl_seconds=settings.sso_state_ttl_seconds,
        ),
        oidc_secrets=SecretBox(settings.data_encryption_key.get_secret_value(), data_keys, purpose="oidc"),
        browser=browser,
        public_url=settings.public_url,
        mail=build_mailer(settings),
    )


def create_app(settings: Settings | None = None, *, enforce_authorization: bool = True,
               admission: bool = True, record_audit: bool = True,
               saml_login: SamlLogin | None = None) -> Starlette:
    """The gateway. `enforce_authorization=False`, `admission=False` and `record_audit=False` exist only
    for the benchmark (`make bench` measures what each costs against an otherwise identical build).
    `saml_login` replaces what signs in the user of a validated SAML assertion (see `gateway.saml`)."""
    settings = settings or Settings()
    configure_logging(settings.log_level)
    services = build_services(settings)
    # the window store keeps Redis connections of its own: closed with the client at shutdown
    windows = services.admission.store if services.admission is not None else None
    if services.admission is not None:
        services.admission.refusals = services.rate_limit_audit
    if not admission:
        services.admission = None
    smtp = settings.smtp
    mail_delivery = (MailDelivery(services.db, services.mail, smtp, DeliveryPolicy.of(settings))
                     if smtp is not None and services.mail is not None else None)
    schema = build_schema(
        anonymous_introspection=settings.anonymous_introspection,
        field_suggestions=settings.suggestions_enabled,
        reject_unauthorized=settings.reject_unauthorized,
        enforce_authorization=enforce_authorization,
        record_audit=record_audit,
    )
    registry = CollectorRegistry()
    auth_failures = Counter(
        "portcullis_authentication_failures", "Requests refused at the edge for their credential",
        registry=registry,
    )
    rate_limited = Counter(
        "portcullis_rate_limited", "Requests refused by admission, by the limit that refused them",
        ["limit"], registry=registry,
    )
    limiter_errors = Counter(
        "portcullis_rate_limiter_errors", "Requests admitted or refused without the limiter (Redis failed)",
        ["outcome"], registry=registry,
    )
    if services.admission is not None:
        services.admission.on_refused = lambda name: rate_limited.labels(name).inc()
        services.admission.on_store_error = lambda outcome: limiter_errors.labels(outcome).inc()
    route_limits = RouteLimits.build(services.redis, audit=services.rate_limit_audit,
                                     fail_open=settings.limits_on_redis_error is OnRedisError.OPEN)
    route_limits.on_refused = lambda name: rate_limited.labels(name).inc()
    route_limits.on_store_error = lambda outcome: limiter_errors.labels(outcome).inc()

    async def healthz(_: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(_: Request) -> Response:
        checks: dict[str, str] = {}
        healthy = True
        try:
            await services.db.ping()
            checks["database"] = "ok"
        except Exception:
            log.exception("readiness: database unreachable")
            checks["database"], healthy = "unavailable", False
        if services.redis is not None:
            try:
                await services.redis.ping()
                checks["redis"] = "ok"
            except Exception:
                log.exception("readiness: redis unreachable")
                checks["redis"], healthy = "unavailable", False
        return JSONResponse({"status": "ok" if healthy else "unavailable", "checks": checks},
                            status_code=200 if healthy else 503)

    async def jwks(_: Request) -> Response:
        return JSONResponse(services.tokens.keys.jwks(), headers={"cache-control": "public, max-age=300"})

    async def metrics(_: Request) -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        await services.revocations.start()
        if services.last_used is not None:
            services.last_used.start()
        if services.usage is not None:
            services.usage.start()
        services.rate_limit_audit.start()
        if mail_delivery is not None:
            mail_delivery.start()
        else:
            log.log(logging.WARNING if settings.is_prod else logging.INFO, "mail_kept_in_local_mailbox",
                    extra={"hint": "no PORTCULLIS_SMTP_URL: email is kept in the database, see `portcullis mail list`"})
        if settings.env is not Environment.TEST:
            # start-up objects live for the whole process: keep them out of every collection (p99)
            gc.collect()
            gc.freeze()
        try:
            yield {"services": services}
        finally:
            if mail_delivery is not None:
                await mail_delivery.stop()
            if services.usage is not None:
                await services.usage.stop()
            if services.last_used is not None:
                await services.last_used.stop()
            with contextlib.suppress(Exception):
                await services.rate_limit_audit.stop()
            await services.revocations.stop()
            if isinstance(windows, RedisWindows):
                await windows.aclose()
            if services.redis is not None:
                await services.redis.aclose()
            await services.db.dispose()

    graphql = GraphQLView(schema, services, graphiql=settings.graphiql_enabled)
    saml_routes = SamlRoutes(settings, services, saml_login)
    routes = [
        Route("/graphql", graphql, methods=["GET", "POST"]),
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/.well-known/jwks.json", jwks),
        Route("/metrics", metrics),
        Route("/reports/{name}", ReportDownloads(services).download, methods=["GET"],
              middleware=route_limits("report-downloads", settings.report_downloads_per_minute)),
        *saml_routes.routes(route_limits),
        *sso_routes(settings, services, starters={"saml": saml_routes.begin}, limit=route_limits),
    ]
    middleware = [
        Middleware(RequestIdMiddleware),
        Middleware(SecurityHeadersMiddleware, hsts=settings.is_prod,
                   html_csp=GRAPHIQL_CSP if settings.graphiql_enabled else None),
        Middleware(RequestTargetMiddleware),
        Middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes),
        Middleware(
            AuthenticationMiddleware,
            authenticator=services.authenticator,
            client_address=ClientAddress(settings.trusted_proxies),
            on_failure=lambda _reason: auth_failures.inc(),
            last_used=services.last_used,
            audit=services.audit,
            rate_limit_audit=services.rate_limit_audit,
        ),
        Middleware(AdmissionMiddleware, admission=services.admission, known_costs=schema.known_costs),
    ]
    app = Starlette(routes=routes, middleware=middleware, lifespan=lifespan)
    app.state.settings = settings
    app.state.services = services
    app.state.schema = schema
    app.state.saml_routes = saml_routes
    app.state.mail_delivery = mail_delivery
    return app
