"""Pure ASGI middleware of the edge, outermost first (inside the request's id and trace, gateway/tracing.py,
whose one wrapper of `send` adds the security headers defined here): the request target, body limit,
authentication (then `gateway.route_admission`). Each passes non-HTTP scopes through, writes one result into
`scope["state"]`, and none wraps `send`: the answer's status is read from the state (`response_started`).
"""

from __future__ import annotations

import ipaddress
import logging
import re
from collections.abc import Iterable
from typing import Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from authz import Principal, anonymous
from gateway.rate_limit_audit import RateLimitAudit
from gateway.tenant_policy import tenant_refusal
from identity.api_keys import ApiKeyInfo, ApiKeyRejected, LastUsedRecorder
from identity.authentication import AuthenticationError, Authenticator
from identity.browser_sessions import CSRF_HEADER, SESSION_COOKIE
from store.audit import ActorType, AuditAction, AuditEvent, AuditResult, AuditTrail
from store.models import new_ordered_id
from store.telemetry import span
from store.text import storable

log = logging.getLogger("portcullis.edge")

_SHORT_TOKEN = re.compile(r"^[A-Za-z0-9._\-]{8,64}$")
# RFC 6750 b64token; `\Z`, not `$`, which would also match before a trailing newline
_BEARER = re.compile(r"^Bearer ([A-Za-z0-9\-._~+/]+=*)\Z")
_APIKEY = re.compile(r"^ApiKey ([\x21-\x7e]+)\Z")
# credentials never travel in a URL (ASVS 5.0 14.2.1): these parameters are refused outright
_URL_CREDENTIALS = frozenset({b"api_key", b"apikey", b"access_token", b"token", b"key"})
_SAFE_METHODS = frozenset({"GET", "HEAD"})


def request_state(scope: Scope) -> dict[str, Any]:
    return scope.setdefault("state", {})  # type: ignore[no-any-return]


def under_prefix(path: str, prefixes: tuple[str, ...]) -> bool:
    return any(path == prefix or path.startswith(prefix + "/") for prefix in prefixes)


def _header(scope: Scope, name: bytes) -> list[bytes]:
    return [v for k, v in scope["headers"] if k == name]


def valid_request_id(value: str) -> bool:
    """A canonical UUID or a short token of letters, digits, `.`, `_` and `-` (8 to 64 of them).

    `uuid.UUID` alone is too lenient (it takes `urn:`, braces and stray dashes), and `$` would let a
    trailing newline through: the whole value must match.
    """
    return _SHORT_TOKEN.fullmatch(value) is not None


def assign_request_id(scope: Scope, state: dict[str, Any]) -> str:
    """The request's id: the client's `X-Request-ID` when it is one well-formed value, a new one otherwise;
    kept in `state["request_id"]` (and sent back by gateway/tracing.py's `RequestContextMiddleware`)."""
    given = _header(scope, b"x-request-id")
    rid = None
    if len(given) == 1:
        candidate = given[0].decode("latin-1")
        if valid_request_id(candidate):
            rid = candidate
    # made here: ordered by time (UUIDv7), so the audit log's index of request ids grows at its end
    rid = rid or new_ordered_id()
    state["request_id"] = rid
    return rid


_SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
]
_STRICT_CSP = (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'")
_HSTS = (b"strict-transport-security", b"max-age=31536000; includeSubDomains")


class SecurityHeaders:
    """The security headers every answer carries, the gateway's own refusals included: added to the answer's
    headers by the edge's one wrapper of `send` (gateway/tracing.py's `RequestContextMiddleware`), which also
    answers an exception that escapes a route before its response started as the contract's masked `INTERNAL`
    error: Starlette's own error page is sent outside every middleware of the gateway, so it would leave without
    these headers."""

    def __init__(self, *, hsts: bool = False, html_csp: bytes | None = None) -> None:
        self.static = list(_SECURITY_HEADERS) + ([_HSTS] if hsts else [])
        self.html_csp = html_csp

    def add_to(self, headers: list[tuple[bytes, bytes]]) -> None:
        is_html = any(k == b"content-type" and v.startswith(b"text/html") for k, v in headers)
        csp = (b"content-security-policy", self.html_csp) if is_html and self.html_csp else _STRICT_CSP
        has_csp = has_cache_control = False
        for k, _ in headers:
            if k == b"content-security-policy":
                has_csp = True  # a page may bring its own, stricter policy (the report pages)
            elif k == b"cache-control":
                has_cache_control = True
        headers.extend(self.static)
        if not has_csp:
            headers.append(csp)
        if not has_cache_control:
            headers.append((b"cache-control", b"no-store"))


def response_started(scope: Scope) -> bool:
    """Whether the answer to this request has started: the edge's wrapper of `send` records its status in
    `state["response_status"]` (gateway/tracing.py), so that no inner layer needs a wrapper of its own."""
    return scope.get("state", {}).get("response_status") is not None


class RequestTargetMiddleware:
    """Refuses a request whose path or query string holds a character the database cannot store (C-133),
    before any route reads it: 400 `BAD_USER_INPUT`, where `/auth/sso/a%00b` would otherwise fail at the
    database. The server hands the path over percent-decoded and the query string as sent, in which a NUL
    can only be `%00` (a lone surrogate cannot be spelled: invalid UTF-8 decodes to U+FFFD)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not _storable_target(scope):
            await send_json(
                send,
                400,
                graphql_error(
                    "The request's path or query string contains a character that cannot be stored.", "BAD_USER_INPUT"
                ),
            )
            return
        await self.app(scope, receive, send)


def _storable_target(scope: Scope) -> bool:
    query: bytes = scope.get("query_string") or b""
    if query and (b"%00" in query or b"\x00" in query):
        return False
    return storable(scope["path"])


class EndpointAtPath:
    """The edge's innermost layer: an HTTP request for exactly `path` goes to `endpoint` at once, every other
    request on to the router. The GraphQL endpoint, the hot path, answers every error itself (gateway/graphql.py),
    so it needs neither the router's matching nor Starlette's exception layer."""

    def __init__(self, app: ASGIApp, *, path: str, endpoint: ASGIApp) -> None:
        self.app = app
        self.path = path
        self.endpoint = endpoint

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == self.path:
            await self.endpoint(scope, receive, send)
        else:
            await self.app(scope, receive, send)


class BodyTooLarge(Exception):
    pass


async def send_json(send: Send, status: int, body: dict[str, Any], headers: Iterable[tuple[bytes, bytes]] = ()) -> None:
    await send_encoded(send, status, orjson.dumps(body), headers)


async def send_encoded(
    send: Send,
    status: int,
    payload: bytes,
    headers: Iterable[tuple[bytes, bytes]] = (),
    media_type: bytes = b"application/json",
) -> None:
    """An answer whose body is already encoded, as two ASGI messages."""
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", media_type), (b"content-length", str(len(payload)).encode()), *headers],
        }
    )
    await send({"type": "http.response.body", "body": payload})


def graphql_error(message: str, code: str, **extensions: Any) -> dict[str, Any]:
    return {"errors": [{"message": message, "extensions": {"code": code, **extensions}}]}


class BodyLimitMiddleware:
    """Refuses request bodies over the limit with 413, by the declared length or by counting. Paths under
    `exempt_prefixes` (the HTTP upstreams' routes) are held to their route's own limit instead."""

    def __init__(self, app: ASGIApp, *, max_bytes: int, exempt_prefixes: tuple[str, ...] = ()) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.exempt = exempt_prefixes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (self.exempt and under_prefix(scope["path"], self.exempt)):
            await self.app(scope, receive, send)
            return
        declared = _header(scope, b"content-length")
        if declared:
            try:
                size = int(declared[0])
            except ValueError:
                await send_json(send, 400, graphql_error("Invalid Content-Length.", "BAD_USER_INPUT"))
                return
            if size > self.max_bytes:
                await self._too_large(send)
                return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge
            return message

        try:
            await self.app(scope, counting_receive, send)
        except BodyTooLarge:
            if not response_started(scope):
                await self._too_large(send)

    async def _too_large(self, send: Send) -> None:
        await send_json(send, 413, graphql_error(f"Request body exceeds {self.max_bytes} bytes.", "BAD_USER_INPUT"))


class ClientAddress:
    """The caller's address: the peer, or `X-Forwarded-For` only when the peer is a trusted proxy."""

    def __init__(self, trusted_proxies: Iterable[str]) -> None:
        self.trusted = [ipaddress.ip_network(c, strict=False) for c in trusted_proxies]

    def _is_trusted(self, addr: str) -> bool:
        try:
            ip = ipaddress.ip_address(addr)
        except ValueError:
            return False
        return any(ip in net for net in self.trusted)

    def __call__(self, scope: Scope) -> str | None:
        client = scope.get("client")
        peer: str | None = str(client[0]) if client else None
        if peer is None or not self.trusted or not self._is_trusted(peer):
            return peer
        hops: list[str] = []
        for value in _header(scope, b"x-forwarded-for"):
            hops.extend(h.strip() for h in value.decode("latin-1").split(","))
        for hop in reversed(hops):
            try:
                ipaddress.ip_address(hop)
            except ValueError:
                return peer
            if not self._is_trusted(hop):
                return hop
        return hops[0] if hops else peer


class Refused(Exception):
    """A valid credential refused by policy at the edge (403, 429)."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str,
        reason: str,
        headers: Iterable[tuple[bytes, bytes]] = (),
        **extensions: Any,
    ) -> None:
        super().__init__(reason)
        self.status = status
        self.body = graphql_error(message, code, **extensions)
        self.reason = reason
        self.headers = list(headers)
        self.audit: AuditEvent | None = None


def _key_event(info: ApiKeyInfo, action: str, ip: str | None, rid: str | None, details: dict[str, Any]) -> AuditEvent:
    return AuditEvent(
        action=action,
        result=AuditResult.DENIED,
        organization_id=info.organization_id,
        actor_type=ActorType.API_KEY,
        actor_id=info.key_id,
        resource_type="api_key",
        resource_id=info.key_id,
        request_id=rid,
        ip=ip,
        details=details,
    )


def _credentials_in_url(scope: Scope) -> bool:
    query: bytes = scope.get("query_string") or b""
    if not query:
        return False
    for part in query.split(b"&"):
        name = part.split(b"=", 1)[0].lower()
        if name in _URL_CREDENTIALS:
            return True
    return False


class AuthenticationMiddleware:
    """Builds the request's `Principal` from exactly one credential, or answers 401.

    Two credentials, a malformed one, or one that does not verify is refused outright: the
    request never continues as anonymous. An API key is then held to its own policy: a valid key
    from an address outside its allowlist is 403; its own per-minute limit is left in the scope
    (`api_key_rate_limit`) for admission, which counts it with the tenant's limits.
    """

    PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/.well-known/jwks.json", "/metrics"})
    # single sign-on starts and ends here: a stale cookie must not stand in the way of signing in again
    SIGN_IN_PREFIXES = ("/auth/sso/", "/auth/oidc/", "/auth/saml/")
    # "Bearer " and the largest token the verifier takes (8 KiB): anything longer is refused unparsed
    MAX_AUTHORIZATION_BYTES = len("Bearer ") + 8 * 1024

    def __init__(
        self,
        app: ASGIApp,
        *,
        authenticator: Authenticator,
        client_address: ClientAddress,
        on_failure: Any = None,
        last_used: LastUsedRecorder | None = None,
        audit: AuditTrail | None = None,
        rate_limit_audit: RateLimitAudit | None = None,
    ) -> None:
        self.app = app
        self.audit = audit
        self.rate_limit_audit = rate_limit_audit
        self.authenticator = authenticator
        self.client_address = client_address
        self.on_failure = on_failure
        self.last_used = last_used

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.PUBLIC_PATHS:
            await self.app(scope, receive, send)
            return
        state = request_state(scope)
        rid = state.get("request_id")
        ip = self.client_address(scope)
        state["client_ip"] = ip
        if scope["path"].startswith(self.SIGN_IN_PREFIXES):
            state["principal"] = anonymous(client_ip=ip, request_id=rid)
            await self.app(scope, receive, send)
            return
        try:
            with span("authenticate"):
                principal = await self._authenticate(scope, state, ip, rid)
                if principal.organization_id is not None:
                    # the organization's own policy (gateway/tenant_policy.py), inside a key's own allowlist
                    policy = await self.authenticator.policy(principal.organization_id)
                    refusal = tenant_refusal(policy, principal)
                    if refusal is not None:
                        refused = Refused(403, refusal.message, "FORBIDDEN", refusal.reason)
                        refused.audit = refusal.audit
                        raise refused
        except Refused as exc:
            log.info("authz_fail", extra={"reason": exc.reason, "request_id": rid, "client_ip": ip})
            await self._audit_refusal(scope, exc)
            await send_json(send, exc.status, exc.body, headers=exc.headers)
            return
        except AuthenticationError as exc:
            log.info("authn_token_invalid", extra={"reason": exc.reason, "request_id": rid, "client_ip": ip})
            if self.on_failure is not None:
                self.on_failure(exc.reason)
            await send_json(
                send,
                401,
                graphql_error("Invalid or missing credentials.", "UNAUTHENTICATED"),
                headers=[(b"www-authenticate", b'Bearer realm="portcullis", error="invalid_token"')],
            )
            return
        state["principal"] = principal
        await self.app(scope, receive, send)

    async def _audit_refusal(self, scope: Scope, exc: Refused) -> None:
        """A valid credential refused by policy: `apikey_use_denied` (`session_use_denied`), or a counted
        rate-limit refusal."""
        event = exc.audit
        if event is None or self.audit is None:
            return
        agent = _header(scope, b"user-agent")
        event.user_agent = agent[0].decode("latin-1") if agent else None
        try:
            if event.action == AuditAction.EXCESS_RATE_LIMIT_EXCEEDED:
                if self.rate_limit_audit is not None:
                    await self.rate_limit_audit.refused(event, key=f"api_key:{event.resource_id}")
            else:
                await self.audit.record(event)
        except Exception:
            log.exception("audit entry not written", extra={"request_id": event.request_id})

    async def _authenticate(self, scope: Scope, state: dict[str, Any], ip: str | None, rid: str | None) -> Principal:
        if _credentials_in_url(scope):
            # C-077: refused even when valid; the value itself is never logged
            raise AuthenticationError("credential in the query string")
        authorization = _header(scope, b"authorization")
        api_keys = _header(scope, b"x-api-key")
        cookies = [
            part.strip()[len(SESSION_COOKIE) + 1 :]
            for value in _header(scope, b"cookie")
            for part in value.decode("latin-1").split(";")
            if part.strip().startswith(SESSION_COOKIE + "=")
        ]
        presented = len(authorization) + len(api_keys) + len(cookies)
        if presented == 0:
            return anonymous(client_ip=ip, request_id=rid)
        if presented > 1:
            raise AuthenticationError("more than one credential")
        if authorization:
            if len(authorization[0]) > self.MAX_AUTHORIZATION_BYTES:
                raise AuthenticationError("authorization header too large")
            value = authorization[0].decode("latin-1")
            match = _BEARER.match(value)
            if match is not None:
                return await self.authenticator.bearer(match.group(1), client_ip=ip, request_id=rid)
            match = _APIKEY.match(value)
            if match is None:
                raise AuthenticationError("malformed authorization header")
            return await self._api_key(match.group(1), state, ip, rid)
        if api_keys:
            if len(api_keys[0]) > self.MAX_AUTHORIZATION_BYTES:
                raise AuthenticationError("api key header too large")
            return await self._api_key(api_keys[0].decode("latin-1"), state, ip, rid)
        return await self._cookie(scope, cookies[0], ip, rid)

    async def _cookie(self, scope: Scope, cookie: str, ip: str | None, rid: str | None) -> Principal:
        session_id = self.authenticator.cookie_session_id(cookie)
        if scope["method"] not in _SAFE_METHODS:
            # a cookie rides along on cross-site requests; the CSRF token cannot (contract: every
            # mutation and every non-GET request with the session cookie carries X-CSRF-Token)
            presented = _header(scope, CSRF_HEADER.encode())
            browser = self.authenticator.browser
            if (
                len(presented) != 1
                or browser is None
                or not browser.csrf_ok(session_id, presented[0].decode("latin-1"))
            ):
                raise Refused(403, "Missing or invalid CSRF token.", "FORBIDDEN", "cookie: csrf token")
        return await self.authenticator.cookie(session_id, client_ip=ip, request_id=rid)

    async def _api_key(self, presented: str, state: dict[str, Any], ip: str | None, rid: str | None) -> Principal:
        try:
            info = await self.authenticator.api_key(presented)
        except ApiKeyRejected as exc:
            raise AuthenticationError(exc.reason) from None
        if not info.allows(ip):
            refused = Refused(
                403,
                "This API key is not allowed from this address.",
                "FORBIDDEN",
                "api key: address outside its allowlist",
            )
            refused.audit = _key_event(
                info, AuditAction.APIKEY_USE_DENIED, ip, rid, {"reason": "address outside the key's allowlist"}
            )
            raise refused
        state["api_key_rate_limit"] = info.rate_limit_per_minute
        if self.last_used is not None:
            self.last_used.record(info.key_id)
        return info.principal(client_ip=ip, request_id=rid)
