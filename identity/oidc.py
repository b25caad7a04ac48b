"""OpenID Connect relying party: authorization code with PKCE, through Authlib's Starlette client.

What Authlib leaves to its caller, and this module does:

- The discovery document is fetched from `<issuer>/.well-known/openid-configuration` and its `issuer`
  must equal the configured one exactly (OIDC Discovery §4.3, ASVS 10.5.3); so must every endpoint be
  https (http only on a loopback address, and only outside prod).
- Algorithms are pinned (`RS256`, `ES256`, `PS256` by default): the metadata's
  `id_token_signing_alg_values_supported` is overwritten, so `none` and HMAC never verify.
- `iss` and `aud` are checked with explicit claim options, not the metadata's; with several audiences
  `azp` must be present and be the client id (OIDC Core §3.1.3.7, items 3 to 5).
- `state` is single-use: the transaction record is taken atomically (Redis GETDEL, or a dict pop in
  one process) before anything else, and Authlib also wants the marker it left in the browser's own
  SSO cookie, so a `state` from another browser fails (RFC 6749 §10.12).
- An unknown `kid` makes Authlib refetch the JWKS once; such forced refetches are limited to one per
  interval and connection, so random `kid`s cannot turn the gateway into an amplifier against the IdP.
- RFC 9207: an `iss` in the authorization response must be the connection's issuer (mix-up defence).
- The userinfo `sub` must equal the ID token's `sub` (OIDC Core §5.3.2).
- Every request to the provider (discovery, token, JWKS, userinfo) goes through the outbound guard
  (`identity.outbound`, C-132), and the endpoints a discovery document names are checked when it loads:
  a provider cannot point the gateway at its own network, at configuration or at sign-in.

Every refusal is an `OidcError` whose `reason` (`oidc_*`) goes to logs and audit, never to the browser.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from authlib.integrations.starlette_client import StarletteIntegration, StarletteOAuth2App
from starlette.requests import Request

from identity.outbound import OutboundPolicy, OutboundRefused
from identity.sso import ExternalIdentity, amr_second_factor

DEFAULT_ALGORITHMS: tuple[str, ...] = ("RS256", "ES256", "PS256")
ALLOWED_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256", "PS384", "PS512"})
DISCOVERY_PATH = "/.well-known/openid-configuration"
LEEWAY_SECONDS = 60
ADDRESS_REFUSED = "oidc_address_refused"
# the endpoints the gateway itself calls (the browser, not the gateway, visits the authorization endpoint)
_FETCHED_ENDPOINTS = ("token_endpoint", "jwks_uri", "userinfo_endpoint")
_PENDING = "sso:pending:"


class OidcError(Exception):
    """A refused login or an unusable provider; `reason` is for logs and audit only."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def check_issuer_url(issuer: str, *, allow_loopback_http: bool) -> str:
    """The issuer as configured (no normalisation: it is compared exactly), or ValueError."""
    if len(issuer) > 500 or any(c.isspace() or ord(c) < 32 for c in issuer):
        raise ValueError("issuer must be a URL of at most 500 characters")
    parts = urlsplit(issuer)
    if parts.query or parts.fragment or parts.username or parts.password or not parts.hostname:
        raise ValueError("issuer must be an https URL without query, fragment or credentials")
    if parts.scheme == "https":
        return issuer
    if parts.scheme == "http" and allow_loopback_http and _is_loopback(parts.hostname):
        return issuer
    raise ValueError("issuer must be https (http only for a loopback address outside prod)")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True, slots=True)
class OidcConnectionConfig:
    """One tenant's provider, as the relying party needs it (the client secret decrypted)."""

    connection_id: str
    version: str  # changes whenever the connection is updated: the client is rebuilt
    issuer: str
    client_id: str
    client_secret: str
    scopes: tuple[str, ...] = ("openid", "email", "profile")
    groups_claim: str = "groups"
    algorithms: tuple[str, ...] = DEFAULT_ALGORITHMS


@dataclass(frozen=True, slots=True)
class PendingLogin:
    """What the callback needs from the start of the flow, besides what Authlib keeps."""

    connection_id: str
    return_to: str
    # the account whose holder asked to link this provider (resolvers/sso_login.py `start_sso_link`)
    link_user_id: str | None = None


class TransactionStore:
    """Short-lived values shared by every process: Redis when configured, else this process's memory.

    Also Authlib's `cache` (get/set/delete). `take` reads and deletes in one step, so a value is
    spent once even when two requests race for it.
    """

    MAX_LOCAL_ENTRIES = 20_000

    def __init__(self, redis: Any = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.redis = redis
        self.clock = clock
        self._local: dict[str, tuple[float, str]] = {}

    async def get(self, key: str) -> str | None:
        if self.redis is not None:
            value = await self.redis.get(key)
            return value.decode() if isinstance(value, bytes) else value
        entry = self._local.get(key)
        if entry is None or entry[0] <= self.clock():
            self._local.pop(key, None)
            return None
        return entry[1]

    async def set(self, key: str, value: str, expires: int | None = None) -> None:
        ttl = int(expires or 600)
        if self.redis is not None:
            await self.redis.set(key, value, ex=ttl)
            return
        now = self.clock()
        if len(self._local) >= self.MAX_LOCAL_ENTRIES:
            live = sorted((v[0], k) for k, v in self._local.items() if v[0] > now)
            # still full of live entries (a flood of started sign-ins): the oldest half goes
            keep = live[len(live) // 2 :] if len(live) >= self.MAX_LOCAL_ENTRIES else live
            self._local = {k: self._local[k] for _, k in keep}
        self._local[key] = (now + ttl, value)

    async def delete(self, key: str) -> None:
        if self.redis is not None:
            await self.redis.delete(key)
            return
        self._local.pop(key, None)

    async def take(self, key: str) -> str | None:
        if self.redis is not None:
            value = await self.redis.getdel(key)
            return value.decode() if isinstance(value, bytes) else value
        entry = self._local.pop(key, None)
        if entry is None or entry[0] <= self.clock():
            return None
        return entry[1]


class _RelyingPartyApp(StarletteOAuth2App):  # type: ignore[misc]
    """Authlib's client with forced JWKS refetches limited to one per interval."""

    refetch_interval: float = 60.0
    last_forced_refetch: float | None = None
    jwks_fetches: int = 0

    async def fetch_jwk_set(self, force: bool = False) -> Any:
        if force:
            now = time.monotonic()
            if self.last_forced_refetch is not None and now - self.last_forced_refetch < self.refetch_interval:
                raise OidcError("oidc_jwks_refetch_limited")
            self.last_forced_refetch = now
            self.jwks_fetches += 1
        elif "jwks" not in self.server_metadata:
            self.jwks_fetches += 1
        return await super().fetch_jwk_set(force=force)


class _Integration(StarletteIntegration):  # type: ignore[misc]
    expires_in = 600  # state, nonce and verifier live at most 10 minutes (security.md C-040)


@dataclass
class _Entry:
    version: str
    app: _RelyingPartyApp
    loaded_at: float


@dataclass
class OidcRelyingParty:
    """The gateway as an OIDC client of every tenant's provider (one Authlib client per connection)."""

    store: TransactionStore
    allow_loopback_http: bool = False
    outbound: OutboundPolicy = field(default_factory=OutboundPolicy)
    http_timeout_seconds: float = 10.0
    jwks_refetch_interval_seconds: float = 60.0
    state_ttl_seconds: int = 600
    metadata_ttl_seconds: float = 3600.0
    _transport: Any = None
    _entries: dict[str, _Entry] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._transport = self.outbound.transport()
        # Authlib logs the PKCE verifier at DEBUG: never, whatever the gateway's own level
        logging.getLogger("authlib").setLevel(max(logging.INFO, logging.getLogger("authlib").level))

    def _new_app(self, config: OidcConnectionConfig) -> _RelyingPartyApp:
        # a client of its own per load, not one from Authlib's `OAuth` registry (which keeps the first client
        # registered under a name): what `OAuth.create_client` builds, without the registry
        app = _RelyingPartyApp(
            _Integration(config.connection_id, self.store),
            config.connection_id,
            client_id=config.client_id,
            client_secret=config.client_secret,
            server_metadata_url=config.issuer.rstrip("/") + DISCOVERY_PATH,
            client_kwargs={
                "scope": " ".join(config.scopes),
                "code_challenge_method": "S256",
                "timeout": self.http_timeout_seconds,
                "transport": self._transport,
            },
        )
        app.refetch_interval = self.jwks_refetch_interval_seconds
        return app

    async def app(self, config: OidcConnectionConfig) -> _RelyingPartyApp:
        """The connection's client with its provider's metadata loaded and checked."""
        entry = self._entries.get(config.connection_id)
        now = time.monotonic()
        if entry is None or entry.version != config.version or now - entry.loaded_at > self.metadata_ttl_seconds:
            entry = _Entry(config.version, self._new_app(config), now)
            try:
                await self._load_metadata(entry.app, config)
            except OidcError:
                raise
            except OutboundRefused:
                raise OidcError(ADDRESS_REFUSED) from None
            except Exception:
                raise OidcError("oidc_discovery_failed") from None
            self._entries[config.connection_id] = entry
        return entry.app

    async def _load_metadata(self, app: _RelyingPartyApp, config: OidcConnectionConfig) -> None:
        metadata = await app.load_server_metadata()
        if metadata.get("issuer") != config.issuer:
            # C-049: the document at the issuer's URL speaks for another issuer
            raise OidcError("oidc_discovery_issuer_mismatch")
        for key in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
            if not isinstance(metadata.get(key), str):
                raise OidcError("oidc_discovery_incomplete")
        for key in ("authorization_endpoint", "token_endpoint", "jwks_uri", "userinfo_endpoint"):
            value = metadata.get(key)
            if value is None:
                continue
            try:
                check_issuer_url(str(value).split("?")[0], allow_loopback_http=self.allow_loopback_http)
            except ValueError:
                raise OidcError("oidc_discovery_insecure_endpoint") from None
        for key in _FETCHED_ENDPOINTS:
            if metadata.get(key) is not None:
                try:
                    await self.outbound.check_url(str(metadata[key]))
                except OutboundRefused:
                    raise OidcError(ADDRESS_REFUSED) from None
        supported = metadata.get("id_token_signing_alg_values_supported") or ["RS256"]
        pinned = [a for a in config.algorithms if a in ALLOWED_ALGORITHMS and a in supported]
        if not pinned:
            raise OidcError("oidc_no_common_algorithm")
        metadata["id_token_signing_alg_values_supported"] = pinned

    async def check_provider(self, config: OidcConnectionConfig) -> None:
        """Fetch and check the discovery document once (when a connection is configured)."""
        app = self._new_app(config)
        try:
            await self._load_metadata(app, config)
        except OidcError:
            raise
        except OutboundRefused:
            raise OidcError(ADDRESS_REFUSED) from None
        except Exception:
            raise OidcError("oidc_discovery_failed") from None

    async def begin(
        self,
        request: Request,
        config: OidcConnectionConfig,
        *,
        redirect_uri: str,
        return_to: str,
        link_user_id: str | None = None,
    ) -> str:
        """The provider's authorization URL; `state`, `nonce` and the PKCE verifier are kept for the callback."""
        app = await self.app(config)
        rv = await app.create_authorization_url(redirect_uri)
        state = rv["state"]
        await app.save_authorize_data(request, redirect_uri=redirect_uri, **rv)
        pending = json.dumps(
            {"connection_id": config.connection_id, "return_to": return_to, "link_user_id": link_user_id}
        )
        await self.store.set(_PENDING + state, pending, self.state_ttl_seconds)
        return str(rv["url"])

    async def take_pending(self, state: str | None) -> PendingLogin:
        """The login that `state` started, spent: a second use of the same `state` finds nothing."""
        if not state:
            raise OidcError("oidc_state_missing")
        if len(state) > 200:
            raise OidcError("oidc_state_unknown")
        raw = await self.store.take(_PENDING + state)
        if raw is None:
            raise OidcError("oidc_state_unknown")
        data = json.loads(raw)
        link = data.get("link_user_id")
        return PendingLogin(
            connection_id=str(data["connection_id"]),
            return_to=str(data["return_to"]),
            link_user_id=str(link) if link else None,
        )

    async def finish(self, request: Request, config: OidcConnectionConfig) -> ExternalIdentity:
        """Check the authorization response, redeem the code and validate what the provider says."""
        app = await self.app(config)
        params = request.query_params
        if params.get("error"):
            await app.framework.clear_state_data(request.session, params.get("state"))
            raise OidcError("oidc_provider_error")
        iss = params.get("iss")
        if iss is not None and iss != config.issuer:
            raise OidcError("oidc_response_issuer_mismatch")  # C-048, RFC 9207 §2.4
        if iss is None and app.server_metadata.get("authorization_response_iss_parameter_supported") is True:
            raise OidcError("oidc_response_issuer_missing")
        if not params.get("code"):
            raise OidcError("oidc_code_missing")
        claims_options = {
            "iss": {"essential": True, "value": config.issuer},
            "aud": {"essential": True, "value": config.client_id},
            "sub": {"essential": True},
            "iat": {"essential": True},
            "exp": {"essential": True},
        }
        try:
            token = await app.authorize_access_token(request, claims_options=claims_options, leeway=LEEWAY_SECONDS)
        except OidcError:
            raise
        except Exception as exc:
            raise OidcError(_failure_reason(exc)) from None
        claims = token.get("userinfo") if isinstance(token, Mapping) else None
        if not token.get("id_token") or not isinstance(claims, Mapping):
            raise OidcError("oidc_id_token_missing")
        subject = _checked_id_token(claims, config)
        userinfo: Mapping[str, Any] = {}
        if app.server_metadata.get("userinfo_endpoint") and token.get("access_token"):
            try:
                userinfo = await app.userinfo(token=token)
            except OutboundRefused:
                raise OidcError(ADDRESS_REFUSED) from None
            except Exception:
                raise OidcError("oidc_userinfo_failed") from None
            if userinfo.get("sub") != subject:
                raise OidcError("oidc_userinfo_sub_mismatch")  # C-050
        merged = {**userinfo, **claims}
        return ExternalIdentity(
            protocol="oidc",
            issuer=config.issuer,
            subject=subject,
            email=_text(merged.get("email"), 320),
            email_verified=merged.get("email_verified") is True,
            name=_text(merged.get("name"), 200),
            groups=_groups(merged.get(config.groups_claim)),
            second_factor=amr_second_factor(claims.get("amr")),
        )


def _checked_id_token(claims: Mapping[str, Any], config: OidcConnectionConfig) -> str:
    """What Authlib's validation leaves open: a usable `sub`, `iat` not in the future, `aud`/`azp`."""
    subject = claims.get("sub")
    if not isinstance(subject, str) or not subject or len(subject) > 255:
        raise OidcError("oidc_id_token_sub")
    iat = claims.get("iat")
    if not isinstance(iat, int | float) or iat > time.time() + LEEWAY_SECONDS:
        raise OidcError("oidc_id_token_iat")
    aud = claims.get("aud")
    audiences = [aud] if isinstance(aud, str) else list(aud) if isinstance(aud, list) else []
    if config.client_id not in audiences:
        raise OidcError("oidc_id_token_aud")
    azp = claims.get("azp")
    if (len(audiences) > 1 and azp is None) or (azp is not None and azp != config.client_id):
        raise OidcError("oidc_id_token_azp")
    return subject


def _text(value: Any, limit: int) -> str | None:
    if not isinstance(value, str) or not value or len(value) > limit or "\x00" in value:
        return None
    return value


def _groups(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, Sequence):
        return ()
    return tuple(g for g in value[:200] if isinstance(g, str) and 0 < len(g) <= 256)


def _failure_reason(exc: Exception) -> str:
    if isinstance(exc, OutboundRefused):
        return ADDRESS_REFUSED
    name = type(exc).__name__
    if name == "MismatchingStateError":
        return "oidc_state_mismatch"
    if name == "OAuthError":
        return "oidc_token_request_failed"
    if "nonce" in str(exc).lower():
        return "oidc_id_token_nonce"
    if name in {
        "BadSignatureError",
        "InvalidKeyIdError",
        "UnsupportedAlgorithmError",
        "DecodeError",
        "InvalidHeaderValueError",
        "MissingKeyError",
        "UnsupportedKeyAlgorithmError",
    }:
        return "oidc_id_token_signature"
    if name in {"InvalidClaimError", "MissingClaimError", "ExpiredTokenError", "InvalidTokenError"}:
        return "oidc_id_token_claims"
    return "oidc_id_token_invalid"
