"""Context tokens: what an upstream service is told about the caller, instead of the caller's credential.

A short-lived RS256 JWT signed with the gateway's current key (the JWKS at `/.well-known/jwks.json`), with
`typ: portcullis-context+jwt`, `aud` the upstream's name and the caller's identity (contract.md, "Context
token"). Signing is the expensive part of a forward, so a token is reused for the same caller, upstream and
claims while more than half of its life is left: on the hot path a forward looks a token up, it does not sign.
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from jose import jwt

from authz import Principal, PrincipalKind
from identity.tokens import ALGORITHM, KeyRing

CONTEXT_TYP = "portcullis-context+jwt"
MAX_CONTEXT_LIFETIME = 60


@dataclass(frozen=True, slots=True)
class _Issued:
    token: str
    refresh_at: float


class ContextTokens:
    def __init__(
        self,
        keys: KeyRing,
        *,
        issuer: str,
        lifetime_seconds: int = MAX_CONTEXT_LIFETIME,
        cache_size: int = 10_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not 1 <= lifetime_seconds <= MAX_CONTEXT_LIFETIME:
            raise ValueError(f"a context token lives between 1 and {MAX_CONTEXT_LIFETIME} seconds")
        self.keys = keys
        self.issuer = issuer
        self.lifetime = lifetime_seconds
        self.clock = clock
        self._cache: OrderedDict[tuple[object, ...], _Issued] = OrderedDict()
        self._cache_size = cache_size

    def token_for(self, principal: Principal, audience: str, named: Iterable[str] | frozenset[str]) -> str:
        """The token for `principal` calling `audience`, whose schema names the permissions in `named`:
        the token's `scope` holds the caller's permissions among those, never more."""
        scope = " ".join(sorted(p for p in principal.effective_permissions if p in named))
        key = (
            audience,
            principal.kind,
            principal.subject_id,
            principal.organization_id,
            principal.session_id,
            principal.plan,
            principal.roles,
            principal.auth_method,
            principal.client_ip,
            scope,
            self.keys.current.kid,
        )
        now = self.clock()
        issued = self._cache.get(key)
        if issued is not None and now < issued.refresh_at:
            self._cache.move_to_end(key)
            return issued.token
        token = self._sign(principal, audience, scope, int(now))
        self._cache[key] = _Issued(token, now + self.lifetime / 2)
        self._cache.move_to_end(key)
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return token

    def _sign(self, principal: Principal, audience: str, scope: str, now: int) -> str:
        payload = {
            "iss": self.issuer,
            "aud": audience,
            "sub": principal.subject_id,
            "org": principal.organization_id,
            "plan": principal.plan,
            "roles": list(principal.roles),
            "scope": scope,
            "amr": [principal.auth_method.value],
            # the session, or for an API key the key itself
            "sid": principal.session_id or (principal.subject_id if principal.kind is PrincipalKind.API_KEY else None),
            "client_ip": principal.client_ip,
            # the request the token was minted for; a reused token's later requests are named by X-Request-ID
            "rid": principal.request_id,
            "kind": principal.kind.value,
            "jti": secrets.token_urlsafe(12),
            "iat": now,
            "nbf": now,
            "exp": now + self.lifetime,
        }
        key = self.keys.current
        assert key.signer is not None
        return str(jwt.encode(payload, key.signer, algorithm=ALGORITHM, headers={"kid": key.kid, "typ": CONTEXT_TYP}))
