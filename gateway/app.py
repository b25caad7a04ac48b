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

from gateway.graphql import GraphQLView
from gateway.limits import KeyRateLimiter, LocalMovingWindow, RedisMovingWindow
from gateway.logs import configure_logging
from gateway.middleware import (
    AuthenticationMiddleware,
    BodyLimitMiddleware,
    ClientAddress,
    RequestIdMiddleware,
    SecurityHeadersMiddleware,
)
from gateway.saml import SamlLogin, SamlRoutes
from gateway.settings import Environment, Settings
from identity.api_keys import ApiKeyCache, ApiKeyVerifier, LastUsedRecorder
from identity.authentication import Authenticator
from identity.lockout import LockoutPolicy, LoginThrottle
from identity.passwords import HashParameters, PasswordHasherService
from identity.revocation import LocalRevocationBus, RedisRevocationBus, RevocationBus
from identity.secrets import SecretBox
from identity.sessions import SessionCache, SessionPolicy
from identity.tokens import AccessTokens, KeyRing
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
        from redis.asyncio import Redis

        redis = Redis.from_url(settings.redis_url)
        bus = RedisRevocationBus(redis)
    else:
        bus = LocalRevocationBus()
    sessions = SessionCache(ttl_seconds=settings.session_cache_ttl_seconds)
    bus.subscribe(sessions.invalidate)
    key_cache = ApiKeyCache(ttl_seconds=settings.api_key_cache_ttl_seconds)
    bus.subscribe(key_cache.invalidate)
    key_limiter: KeyRateLimiter = RedisMovingWindow(redis) if redis is not None else LocalMovingWindow()
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
        ),
    )
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
            tokens, sessions, db,
            api_keys=ApiKeyVerifier(db, settings.api_key_pepper.get_secret_value().encode(), settings.env.value,
                                    key_cache),
        ),
        revocations=bus,
        redis=redis,
        api_key_cache=key_cache,
        key_limiter=key_limiter,
        last_used=LastUsedRecorder(db, interval_seconds=settings.api_key_last_used_interval_seconds),
        secrets=SecretBox(settings.data_encryption_key.get_secret_value(),
                          [k.get_secret_value() for k in settings.previous_data_encryption_keys]),
        api_key_env=settings.env.value,
        api_key_pepper=settings.api_key_pepper.get_secret_value().encode(),
    )


def create_app(
    settings: Settings | None = None, *, enforce_authorization: bool = True, saml_login: SamlLogin | None = None,
) -> Starlette:
    """The gateway. `enforce_authorization=False` exists only for the benchmark (see `build_schema`).
    `saml_login` signs in the user of a validated SAML assertion (see `gateway.saml`)."""
    settings = settings or Settings()
    configure_logging(settings.log_level)
    services = build_services(settings)
    schema = build_schema(
        anonymous_introspection=settings.anonymous_introspection,
        field_suggestions=settings.suggestions_enabled,
        reject_unauthorized=settings.reject_unauthorized,
        enforce_authorization=enforce_authorization,
    )
    registry = CollectorRegistry()
    auth_failures = Counter(
        "portcullis_authentication_failures", "Requests refused at the edge for their credential",
        registry=registry,
    )

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
        if settings.env is not Environment.TEST:
            # start-up objects live for the whole process: keep them out of every collection (p99)
            gc.collect()
            gc.freeze()
        try:
            yield {"services": services}
        finally:
            if services.last_used is not None:
                await services.last_used.stop()
            await services.revocations.stop()
            if services.redis is not None:
                await services.redis.aclose()
            await services.db.dispose()

    graphql = GraphQLView(schema, services, graphiql=settings.graphiql_enabled)
    routes = [
        Route("/graphql", graphql, methods=["GET", "POST"]),
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/.well-known/jwks.json", jwks),
        Route("/metrics", metrics),
        *SamlRoutes(settings, services, saml_login).routes(),
    ]
    middleware = [
        Middleware(RequestIdMiddleware),
        Middleware(SecurityHeadersMiddleware, hsts=settings.is_prod,
                   html_csp=GRAPHIQL_CSP if settings.graphiql_enabled else None),
        Middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes),
        Middleware(
            AuthenticationMiddleware,
            authenticator=services.authenticator,
            client_address=ClientAddress(settings.trusted_proxies),
            on_failure=lambda _reason: auth_failures.inc(),
            key_limiter=services.key_limiter,
            last_used=services.last_used,
        ),
    ]
    app = Starlette(routes=routes, middleware=middleware, lifespan=lifespan)
    app.state.settings = settings
    app.state.services = services
    app.state.schema = schema
    return app
