"""The check every example upstream makes before it answers: the gateway's context token, verified here.

The gateway forwards each request with `Authorization: Bearer <context token>`, an RS256 JWT signed with a key
of its JWKS (contract.md, "Context token"). The examples share this verifier so that each of them refuses the
same tokens for the same reasons, whatever it serves (GraphQL, REST) once a token is accepted.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import urllib.request
from collections.abc import Callable, Mapping
from typing import Any

from jose import jwk, jwt
from jose.exceptions import JOSEError
from starlette.concurrency import run_in_threadpool

ALGORITHM = "RS256"
CONTEXT_TYP = "portcullis-context+jwt"
MAX_LIFETIME = 60
JWKS_REFETCH_SECONDS = 60
UNAUTHENTICATED = {"errors": [{"message": "invalid context token", "extensions": {"code": "UNAUTHENTICATED"}}]}
log = logging.getLogger("examples.context_tokens")


class ContextTokenVerifier:
    """Checks the gateway's context tokens against its JWKS: fetched at first use, and again (at most once a
    minute) when a token names a key not in hand, as after the gateway rotates its signing key."""

    def __init__(
        self,
        *,
        jwks_url: str | None,
        jwks: Mapping[str, Any] | None,
        issuer: str,
        audience: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if (jwks_url is None) == (jwks is None):
            raise ValueError("give exactly one of jwks_url and jwks")
        if jwks_url is not None and not jwks_url.startswith(("http://", "https://")):
            raise ValueError("jwks_url must be an http(s) URL")
        self.jwks_url, self.issuer, self.audience, self.clock = jwks_url, issuer, audience, clock
        self._keys = self._load(jwks) if jwks is not None else {}
        self._fetched_at = -float("inf")
        self._lock = asyncio.Lock()

    @staticmethod
    def _load(jwks: Mapping[str, Any]) -> dict[str, Any]:
        return {k["kid"]: jwk.construct(k, ALGORITHM) for k in jwks["keys"] if k.get("kty") == "RSA"}

    def _fetch(self) -> dict[str, Any]:
        assert self.jwks_url is not None
        with urllib.request.urlopen(self.jwks_url, timeout=5) as response:  # noqa: S310 (http(s) only, see __init__)
            return self._load(json.load(response))

    async def _key(self, kid: str) -> Any:
        if kid not in self._keys and self.jwks_url is not None:
            async with self._lock:
                if kid not in self._keys and self.clock() - self._fetched_at >= JWKS_REFETCH_SECONDS:
                    self._fetched_at = self.clock()
                    try:
                        self._keys = await run_in_threadpool(self._fetch)
                    except (OSError, ValueError, KeyError, TypeError, JOSEError) as exc:
                        log.warning("cannot fetch the gateway's JWKS from %s: %s", self.jwks_url, exc)
        return self._keys.get(kid)

    async def verify(self, authorization: str) -> dict[str, Any] | None:
        """The claims of a valid context token for this service, or None for anything else."""
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token:
            return None
        try:
            header = jwt.get_unverified_header(token)
            kid = header.get("kid")
            if header.get("alg") != ALGORITHM or header.get("typ") != CONTEXT_TYP or not isinstance(kid, str):
                return None
            key = await self._key(kid)
            if key is None:
                return None
            claims = jwt.decode(
                token,
                key,
                algorithms=[ALGORITHM],
                audience=self.audience,
                issuer=self.issuer,
                options={f"require_{c}": True for c in ("exp", "iat", "aud", "iss", "sub")},
            )
        except (JOSEError, ValueError, TypeError):  # python-jose raises the last two for malformed claims
            return None
        exp, iat, org, scope = (claims.get(c) for c in ("exp", "iat", "org", "scope"))
        if claims["aud"] != self.audience or not (isinstance(exp, int) and isinstance(iat, int)):
            return None  # a list `aud` that merely contains ours, or times that are not NumericDates
        if not 0 < exp - iat <= MAX_LIFETIME or not (isinstance(org, str) and org and isinstance(scope, str)):
            return None
        return claims
