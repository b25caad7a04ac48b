"""Context tokens for the example services' tests: minted the way the gateway mints them
(identity/context_tokens.py), or forged so that each refused token differs from an accepted one of the same
service by the one property under test (`REFUSED` names them; `forged` makes them).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from jose import jwt

from authz import AuthMethod, Principal, PrincipalKind
from identity.context_tokens import ContextTokens
from identity.tokens import KeyRing, generate_private_key_pem

ISSUER = "http://127.0.0.1:8000"
DROP = object()

REFUSED = [
    "missing",
    "garbage",
    "other key, same kid",
    "expired",
    "HS256 with the public key",
    "alg none",
    "another upstream's audience",
    "audience list",
    "lives an hour",
    "no exp",
    "exp null",
    "exp a string",
    "other issuer",
    "typ at+jwt",
    "no typ",
    "unknown kid",
]


class Mint(Protocol):
    """A service's way to mint: an accepted token for `org`, or with the audience, issuer or clock changed."""

    def __call__(
        self, keys: KeyRing, org: str = ..., *, audience: str = ..., issuer: str = ..., clock: Callable[[], float] = ...
    ) -> str: ...


def principal(org: str, permissions: Iterable[str]) -> Principal:
    return Principal(
        kind=PrincipalKind.USER,
        subject_id="u1",
        organization_id=org,
        roles=("manager",),
        permissions=frozenset(permissions),
        auth_method=AuthMethod.PASSWORD,
        session_id="s1",
        plan="professional",
        client_ip="203.0.113.7",
        request_id="r1",
    )


def mint_token(
    keys: KeyRing,
    org: str,
    *,
    audience: str,
    named: frozenset[str],
    permissions: Iterable[str],
    issuer: str = ISSUER,
    clock: Callable[[], float] = time.time,
) -> str:
    """The gateway's token for a manager of `org` holding `permissions`, calling the upstream `audience` whose
    rules name the permissions in `named`."""
    return ContextTokens(keys, issuer=issuer, clock=clock).token_for(principal(org, permissions), audience, named)


def b64u(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def unsigned(token: str, **header: Any) -> str:
    """The token's header (with `header` merged, a member set to DROP left out) and claims, as a signing input
    to sign anew."""
    head = {k: v for k, v in {**jwt.get_unverified_header(token), **header}.items() if v is not DROP}
    claims = jwt.get_unverified_claims(token)
    return f"{b64u(json.dumps(head).encode())}.{b64u(json.dumps(claims).encode())}"


def resign(token: str, signer: Any, claims: dict[str, Any] | None = None, **header: Any) -> str:
    """The token's claims (with `claims` merged, a claim set to DROP left out) signed RS256 by `signer`, with
    `header` merged into its header."""
    head = {**jwt.get_unverified_header(token), **header}
    payload = {k: v for k, v in {**jwt.get_unverified_claims(token), **(claims or {})}.items() if v is not DROP}
    return jwt.encode(payload, signer, algorithm="RS256", headers=head)


def forged(keys: KeyRing, how: str, mint: Mint) -> str | None:
    """The token `how` names (one of REFUSED), from the accepted token `mint` makes; None for no token at all."""
    token = mint(keys)
    audience = jwt.get_unverified_claims(token)["aud"]
    other = "billing" if audience == "orders" else "orders"
    public_pem = keys.current.verifier.to_pem()
    signer = keys.current.signer
    assert signer is not None
    match how:
        case "missing":
            return None
        case "garbage":
            return "not.a.jwt"
        case "other key, same kid":
            return resign(token, KeyRing(generate_private_key_pem()).current.signer)
        case "expired":
            return mint(keys, clock=lambda: time.time() - 120)
        case "HS256 with the public key":
            signing_input = unsigned(token, alg="HS256")
            return f"{signing_input}.{b64u(hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest())}"
        case "alg none":
            return f"{unsigned(token, alg='none')}."
        case "another upstream's audience":
            return mint(keys, audience=other)
        case "audience list":
            return resign(token, signer, {"aud": [audience, other]})
        case "lives an hour":
            return resign(token, signer, {"exp": jwt.get_unverified_claims(token)["iat"] + 3600})
        case "no exp":
            return resign(token, signer, {"exp": DROP})
        case "exp null":
            return resign(token, signer, {"exp": None})
        case "exp a string":
            return resign(token, signer, {"exp": str(jwt.get_unverified_claims(token)["exp"])})
        case "other issuer":
            return mint(keys, issuer="https://elsewhere.example")
        case "typ at+jwt":
            return resign(token, signer, typ="at+jwt")
        case "no typ":  # signed here: python-jose's encode would add `typ: JWT`
            signing_input = unsigned(token, typ=DROP)
            return f"{signing_input}.{b64u(signer.sign(signing_input.encode()))}"
        case "unknown kid":
            return resign(token, signer, kid="someone-else")
    raise AssertionError(how)
