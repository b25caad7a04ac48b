"""The gateway's own tokens: RS256 access JWTs and opaque refresh tokens.

This is the only module that imports the JOSE library. python-jose accepts, with its defaults, tokens
without `exp` or `aud`, `iat` in the future, unknown `crit` headers and HMAC forged with a DER public key,
so every rule of RFC 8725 is enforced here before and after it runs:

- exactly one algorithm, RS256, and key *objects* from our own key ring (never bytes from a token);
- the header MUST carry `typ: at+jwt` (RFC 9068 §2.1) and a `kid` found in the ring by a dict lookup;
  `crit`, `jku`, `x5u`, `jwk`, `x5c` and `zip` headers are refused outright;
- `exp iat iss aud sub jti` MUST be present; `exp`, `iat`, `nbf` and `auth_time` MUST be NumericDates (integers);
- `auth_time` (RFC 9068 §2.2.1, OIDC Core §2): when the person last actively authenticated; a refresh keeps
  it, so freshness cannot be refreshed into a token; never after `iat`;
- `iss` and `aud` compared exactly; `iat` not in the future; `exp - iat` within the maximum lifetime;
- a token over 8 KiB is refused before anything is decoded.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jose import jwk, jws, jwt
from jose.exceptions import JOSEError

ALGORITHM = "RS256"
ACCESS_TYP = "at+jwt"
MAX_TOKEN_BYTES = 8 * 1024
FORBIDDEN_HEADERS = frozenset({"crit", "jku", "x5u", "jwk", "x5c", "zip", "enc"})
REQUIRED_CLAIMS = ("exp", "iat", "iss", "aud", "sub", "jti")
# matched with `fullmatch`: `$` would also accept a trailing newline, which base64 decoding then drops
_SEGMENT = re.compile(r"[A-Za-z0-9_-]+")
_SIGNATURE = re.compile(r"[A-Za-z0-9_-]*")


class TokenError(Exception):
    """An access token the gateway will not accept; `reason` is for logs, never for the caller."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def generate_private_key_pem() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def _b64(n: int) -> str:
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


@dataclass(frozen=True)
class SigningKey:
    kid: str
    public_jwk: dict[str, str]
    verifier: Any
    signer: Any | None

    @classmethod
    def from_pem(cls, pem: str) -> SigningKey:
        data = pem.encode()
        signer: Any | None = None
        try:
            private = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError):
            private = None
        if private is not None:
            if not isinstance(private, rsa.RSAPrivateKey):
                raise ValueError("signing keys must be RSA keys (RS256)")
            public = private.public_key()
            signer = jwk.construct(pem, ALGORITHM)
        else:
            loaded = serialization.load_pem_public_key(data)
            if not isinstance(loaded, rsa.RSAPublicKey):
                raise ValueError("signing keys must be RSA keys (RS256)")
            public = loaded
        if public.key_size < 2048:
            raise ValueError("RSA signing keys must have at least 2048 bits")
        numbers = public.public_numbers()
        e, n = _b64(numbers.e), _b64(numbers.n)
        # RFC 7638 thumbprint: the members in lexicographic order, no whitespace
        thumbprint_input = json.dumps({"e": e, "kty": "RSA", "n": n}, separators=(",", ":"), sort_keys=True)
        kid = base64.urlsafe_b64encode(hashlib.sha256(thumbprint_input.encode()).digest()).rstrip(b"=").decode()
        public_pem = public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode()
        verifier = jwk.construct(public_pem, ALGORITHM)
        return cls(
            kid=kid,
            public_jwk={"kty": "RSA", "use": "sig", "alg": ALGORITHM, "kid": kid, "n": n, "e": e},
            verifier=verifier,
            signer=signer,
        )


class VerifyingKeys(Protocol):
    """What checking a signature needs: a key by its `kid` (a `KeyRing`, or `PublicKeys`)."""

    def get(self, kid: str) -> SigningKey | None: ...


class PublicKeys:
    """The gateway's public keys alone (PEM), as someone outside it holds them: they verify, never sign."""

    def __init__(self, pems: Iterable[str]) -> None:
        self._by_kid = {k.kid: k for k in (SigningKey.from_pem(p) for p in pems)}

    def get(self, kid: str) -> SigningKey | None:
        return self._by_kid.get(kid)


class KeyRing:
    """The current signing key and the previous ones still accepted until their tokens expire."""

    def __init__(self, current_pem: str, previous_pems: Iterable[str] = ()) -> None:
        self.current = SigningKey.from_pem(current_pem)
        if self.current.signer is None:
            raise ValueError("the current signing key must be a private key")
        self.previous = tuple(SigningKey.from_pem(p) for p in previous_pems)
        self._by_kid: dict[str, SigningKey] = {k.kid: k for k in (*self.previous, self.current)}

    def get(self, kid: str) -> SigningKey | None:
        return self._by_kid.get(kid)

    def jwks(self) -> dict[str, list[dict[str, str]]]:
        return {"keys": [self.current.public_jwk, *(k.public_jwk for k in self.previous)]}


@dataclass(frozen=True, slots=True)
class AccessClaims:
    subject: str
    organization_id: str
    session_id: str
    jti: str
    issued_at: int
    expires_at: int
    auth_time: int | None = None


class AccessTokens:
    """Issues and verifies access tokens; verified tokens are remembered until they expire."""

    def __init__(
        self,
        keys: KeyRing,
        *,
        issuer: str,
        audience: str,
        lifetime_seconds: int = 900,
        max_lifetime_seconds: int = 3600,
        leeway_seconds: int = 30,
        cache_size: int = 10_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if lifetime_seconds > max_lifetime_seconds:
            raise ValueError("the access-token lifetime exceeds the maximum lifetime")
        if not 0 <= leeway_seconds <= 60:
            raise ValueError("the leeway must be between 0 and 60 seconds")
        self.keys = keys
        self.issuer = issuer
        self.audience = audience
        self.lifetime = lifetime_seconds
        self.max_lifetime = max_lifetime_seconds
        self.leeway = leeway_seconds
        self.clock = clock
        self._cache: OrderedDict[str, AccessClaims] = OrderedDict()
        self._cache_size = cache_size

    def issue(
        self, *, subject: str, organization_id: str, session_id: str, auth_time: float | None = None
    ) -> tuple[str, AccessClaims]:
        """A new access token; `auth_time` is when the person signed in (default: now, a sign-in)."""
        now = int(self.clock())
        claims = AccessClaims(
            subject=subject,
            organization_id=organization_id,
            session_id=session_id,
            jti=secrets.token_urlsafe(16),
            issued_at=now,
            expires_at=now + self.lifetime,
            auth_time=min(int(auth_time), now) if auth_time is not None else now,
        )
        payload = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": subject,
            "org": organization_id,
            "sid": session_id,
            "jti": claims.jti,
            "iat": now,
            "nbf": now,
            "exp": claims.expires_at,
            "auth_time": claims.auth_time,
        }
        key = self.keys.current
        assert key.signer is not None
        token = jwt.encode(payload, key.signer, algorithm=ALGORITHM, headers={"kid": key.kid, "typ": ACCESS_TYP})
        return token, claims

    def verify(self, token: str) -> AccessClaims:
        cached = self._cache.get(token)
        if cached is not None:
            if self.clock() >= cached.expires_at:
                self._cache.pop(token, None)
                raise TokenError("expired")
            self._cache.move_to_end(token)
            return cached
        claims = self._verify_uncached(token)
        self._cache[token] = claims
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return claims

    def _verify_uncached(self, token: str) -> AccessClaims:
        if len(token) > MAX_TOKEN_BYTES:
            raise TokenError("too large")
        parts = token.split(".")
        if len(parts) != 3:
            raise TokenError("malformed")
        head, body, signature = parts
        if not (_SEGMENT.fullmatch(head) and _SEGMENT.fullmatch(body) and _SIGNATURE.fullmatch(signature)):
            raise TokenError("malformed")
        if not signature:
            raise TokenError("no signature")
        try:
            header = jws.get_unverified_header(token)
        except (JOSEError, ValueError, TypeError):
            raise TokenError("malformed header") from None
        if not isinstance(header, dict):
            raise TokenError("malformed header")
        if FORBIDDEN_HEADERS & header.keys():
            raise TokenError("forbidden header")
        if header.get("alg") != ALGORITHM:
            raise TokenError("algorithm not allowed")
        if header.get("typ") != ACCESS_TYP:
            raise TokenError("wrong token type")
        kid = header.get("kid")
        if not isinstance(kid, str):
            raise TokenError("no kid")
        key = self.keys.get(kid)
        if key is None:
            raise TokenError("unknown kid")
        try:
            payload = jwt.decode(
                token,
                key.verifier,
                algorithms=[ALGORITHM],
                audience=self.audience,
                issuer=self.issuer,
                options={
                    "verify_signature": True,
                    "verify_aud": True,
                    "verify_iss": True,
                    "verify_sub": True,
                    "verify_jti": True,
                    # times are checked below, against the injectable clock, as NumericDates only
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                    "verify_at_hash": False,
                    **{f"require_{c}": True for c in REQUIRED_CLAIMS},
                },
            )
        except (JOSEError, ValueError, TypeError):
            raise TokenError("invalid signature or claims") from None
        return self._check_claims(payload)

    def _check_claims(self, payload: dict[str, Any]) -> AccessClaims:
        for name in ("exp", "iat"):
            if not _numeric_date(payload.get(name)):
                raise TokenError(f"{name} is not a NumericDate")
        if "nbf" in payload and not _numeric_date(payload["nbf"]):
            raise TokenError("nbf is not a NumericDate")
        if payload.get("iss") != self.issuer or payload.get("aud") != self.audience:
            raise TokenError("issuer or audience mismatch")
        now = self.clock()
        exp, iat = int(payload["exp"]), int(payload["iat"])
        # our own tokens: expired on or after `exp`, no leeway (the leeway absorbs skew between
        # gateway processes for `iat` and `nbf` only)
        if now >= exp:
            raise TokenError("expired")
        if iat > now + self.leeway:
            raise TokenError("issued in the future")
        if "nbf" in payload and int(payload["nbf"]) > now + self.leeway:
            raise TokenError("not yet valid")
        if exp - iat > self.max_lifetime or exp <= iat:
            raise TokenError("lifetime too long")
        auth_time = payload.get("auth_time")
        if auth_time is not None and (not _numeric_date(auth_time) or int(auth_time) > iat):
            raise TokenError("auth_time is not a NumericDate before iat")
        names = ("sub", "org", "sid", "jti")
        values = [v for v in (payload.get(n) for n in names) if isinstance(v, str) and v]
        if len(values) != len(names):
            raise TokenError("missing subject, organization or session")
        sub, org, sid, jti = values
        return AccessClaims(
            subject=sub,
            organization_id=org,
            session_id=sid,
            jti=jti,
            issued_at=iat,
            expires_at=exp,
            auth_time=int(auth_time) if auth_time is not None else None,
        )


def _numeric_date(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


REFRESH_PREFIX = "ptr_"


def new_refresh_token() -> str:
    """An opaque refresh token: 256 bits from the CSPRNG."""
    return REFRESH_PREFIX + secrets.token_urlsafe(32)


def hash_opaque_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


CHECKPOINT_TYP = "portcullis-audit-checkpoint"


def sign_document(keys: KeyRing, document: dict[str, Any]) -> str:
    """A compact JWS (RS256, the current key, typ `portcullis-audit-checkpoint`) over the document's
    canonical JSON: how audit checkpoints are signed outside the database."""
    key = keys.current
    assert key.signer is not None
    payload = json.dumps(document, sort_keys=True, separators=(",", ":")).encode()
    return str(jws.sign(payload, key.signer, headers={"kid": key.kid, "typ": CHECKPOINT_TYP}, algorithm=ALGORITHM))


def verify_document(keys: VerifyingKeys, token: str) -> dict[str, Any]:
    """The document `sign_document` signed, if one of the ring's keys (current or previous) did."""
    try:
        header = jws.get_unverified_header(token)
    except (JOSEError, ValueError, TypeError):
        raise TokenError("malformed") from None
    if (
        not isinstance(header, dict)
        or header.get("alg") != ALGORITHM
        or header.get("typ") != CHECKPOINT_TYP
        or FORBIDDEN_HEADERS & header.keys()
    ):
        raise TokenError("not a checkpoint signature")
    kid = header.get("kid")
    key = keys.get(kid) if isinstance(kid, str) else None
    if key is None:
        raise TokenError("unknown kid")
    try:
        payload = jws.verify(token, key.verifier, algorithms=[ALGORITHM])
        document = json.loads(payload)
    except (JOSEError, ValueError, TypeError):
        raise TokenError("invalid signature") from None
    if not isinstance(document, dict):
        raise TokenError("not a document")
    return document
