"""Browser routes of single sign-on: start (`/auth/sso/{org_slug}`), the OIDC callback, logout.

The SSO transaction (Authlib's `state` marker) lives in a short-lived signed cookie of its own,
`__Host-portcullis-sso`, only on these routes; the values it points to are kept server side and spent
once. Every failure answers the same plain page, reflecting nothing the request carried, sets no
session cookie and writes no user; its reason goes to `record_sso_event`.
"""

from __future__ import annotations

import html
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from authz import PrincipalKind, anonymous
from gateway.middleware import graphql_error
from gateway.route_limits import RouteLimit, unlimited
from gateway.settings import Settings
from identity.browser_sessions import BrowserSessions
from identity.oidc import OidcError
from identity.sso import safe_return_to
from resolvers.auth import logout as end_session
from resolvers.deps import RequestContext, Services
from resolvers.sso import (
    SsoLogin,
    SsoLoginError,
    connection_for_organization,
    get_connection_by_id,
    oidc_config,
    record_sso_event,
)
from resolvers.sso_login import complete_sso_login, take_link_intent
from store.audit import AuditAction
from store.models import Organization, SsoConnection

log = logging.getLogger("portcullis.sso")

SSO_TRANSACTION_COOKIE = "__Host-portcullis-sso"
OIDC_CALLBACK_PATH = "/auth/oidc/callback"

# A protocol's way to start a login for a connection, by `SsoConnection.kind` (SAML passes "saml"): the
# request, the organization, its connection, the (checked) return path, and the account whose holder asked
# to link it (`startSsoLink`), or None.
Starter = Callable[[Request, Organization, SsoConnection, str, str | None], Awaitable[Response]]


def finish_browser_login(
    browser: BrowserSessions, login: SsoLogin, return_to: str | None, allowed_paths: Sequence[str]
) -> Response:
    """The browser's way back after any successful SSO: a 303 to `return_to` (if allowed) with the cookies."""
    response = RedirectResponse(safe_return_to(return_to, allowed_paths), status_code=303)
    for value in browser.set_cookie_headers(login.session.id):
        response.headers.append("set-cookie", value)
    return response


def sso_failure_page(request: Request, status: int = 400) -> Response:
    """The one page every failed sign-in gets: nothing from the request but the (validated) request id."""
    rid = html.escape(str(request.scope.get("state", {}).get("request_id") or ""))
    body = (
        '<!doctype html><html><head><meta charset="utf-8"><title>Sign-in failed</title></head><body>'
        "<h1>Sign-in failed</h1><p>Single sign-on could not be completed. Start again from your "
        "application, or ask your administrator to check the organization's SSO connection.</p>"
        f"<p>Reference: <code>{rid}</code></p></body></html>"
    )
    return HTMLResponse(body, status_code=status)


def sso_routes(
    settings: Settings, services: Services, starters: Mapping[str, Starter] | None = None, limit: RouteLimit = unlimited
) -> list[Route]:
    allowed_paths = list(settings.frontend_return_paths)
    redirect_uri = settings.public_url + OIDC_CALLBACK_PATH
    transaction_cookie = [
        Middleware(
            SessionMiddleware,
            secret_key=settings.cookie_secret.get_secret_value(),
            session_cookie=SSO_TRANSACTION_COOKIE,
            max_age=settings.sso_state_ttl_seconds,
            path="/",
            same_site="lax",
            https_only=settings.session_cookie_secure,
        )
    ]

    def context(request: Request) -> RequestContext:
        """The browser's request, before any session: its address, user agent and request id."""
        state = request.scope.get("state", {})
        ua = request.headers.get("user-agent")
        principal = anonymous(
            state.get("client_ip") or (request.client.host if request.client else None), state.get("request_id")
        )
        return RequestContext.for_route(services, principal, user_agent=ua[:256] if ua else None)

    async def failed(
        request: Request,
        reason: str,
        *,
        protocol: str = "oidc",
        organization_id: str | None = None,
        connection_id: str | None = None,
        status: int = 400,
        details: dict[str, Any] | None = None,
    ) -> Response:
        await record_sso_event(
            context(request),
            AuditAction.AUTHN_SSO_FAIL,
            reason=reason,
            protocol=protocol,
            organization_id=organization_id,
            connection_id=connection_id,
            details=details,
        )
        return sso_failure_page(request, status)

    async def start_oidc(
        request: Request, org: Organization, connection: SsoConnection, return_to: str, link_user_id: str | None
    ) -> Response:
        assert services.oidc is not None
        try:
            url = await services.oidc.begin(
                request,
                oidc_config(context(request), connection),
                redirect_uri=redirect_uri,
                return_to=return_to,
                link_user_id=link_user_id,
            )
        except OidcError as exc:
            return await failed(request, exc.reason, organization_id=org.id, connection_id=connection.id, status=502)
        return RedirectResponse(url, status_code=302)

    by_kind: dict[str, Starter] = {"oidc": start_oidc, **(starters or {})}

    async def start(request: Request) -> Response:
        slug = request.path_params["org_slug"]
        ctx = context(request)
        async with ctx.unit_of_work(writes=False):
            found = await connection_for_organization(ctx, slug)
        if found is None:
            return await failed(request, "sso_not_configured", status=404)
        org, connection = found
        starter = by_kind.get(connection.kind)
        if starter is None:
            return await failed(
                request,
                "sso_protocol_unavailable",
                protocol=connection.kind,
                organization_id=org.id,
                connection_id=connection.id,
                status=404,
            )
        link_user_id = None
        if "link" in request.query_params:
            # a link asked for by a signed-in account (`startSsoLink`), single use, for this organization
            async with ctx.unit_of_work():
                link_user_id = await take_link_intent(ctx, request.query_params.get("link"), org.id)
            if link_user_id is None:
                return await failed(
                    request,
                    "sso_link_invalid",
                    protocol=connection.kind,
                    organization_id=org.id,
                    connection_id=connection.id,
                )
        return await starter(
            request, org, connection, safe_return_to(request.query_params.get("return_to"), allowed_paths), link_user_id
        )

    async def oidc_callback(request: Request) -> Response:
        rp = services.oidc
        if rp is None or services.browser is None:
            return await failed(request, "sso_unconfigured", status=404)
        org_id = connection_id = None
        ctx = context(request)
        try:
            pending = await rp.take_pending(request.query_params.get("state"))
            async with ctx.unit_of_work(writes=False):
                connection = await get_connection_by_id(ctx, pending.connection_id)
            if connection is None:
                raise SsoLoginError("sso_connection_missing")
            org_id, connection_id = connection.organization_id, connection.id
            if not connection.enabled:
                raise SsoLoginError("sso_connection_disabled")
            identity = await rp.finish(request, oidc_config(ctx, connection))
            login = await complete_sso_login(ctx, connection, identity, link_user_id=pending.link_user_id)
        except (OidcError, SsoLoginError) as exc:
            details = exc.details if isinstance(exc, SsoLoginError) else None
            return await failed(
                request, exc.reason, organization_id=org_id, connection_id=connection_id, details=details
            )
        except Exception:
            log.exception(
                "unexpected error in the OIDC callback",
                extra={"request_id": request.scope.get("state", {}).get("request_id")},
            )
            return await failed(request, "sso_internal_error", organization_id=org_id, connection_id=connection_id)
        return finish_browser_login(services.browser, login, pending.return_to, allowed_paths)

    async def logout(request: Request) -> Response:
        principal = request.scope.get("state", {}).get("principal")
        if principal is None or principal.kind is not PrincipalKind.USER or principal.session_id is None:
            return JSONResponse(graphql_error("Authentication required.", "UNAUTHENTICATED"), status_code=401)
        ua = request.headers.get("user-agent")
        ctx = RequestContext.for_route(services, principal, user_agent=ua[:256] if ua else None)
        async with ctx.unit_of_work():
            await end_session(ctx)
        response = JSONResponse({"loggedOut": True})
        if services.browser is not None:
            for value in services.browser.clear_cookie_headers():
                response.headers.append("set-cookie", value)
        return response

    return [
        Route(
            "/auth/sso/{org_slug}",
            start,
            methods=["GET"],
            middleware=[*limit("sso-start", settings.sso_start_per_minute), *transaction_cookie],
        ),
        Route(
            OIDC_CALLBACK_PATH,
            oidc_callback,
            methods=["GET"],
            middleware=[*limit("oidc-callback", settings.oidc_callback_per_minute), *transaction_cookie],
        ),
        Route("/auth/logout", logout, methods=["POST"]),
    ]
