"""Pure ASGI middleware of the edge, outermost first: request id, security headers, body limit,
authentication. Each passes non-HTTP scopes through and writes one result into `scope["state"]`.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import re
import uuid
from collections.abc import Iterable
from typing import Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from authz import Principal, anonymous
from gateway.limits import KeyRateLimiter
from identity.api_keys import ApiKeyInfo, ApiKeyRejected, LastUsedRecorder
from identity.authentication import AuthenticationError, Authenticator

log = logging.getLogger("portcullis.edge")

_SHORT_TOKEN = re.compile(r"^[A-Za-z0-9._\-]{8,64}$")
# RFC 6750 b64token; `\Z`, not `$`, which would also match before a trailing newline
_BEARER = re.compile(r"^Bearer ([A-Za-z0-9\-._~+/]+=*)\Z")
_APIKEY = re.compile(r"^ApiKey ([\x21-\x7e]+)\Z")
# credentials never travel in a URL (ASVS 5.0 14.2.1): these parameters are refused outright
_URL_CREDENTIALS = frozenset({b"api_key", b"apikey", b"access_token", b"token", b"key"})
SESSION_COOKIE = "__Host-portcullis"


def _state(scope: Scope) -> dict[str, Any]:
    return scope.setdefault("state", {})  # type: ignore[no-any-return]


def _header(scope: Scope, name: bytes) -> list[bytes]:
    return [v for k, v in scope["headers"] if k == name]


def valid_request_id(value: str) -> bool:
    """A canonical UUID or a short token of letters, digits, `.`, `_` and `-` (8 to 64 of them).

    `uuid.UUID` alone is too lenient (it takes `urn:`, braces and stray dashes), and `$` would let a
    trailing newline through: the whole value must match.
    """
    return _SHORT_TOKEN.fullmatch(value) is not None


class RequestIdMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = _header(scope, b"x-request-id")
        rid = None
        if len(given) == 1:
            candidate = given[0].decode("latin-1")
            if valid_request_id(candidate):
                rid = candidate
        rid = rid or str(uuid.uuid4())
        _state(scope)["request_id"] = rid
        raw = rid.encode()

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"x-request-id", raw)]
            await send(message)

        await self.app(scope, receive, send_with_id)


_SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
]
_STRICT_CSP = (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'")
_HSTS = (b"strict-transport-security", b"max-age=31536000; includeSubDomains")


class SecurityHeadersMiddleware:
    def __init__(self, app: ASGIApp, *, hsts: bool = False, html_csp: bytes | None = None) -> None:
        self.app = app
        self.static = list(_SECURITY_HEADERS) + ([_HSTS] if hsts else [])
        self.html_csp = html_csp

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                is_html = any(k == b"content-type" and v.startswith(b"text/html") for k, v in headers)
                csp = (b"content-security-policy", self.html_csp) if is_html and self.html_csp else _STRICT_CSP
                headers.extend(self.static)
                headers.append(csp)
                if not any(k == b"cache-control" for k, _ in headers):
                    headers.append((b"cache-control", b"no-store"))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


class BodyTooLarge(Exception):
    pass


async def send_json(send: Send, status: int, body: dict[str, Any],
                    headers: Iterable[tuple[bytes, bytes]] = ()) -> None:
    payload = orjson.dumps(body)
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(payload)).encode()),
            *headers,
        ],
    })
    await send({"type": "http.response.body", "body": payload})


def graphql_error(message: str, code: str, **extensions: Any) -> dict[str, Any]:
    return {"errors": [{"message": message, "extensions": {"code": code, **extensions}}]}


class BodyLimitMiddleware:
    """Refuses request bodies over the limit with 413, by the declared length or by counting."""

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
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
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                await self._too_large(send)

    async def _too_large(self, send: Send) -> None:
        await send_json(
            send, 413, graphql_error(f"Request body exceeds {self.max_bytes} bytes.", "BAD_USER_INPUT")
        )


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

    def __init__(self, status: int, message: str, code: str, reason: str,
                 headers: Iterable[tuple[bytes, bytes]] = (), **extensions: Any) -> None:
        super().__init__(reason)
        self.status = status
        self.body = graphql_error(message, code, **extensions)
        self.reason = reason
        self.headers = list(headers)


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
    from an address outside its allowlist is 403, over its per-minute limit 429.
    """

    PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/.well-known/jwks.json", "/metrics"})
    # sign-in flows run anonymously, whatever credential the browser still carries
    SIGN_IN_PREFIXES = ("/auth/sso/", "/auth/saml/")
    # "Bearer " and the largest token the verifier takes (8 KiB): anything longer is refused unparsed
    MAX_AUTHORIZATION_BYTES = len("Bearer ") + 8 * 1024

    def __init__(self, app: ASGIApp, *, authenticator: Authenticator, client_address: ClientAddress,
                 on_failure: Any = None, key_limiter: KeyRateLimiter | None = None,
                 last_used: LastUsedRecorder | None = None) -> None:
        self.app = app
        self.authenticator = authenticator
        self.client_address = client_address
        self.on_failure = on_failure
        self.key_limiter = key_limiter
        self.last_used = last_used

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.PUBLIC_PATHS:
            await self.app(scope, receive, send)
            return
        state = _state(scope)
        rid = state.get("request_id")
        ip = self.client_address(scope)
        state["client_ip"] = ip
        if scope["path"].startswith(self.SIGN_IN_PREFIXES):
            await self.app(scope, receive, send)
            return
        try:
            principal = await self._authenticate(scope, ip, rid)
        except Refused as exc:
            log.info("authz_fail", extra={"reason": exc.reason, "request_id": rid, "client_ip": ip})
            await send_json(send, exc.status, exc.body, headers=exc.headers)
            return
        except AuthenticationError as exc:
            log.info("authn_token_invalid", extra={"reason": exc.reason, "request_id": rid, "client_ip": ip})
            if self.on_failure is not None:
                self.on_failure(exc.reason)
            await send_json(
                send, 401, graphql_error("Invalid or missing credentials.", "UNAUTHENTICATED"),
                headers=[(b"www-authenticate", b'Bearer realm="portcullis", error="invalid_token"')],
            )
            return
        state["principal"] = principal
        await self.app(scope, receive, send)

    async def _authenticate(self, scope: Scope, ip: str | None, rid: str | None) -> Principal:
        if _credentials_in_url(scope):
            # C-077: refused even when valid; the value itself is never logged
            raise AuthenticationError("credential in the query string")
        authorization = _header(scope, b"authorization")
        api_keys = _header(scope, b"x-api-key")
        cookie = any(
            part.strip().startswith(SESSION_COOKIE + "=")
            for value in _header(scope, b"cookie")
            for part in value.decode("latin-1").split(";")
        )
        presented = len(authorization) + len(api_keys) + (1 if cookie else 0)
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
            return await self._api_key(match.group(1), ip, rid)
        if api_keys:
            if len(api_keys[0]) > self.MAX_AUTHORIZATION_BYTES:
                raise AuthenticationError("api key header too large")
            return await self._api_key(api_keys[0].decode("latin-1"), ip, rid)
        raise AuthenticationError("session cookies are not accepted by this gateway")

    async def _api_key(self, presented: str, ip: str | None, rid: str | None) -> Principal:
        try:
            info = await self.authenticator.api_key(presented)
        except ApiKeyRejected as exc:
            raise AuthenticationError(exc.reason) from None
        if not info.allows(ip):
            raise Refused(403, "This API key is not allowed from this address.", "FORBIDDEN",
                          "api key: address outside its allowlist")
        await self._check_rate(info)
        if self.last_used is not None:
            self.last_used.record(info.key_id)
        return info.principal(client_ip=ip, request_id=rid)

    async def _check_rate(self, info: ApiKeyInfo) -> None:
        limit = info.rate_limit_per_minute
        if limit is None or self.key_limiter is None:
            return
        wait = await self.key_limiter.hit("apikey:" + info.key_id, limit, 60.0)
        if wait is not None:
            retry = max(1, math.ceil(wait))
            raise Refused(429, "Rate limit exceeded for this API key.", "RATE_LIMITED", "api key: rate limited",
                          headers=[(b"retry-after", str(retry).encode())], retryAfter=retry)
