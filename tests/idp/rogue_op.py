"""A small OpenID Provider under the tests' control, to sign deliberately wrong tokens.

It speaks the protocol for real over HTTP on a loopback port (discovery, authorize, token, JWKS,
userinfo) and records what the relying party sent. `Behaviour` says how to misbehave: claims to
change or drop, header fields, how to sign (a wrong key, `none`, HS256 with the client secret),
which keys to publish, another issuer in discovery or in the callback.
"""

from __future__ import annotations

import base64
import contextlib
import json
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlencode

import uvicorn
from joserfc import jwt
from joserfc.jwk import OctKey, RSAKey
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from tests.services import free_port

CLIENT_ID = "rogue-client"
CLIENT_SECRET = "rogue-client-secret-0123456789abcdef"
REMOVE = object()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class Behaviour:
    subject: str = "rogue-user-1"
    email: str = "jdoe@acme.test"
    email_verified: bool = True
    groups: list[str] = field(default_factory=lambda: ["staff"])
    claims: dict[str, Any] = field(default_factory=dict)  # merged over the defaults; REMOVE drops one
    header: dict[str, Any] = field(default_factory=dict)
    signing: str = "rs256"  # rs256, bad_signature, none, hs256_client_secret, unpublished_key
    signing_key: int = 0
    published: list[int] = field(default_factory=lambda: [0])
    kid: Any = None  # None: the key's own kid; REMOVE: no kid; a string: that kid
    discovery_issuer: str | None = None
    callback_iss: str | None = None
    userinfo_sub: str | None = None
    rotate_on_token: int | None = None  # publish and sign with this key from the next token on


class RogueProvider:
    def __init__(self) -> None:
        self.port = free_port()
        self.issuer = f"http://127.0.0.1:{self.port}"
        self.keys = [RSAKey.generate_key(2048, parameters={"kid": f"key-{i}"}) for i in range(3)]
        self.behaviour = Behaviour()
        self.authorize_requests: list[dict[str, str]] = []
        self.token_requests: list[dict[str, str]] = []
        self.jwks_fetches = 0
        self.codes: dict[str, dict[str, str]] = {}
        self.used_codes: set[str] = set()
        self.last_nonce: str | None = None

    def reset(self) -> None:
        self.behaviour = Behaviour()
        self.authorize_requests.clear()
        self.token_requests.clear()
        self.jwks_fetches = 0

    # -- endpoints ---------------------------------------------------------------------------------------

    async def discovery(self, _: Request) -> Response:
        return JSONResponse(
            {
                "issuer": self.behaviour.discovery_issuer or self.issuer,
                "authorization_endpoint": f"{self.issuer}/authorize",
                "token_endpoint": f"{self.issuer}/token",
                "jwks_uri": f"{self.issuer}/jwks",
                "userinfo_endpoint": f"{self.issuer}/userinfo",
                "response_types_supported": ["code"],
                "subject_types_supported": ["public"],
                # offers everything: the relying party must pin its own list
                "id_token_signing_alg_values_supported": ["RS256", "HS256", "none"],
                "code_challenge_methods_supported": ["S256", "plain"],
            }
        )

    async def jwks(self, _: Request) -> Response:
        self.jwks_fetches += 1
        keys = [self.keys[i].as_dict(private=False) for i in self.behaviour.published]
        return JSONResponse({"keys": keys})

    async def authorize(self, request: Request) -> Response:
        params = dict(request.query_params)
        self.authorize_requests.append(params)
        code = secrets.token_urlsafe(16)
        self.codes[code] = params
        query = {"code": code, "state": params.get("state", "")}
        if self.behaviour.callback_iss is not None:
            query["iss"] = self.behaviour.callback_iss
        return RedirectResponse(f"{params['redirect_uri']}?{urlencode(query)}", status_code=302)

    async def token(self, request: Request) -> Response:
        form = {k: v[0] for k, v in parse_qs((await request.body()).decode()).items()}
        self.token_requests.append({**form, "authorization": request.headers.get("authorization", "")})
        code = form.get("code", "")
        if code not in self.codes or code in self.used_codes:
            return JSONResponse({"error": "invalid_grant"}, status_code=400)
        self.used_codes.add(code)
        auth = self.codes[code]
        b = self.behaviour
        if b.rotate_on_token is not None:
            b.signing_key = b.rotate_on_token
            b.published = [b.rotate_on_token]
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "sub": b.subject,
            "aud": CLIENT_ID,
            "exp": now + 300,
            "iat": now,
            "nonce": auth.get("nonce"),
            "email": b.email,
            "email_verified": b.email_verified,
            "name": "Jane Doe",
            "groups": b.groups,
        }
        self.last_nonce = auth.get("nonce")
        for k, v in b.claims.items():
            if v is REMOVE:
                claims.pop(k, None)
            else:
                claims[k] = v
        return JSONResponse(
            {
                "access_token": "at-" + secrets.token_urlsafe(16),
                "token_type": "Bearer",
                "expires_in": 300,
                "id_token": self.sign(claims),
            }
        )

    async def userinfo(self, _: Request) -> Response:
        b = self.behaviour
        return JSONResponse(
            {
                "sub": b.userinfo_sub or b.subject,
                "email": b.email,
                "email_verified": b.email_verified,
                "groups": b.groups,
            }
        )

    # -- signing -----------------------------------------------------------------------------------------

    def sign(self, claims: dict[str, Any]) -> str:
        b = self.behaviour
        key = self.keys[b.signing_key]
        header: dict[str, Any] = {"alg": "RS256", "typ": "JWT", "kid": key.kid}
        if b.kid is REMOVE:
            header.pop("kid")
        elif b.kid is not None:
            header["kid"] = b.kid
        header.update(b.header)
        if b.signing == "none":
            header["alg"] = "none"
            return f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}."
        if b.signing == "hs256_client_secret":
            header["alg"] = "HS256"
            return jwt.encode(header, claims, OctKey.import_key(CLIENT_SECRET), algorithms=["HS256"])
        token = jwt.encode(header, claims, key, algorithms=["RS256"])
        if b.signing == "bad_signature":
            head, payload, sig = token.split(".")
            raw = bytearray(base64.urlsafe_b64decode(sig + "=" * (-len(sig) % 4)))
            raw[10] ^= 0x01
            token = f"{head}.{payload}.{_b64(bytes(raw))}"
        return token

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/.well-known/openid-configuration", self.discovery),
                Route("/jwks", self.jwks),
                Route("/authorize", self.authorize),
                Route("/token", self.token, methods=["POST"]),
                Route("/userinfo", self.userinfo),
            ]
        )


@contextlib.contextmanager
def rogue_provider() -> Iterator[RogueProvider]:
    op = RogueProvider()
    server = uvicorn.Server(
        uvicorn.Config(
            op.app(), host="127.0.0.1", port=op.port, log_level="warning", lifespan="off", ws="none", access_log=False
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("the rogue provider did not start")
        time.sleep(0.02)
    try:
        yield op
    finally:
        server.should_exit = True
        thread.join(timeout=10)
