"""Cross-origin requests from browsers (docs/browsers.md): `PORTCULLIS_CORS_ALLOWED_ORIGINS`.

Starlette's `CORSMiddleware` answers preflights and adds the response headers; `CorsMiddleware` puts it in
front of the edge only for the origins allowed, so that a page of any other origin gets no CORS header at
all (its preflight a 403, its other requests the gateway's answer as if no CORS existed) and a preflight
never reaches authentication or admission: a browser sends it without credentials, so it would be counted
as an anonymous request. The actual request that follows is authenticated and admitted like any other.

Credentials (the session cookie) ride only with exact origins: with `*`, any page could act with the
user's cookie, so `*` is for Bearer tokens and API keys only (`Access-Control-Allow-Credentials` absent).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

VARIABLE = "PORTCULLIS_CORS_ALLOWED_ORIGINS"
VALID = "an origin is scheme://host[:port], like https://app.example.com or http://127.0.0.1:5173"
ANY = "*"

# what a frontend sends: its credential, the CSRF token of a cookie session, the JSON body, its request id
ALLOW_HEADERS = ("authorization", "x-api-key", "x-csrf-token", "content-type", "accept", "x-request-id", "traceparent")
# what a frontend reads: the request id (to quote), the limits and when to retry, why a credential failed
EXPOSE_HEADERS = ("x-request-id", "ratelimit", "ratelimit-policy", "retry-after", "www-authenticate")
# GraphQL needs GET and POST; the HTTP upstreams' routes may take the others (docs/upstreams.md)
ALLOW_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")
_DEFAULT_PORTS = {"http": 80, "https": 443}


class CorsSettingError(RuntimeError):
    """A value of the CORS settings that cannot be used; the message names the variable."""


def canonical_origin(value: str) -> str:
    """`value` when it is an origin as browsers send it in `Origin` (RFC 6454: lowercase scheme and host,
    no default port, nothing after the authority); ValueError saying what is wrong otherwise."""
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:
        raise ValueError(f"{value!r} is not an origin: {VALID}") from None
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
        raise ValueError(f"{value!r} is not an origin: {VALID}")
    if parts.username is not None or parts.path or parts.query or parts.fragment or "?" in value or "#" in value:
        raise ValueError(f"{value!r} is not an origin (no path, not even '/', no query, no user): {VALID}")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    canonical = f"{parts.scheme}://{host}" + (
        f":{port}" if port is not None and port != _DEFAULT_PORTS[parts.scheme] else ""
    )
    if value != canonical:
        raise ValueError(f"{value!r} is not written as browsers send it: use {canonical!r} ({VALID})")
    return canonical


@dataclass(frozen=True)
class CorsPolicy:
    origins: tuple[str, ...]  # exact origins, or ("*",)
    credentials: bool
    max_age_seconds: int

    @property
    def any_origin(self) -> bool:
        return self.origins == (ANY,)


def cors_policy(origins: Iterable[str], credentials: bool | None, max_age_seconds: int) -> CorsPolicy | None:
    """The policy of the settings (None: no origin allowed, no CORS); CorsSettingError for a value that
    cannot be used. `credentials` None means: with exact origins, yes; with `*`, no."""
    listed = [o.strip() for o in origins if o.strip()]
    if not listed:
        return None
    if ANY in listed:
        if len(listed) > 1:
            raise CorsSettingError(f"{VARIABLE}: '*' stands alone (any origin) or is left out; {VALID}")
        if credentials:
            raise CorsSettingError(
                f"{VARIABLE}='*' cannot go with PORTCULLIS_CORS_ALLOW_CREDENTIALS=true: any page could act with "
                "the user's session cookie; list the exact origins instead"
            )
        return CorsPolicy((ANY,), False, max_age_seconds)
    checked = []
    for origin in listed:
        try:
            checked.append(canonical_origin(origin))
        except ValueError as exc:
            raise CorsSettingError(f"{VARIABLE}: {exc}") from None
    return CorsPolicy(tuple(dict.fromkeys(checked)), credentials is not False, max_age_seconds)


class CorsMiddleware:
    """Starlette's `CORSMiddleware` for the allowed origins; requests of other origins pass by it untouched
    but for `Vary: Origin` (a shared cache must not hand one origin's answer to another), and their
    preflights are refused with 403."""

    def __init__(self, app: ASGIApp, *, policy: CorsPolicy) -> None:
        self.app = app
        self.policy = policy
        self.allowed = frozenset(policy.origins)
        self.cors = CORSMiddleware(
            app,
            allow_origins=policy.origins,
            allow_methods=ALLOW_METHODS,
            allow_headers=ALLOW_HEADERS,
            allow_credentials=policy.credentials,
            expose_headers=EXPOSE_HEADERS,
            max_age=policy.max_age_seconds,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        origin = next((v for k, v in scope["headers"] if k == b"origin"), None)
        if origin is None:
            await self.app(scope, receive, send)
            return
        if self.policy.any_origin or origin.decode("latin-1") in self.allowed:
            await self.cors(scope, receive, send)
            return
        preflight = scope["method"] == "OPTIONS" and any(
            k == b"access-control-request-method" for k, _ in scope["headers"]
        )
        if preflight:
            await _refuse_preflight(send)
            return

        async def vary(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), (b"vary", b"Origin")]
            await send(message)

        await self.app(scope, receive, vary)


async def _refuse_preflight(send: Send) -> None:
    body = (
        b'{"errors":[{"message":"This origin is not allowed to call the gateway.","extensions":{"code":"FORBIDDEN"}}]}'
    )
    await send(
        {
            "type": "http.response.start",
            "status": 403,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"vary", b"Origin"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
