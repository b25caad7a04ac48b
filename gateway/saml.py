"""SAML routes: SP metadata, starting a login (`GET /auth/sso/{org}` for a SAML connection) and the
assertion consumer service.

`POST /auth/saml/{org}/acs` does everything up to a validated `ExternalIdentity` of an admitted user
(signature and the checks of `identity.saml`, the pending request bound to this browser, the
connection's email domains, and, without just-in-time provisioning, an identity the tenant knows), then
hands it to the `SamlLogin` callable given to `create_app`, which signs the user in. Every refusal is
the same plain page: nothing of the request is reflected, no cookie is set, nothing is written. A form
holding a character the database cannot store (C-133) is refused before anything reads it, with the
edge's 400 `BAD_USER_INPUT`, as such a path or query string is.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from authz import anonymous
from gateway.middleware import graphql_error
from gateway.route_limits import RouteLimit, unlimited
from gateway.settings import Settings
from gateway.sso import finish_browser_login
from identity.saml import (
    MAX_RESPONSE_BYTES,
    PENDING_LIFETIME_SECONDS,
    IdentityProvider,
    LocalReplayCache,
    PendingRequest,
    RedisReplayCache,
    ReplayCache,
    SamlFailure,
    ServiceProvider,
    authn_request,
    open_pending,
    pending_key,
    seal_pending,
    sp_metadata,
    validate_response,
)
from identity.sso import ExternalIdentity
from resolvers import saml as service
from resolvers.deps import RequestContext, Services
from resolvers.sso import SsoLoginError, record_sso_event
from resolvers.sso_login import complete_sso_login
from store.audit import AuditAction
from store.models import Organization, SsoConnection
from store.text import storable

log = logging.getLogger("portcullis.saml")

# (request, connection, validated identity, return_to path, the account that asked for a link or None) -> the
# response that signs the user in
SamlLogin = Callable[[Request, SsoConnection, ExternalIdentity, str, str | None], Awaitable[Response]]

MAX_FORM_BYTES = MAX_RESPONSE_BYTES + 4096
FAILURE_PAGE = (
    "<!doctype html><html lang=en><meta charset=utf-8><title>Sign-in failed</title>"
    "<h1>Sign-in failed</h1><p>Single sign-on could not be completed. Start again from the sign-in page;"
    " if it keeps failing, tell your administrator.</p></html>"
)
NOT_AVAILABLE_PAGE = (
    "<!doctype html><html lang=en><meta charset=utf-8><title>Single sign-on unavailable</title>"
    "<h1>Single sign-on unavailable</h1><p>This organization has no single sign-on configured.</p></html>"
)


class _TooLarge(Exception):
    pass


class _Unstorable(Exception):
    pass


def failure_page(status: int = 400) -> Response:
    return HTMLResponse(FAILURE_PAGE, status_code=status, headers={"cache-control": "no-store"})


def _not_available() -> Response:
    return HTMLResponse(NOT_AVAILABLE_PAGE, status_code=404, headers={"cache-control": "no-store"})


class SamlRoutes:
    def __init__(self, settings: Settings, services: Services, login: SamlLogin | None) -> None:
        self.settings = settings
        self.services = services
        self.login: SamlLogin = login or self.sign_in
        self.replay: ReplayCache = (
            RedisReplayCache(services.redis) if services.redis is not None else LocalReplayCache()
        )
        self.key = pending_key(settings.cookie_secret.get_secret_value())
        self.secure = settings.public_url.startswith("https://")
        # The ACS is a cross-site POST from the IdP: only a SameSite=None cookie (so Secure, so https)
        # comes back with it. Over plain http (development) the IdP must be same-site.
        self.cookie = "__Host-portcullis-saml" if self.secure else "portcullis-saml"

    def routes(self, limit: RouteLimit = unlimited) -> list[Route]:
        """The SAML-only routes; `GET /auth/sso/{org}` (gateway.sso) hands SAML connections to `begin`."""
        return [
            Route(
                "/auth/saml/{org}/metadata",
                self.metadata,
                methods=["GET"],
                middleware=limit("saml-metadata", self.settings.saml_metadata_per_minute),
            ),
            Route(
                "/auth/saml/{org}/acs",
                self.acs,
                methods=["POST"],
                middleware=limit("saml-acs", self.settings.saml_acs_per_minute),
            ),
        ]

    def _sp(self, slug: str) -> ServiceProvider:
        return ServiceProvider.for_tenant(self.settings.public_url, slug)

    def _context(self, request: Request) -> RequestContext:
        """The browser's request, before any session: its address, user agent and request id."""
        state = request.scope.get("state", {})
        agent = request.headers.get("user-agent")
        return RequestContext.for_route(
            self.services,
            anonymous(state.get("client_ip"), state.get("request_id")),
            user_agent=agent[:256] if agent else None,
        )

    async def _connection(self, request: Request, slug: str) -> tuple[Organization | None, SsoConnection | None]:
        ctx = self._context(request)
        async with ctx.unit_of_work(writes=False):
            return await service.find_connection(ctx, slug)

    async def metadata(self, request: Request) -> Response:
        slug = request.path_params["org"]
        org, connection = await self._connection(request, slug)
        if org is None or connection is None:
            return _not_available()
        return Response(
            sp_metadata(self._sp(org.slug)),
            media_type="application/samlmetadata+xml",
            headers={"cache-control": "public, max-age=300"},
        )

    async def begin(
        self,
        request: Request,
        org: Organization,
        connection: SsoConnection,
        return_to: str,
        link_user_id: str | None = None,
    ) -> Response:
        """Starts a SAML login (`return_to` already checked against the allowlist): an AuthnRequest by
        HTTP-Redirect, its id sealed in a cookie bound to this browser."""
        try:
            idp = IdentityProvider.from_connection(connection.entity_id, connection.config)
        except SamlFailure as exc:
            await self._fail(request, exc.reason, None, org.id, connection.id)
            return failure_page()
        request_id, url = authn_request(self._sp(org.slug), idp)
        pending = PendingRequest(
            request_id, org.id, connection.id, return_to, int(time.time()) + PENDING_LIFETIME_SECONDS, link_user_id
        )
        response = RedirectResponse(url, status_code=302, headers={"cache-control": "no-store"})
        response.set_cookie(
            self.cookie,
            seal_pending(pending, self.key),
            max_age=PENDING_LIFETIME_SECONDS,
            path="/",
            secure=self.secure,
            httponly=True,
            samesite="none" if self.secure else "lax",
        )
        return response

    async def acs(self, request: Request) -> Response:
        try:
            form = await self._form(request)
        except _TooLarge:
            await self._fail(request, "saml_response_too_large", None)
            return failure_page(413)
        except _Unstorable:
            await self._fail(request, "saml_unstorable_form", None)
            return JSONResponse(
                graphql_error("The form contains a character that cannot be stored.", "BAD_USER_INPUT"), status_code=400
            )
        saml_response = form.get("SAMLResponse")
        if not saml_response:
            await self._fail(request, "saml_no_response", None)
            return failure_page()
        slug = request.path_params["org"]
        org, connection = await self._connection(request, slug)
        if org is None or connection is None or not connection.enabled:
            await self._fail(request, "sso_not_configured", None, org.id if org else None)
            return failure_page()
        pending = open_pending(request.cookies.get(self.cookie), self.key)
        if pending is None or pending.organization_id != org.id or pending.connection_id != connection.id:
            await self._fail(request, "saml_no_pending_request", None, org.id, connection.id)
            return failure_page()
        try:
            idp = IdentityProvider.from_connection(connection.entity_id, connection.config)
            identity = await validate_response(
                self._sp(org.slug), idp, saml_response, request_id=pending.request_id, replay=self.replay
            )
        except SamlFailure as exc:
            await self._fail(request, exc.reason, exc.detail, org.id, connection.id)
            return failure_page()
        if not service.email_domain_allowed(connection, identity.email):
            await self._fail(request, "sso_email_domain", None, org.id, connection.id)
            return failure_page(403)
        if not connection.jit_provisioning and pending.link_user_id is None:
            ctx = self._context(request)
            async with ctx.unit_of_work(writes=False):
                known = await service.known_to_tenant(ctx, connection, identity)
            if not known:
                await self._fail(request, "sso_unknown_user", None, org.id, connection.id)
                return failure_page(403)
        response = await self.login(request, connection, identity, pending.return_to, pending.link_user_id)
        response.delete_cookie(
            self.cookie, path="/", secure=self.secure, httponly=True, samesite="none" if self.secure else "lax"
        )
        return response

    async def sign_in(
        self,
        request: Request,
        connection: SsoConnection,
        identity: ExternalIdentity,
        return_to: str,
        link_user_id: str | None = None,
    ) -> Response:
        """The default `SamlLogin`: provisioning and the browser session, as for every SSO protocol."""
        browser = self.services.browser
        if browser is None:
            await self._fail(request, "sso_login_unavailable", None, connection.organization_id, connection.id)
            return failure_page(503)
        try:
            login = await complete_sso_login(self._context(request), connection, identity, link_user_id=link_user_id)
        except SsoLoginError as exc:
            await self._fail(request, exc.reason, None, connection.organization_id, connection.id, exc.details)
            return failure_page(403)
        return finish_browser_login(browser, login, return_to, self.settings.frontend_return_paths)

    async def _form(self, request: Request) -> dict[str, str]:
        """The urlencoded form, read no further than a SAMLResponse can be long."""
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > MAX_FORM_BYTES):
            raise _TooLarge
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_FORM_BYTES:
                raise _TooLarge
        if not request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
            return {}
        try:
            fields = parse_qs(body.decode("ascii"), max_num_fields=8)
        except (UnicodeDecodeError, ValueError):
            return {}
        if not all(storable(name) and all(storable(v) for v in values) for name, values in fields.items()):
            raise _Unstorable
        return {name: values[0] for name, values in fields.items() if len(values) == 1}

    async def _fail(
        self,
        request: Request,
        reason: str,
        detail: str | None,
        organization_id: str | None = None,
        connection_id: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        state = request.scope.get("state", {})
        log.info(
            "authn_sso_fail",
            extra={
                "reason": reason,
                "code": detail,
                "protocol": "saml",
                "request_id": state.get("request_id"),
                "client_ip": state.get("client_ip"),
            },
        )
        await record_sso_event(
            self._context(request),
            AuditAction.AUTHN_SSO_FAIL,
            reason=reason,
            protocol="saml",
            organization_id=organization_id,
            connection_id=connection_id,
            details=details,
        )
