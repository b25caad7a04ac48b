"""Bearer tokens over HTTP: every bad token of the JWT catalog (security design, C-023 to C-038) gets the
same 401, the same `WWW-Authenticate` challenge and the same body, one `authn_token_invalid` event, and
never a 500."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import logging
import socket
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from sqlalchemy import create_engine, delete, update

from gateway.app import create_app
from identity.tokens import generate_private_key_pem, new_refresh_token
from store.db import install_sqlite_pragmas, is_sqlite, sync_url
from store.models import Membership, User
from tests.conftest import Tenant, error_codes, gql, login, make_settings, running

ME = "{ me { user { email } organization { slug } } }"
REFRESH = "mutation($t: String) { refreshToken(refreshToken: $t) { accessToken refreshToken } }"
CHALLENGE = 'Bearer realm="portcullis", error="invalid_token"'
REFUSAL = {"errors": [{"message": "Invalid or missing credentials.", "extensions": {"code": "UNAUTHENTICATED"}}]}
PRIVATE_JWK_MEMBERS = {"d", "p", "q", "dp", "dq", "qi", "oth", "k"}


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64json(value: Any) -> str:
    return b64u(json.dumps(value, separators=(",", ":")).encode())


def compact(header: dict[str, Any], payload: Any, sign: Callable[[str], str]) -> str:
    signing_input = f"{b64json(header)}.{b64json(payload)}"
    return f"{signing_input}.{sign(signing_input)}"


def rsa_signer(key: rsa.RSAPrivateKey) -> Callable[[str], str]:
    return lambda s: b64u(key.sign(s.encode(), padding.PKCS1v15(), hashes.SHA256()))


def hmac_signer(secret: bytes) -> Callable[[str], str]:
    return lambda s: b64u(hmac.new(secret, s.encode(), hashlib.sha256).digest())


def load_private(pem: str) -> rsa.RSAPrivateKey:
    key = serialization.load_pem_private_key(pem.encode(), password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    return key


@pytest.fixture(scope="module")
def attacker_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


async def call(client: httpx.AsyncClient, headers: Any = None) -> httpx.Response:
    return await client.post("/graphql", json={"query": ME}, headers=headers)


async def bearer(client: httpx.AsyncClient, token: str) -> httpx.Response:
    return await call(client, {"Authorization": f"Bearer {token}"})


def assert_refused(r: httpx.Response, case: object) -> None:
    assert r.status_code == 401, (case, r.status_code, r.text[:300])
    assert r.headers.get_list("www-authenticate") == [CHALLENGE], case
    assert r.headers["content-type"] == "application/json", case
    assert r.json() == REFUSAL, case


class Refusals:
    """Sends bad credentials and checks each is refused alike: same bytes, one security event apiece."""

    def __init__(self, client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture) -> None:
        self.client = client
        self.caplog = caplog
        self.bodies: set[bytes] = set()
        self.sent = 0

    async def headers(self, case: object, headers: Any) -> None:
        self.caplog.clear()
        r = await call(self.client, headers)
        assert_refused(r, case)
        self.bodies.add(r.content)
        events = [rec for rec in self.caplog.records if rec.getMessage() == "authn_token_invalid"]
        assert len(events) == 1, case
        self.sent += 1

    async def token(self, case: object, token: str) -> None:
        await self.headers(case, {"Authorization": f"Bearer {token}"})

    def identical(self) -> None:
        assert self.sent > 0
        assert len(self.bodies) == 1


@pytest.fixture
def refusals(client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture) -> Iterator[Refusals]:
    caplog.set_level(logging.INFO, logger="portcullis.edge")
    checker = Refusals(client, caplog)
    yield checker
    checker.identical()


@contextlib.contextmanager
def no_outbound_connections(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    attempts: list[str] = []

    def spy(name: str) -> Callable[..., Any]:
        def refuse(*args: Any, **kwargs: Any) -> Any:
            attempts.append(f"{name}{args!r}")
            raise OSError(f"{name} attempted while refusing a token")

        return refuse

    with monkeypatch.context() as m:
        m.setattr(socket.socket, "connect", spy("connect"))
        m.setattr(socket.socket, "connect_ex", spy("connect_ex"))
        m.setattr(socket, "create_connection", spy("create_connection"))
        m.setattr(socket, "getaddrinfo", spy("getaddrinfo"))
        m.setattr(urllib.request, "urlopen", spy("urlopen"))
        yield attempts
    assert attempts == []


class Forger:
    """Builds tokens that look like the gateway's own, signed with its real key unless told otherwise."""

    def __init__(self, app: Any, signing_key: str) -> None:
        tokens = app.state.services.tokens
        self.issuer: str = tokens.issuer
        self.audience: str = tokens.audience
        self.kid: str = tokens.keys.current.kid
        self.public_jwk: dict[str, str] = tokens.keys.current.public_jwk
        self.key = load_private(signing_key)

    def header(self, **overrides: Any) -> dict[str, Any]:
        merged = {"alg": "RS256", "typ": "at+jwt", "kid": self.kid, **overrides}
        return {k: v for k, v in merged.items() if v is not None}

    def claims(self, **overrides: Any) -> dict[str, Any]:
        now = int(time.time())
        merged = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": "user-1",
            "org": "org-1",
            "sid": "session-1",
            "jti": "jti-1",
            "iat": now,
            "nbf": now,
            "exp": now + 600,
            **overrides,
        }
        return {k: v for k, v in merged.items() if v is not None}

    def token(
        self, payload: dict[str, Any] | None = None, sign: Callable[[str], str] | None = None, **header: Any
    ) -> str:
        return compact(
            self.header(**header), self.claims() if payload is None else payload, sign or rsa_signer(self.key)
        )


@pytest.fixture
def forger(app: Any, signing_key: str) -> Forger:
    return Forger(app, signing_key)


def db_execute(database_url: str, statement: Any) -> None:
    engine = create_engine(sync_url(database_url))
    if is_sqlite(database_url):
        install_sqlite_pragmas(engine)
    try:
        with engine.begin() as conn:
            conn.execute(statement)
    finally:
        engine.dispose()


# --- the baseline ------------------------------------------------------------------------------


async def test_genuine_token_then_its_expiry(client: httpx.AsyncClient, app: Any, tenant: Tenant) -> None:
    """A genuine token is accepted; once the clock passes `exp` the remembered token is refused."""
    auth = await login(client, tenant)
    r = await bearer(client, auth["accessToken"])
    assert r.status_code == 200
    assert r.json()["data"]["me"]["user"]["email"] == tenant.email
    tokens = app.state.services.tokens
    issued = tokens.verify(auth["accessToken"])
    tokens.clock = lambda: issued.expires_at
    assert_refused(await bearer(client, auth["accessToken"]), "expired")


async def test_no_credential_is_anonymous(client: httpx.AsyncClient) -> None:
    r = await call(client)
    assert r.status_code == 200
    assert error_codes(r.json()) == ["UNAUTHENTICATED"]
    assert "www-authenticate" not in r.headers


# --- forged tokens: C-023 to C-029, C-033, C-034, C-036 -------------------------------------------


async def test_c023_c024_unsigned_tokens(refusals: Refusals, forger: Forger) -> None:
    """C-023 `alg: none` in four spellings, signature empty or kept; C-024 null signature."""
    head, body, signature = forger.token().split(".")
    for alg in ("none", "None", "NONE", "nOnE"):
        unsigned_head = b64json(forger.header(alg=alg))
        for sig in ("", signature):
            await refusals.token(("C-023", alg, bool(sig)), f"{unsigned_head}.{body}.{sig}")
    await refusals.token("C-024", f"{head}.{body}.")


async def test_c025_hmac_with_the_public_key(refusals: Refusals, forger: Forger) -> None:
    """C-025: HS256 keyed with the gateway's public key as PEM, DER, OpenSSH or JWK JSON."""
    public = forger.key.public_key()
    forms = {
        "pem": public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo),
        "pem-pkcs1": public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.PKCS1),
        "der": public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo),
        "der-pkcs1": public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.PKCS1),
        "openssh": public.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH),
        "jwk-json": json.dumps(forger.public_jwk).encode(),
    }
    for name, secret in forms.items():
        await refusals.token(("C-025", name), forger.token(sign=hmac_signer(secret), alg="HS256"))


async def test_c026_c027_keys_chosen_by_the_token(
    refusals: Refusals, forger: Forger, attacker_key: rsa.RSAPrivateKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    """C-026 `kid` injection and C-027 `jku`/`x5u`/`jwk`/`x5c`: refused with zero outbound connections."""
    attacker = rsa_signer(attacker_key)
    numbers = attacker_key.public_key().public_numbers()
    attacker_jwk = {
        "kty": "RSA",
        "kid": "attacker",
        "n": b64u(numbers.n.to_bytes((numbers.n.bit_length() + 7) // 8, "big")),
        "e": "AQAB",
    }
    cases = {
        "kid-traversal-hmac": forger.token(sign=hmac_signer(b""), alg="HS256", kid="../../../../dev/null"),
        "kid-traversal-rsa": forger.token(sign=attacker, kid="../../../../dev/null"),
        "kid-sql": forger.token(sign=hmac_signer(b"k"), alg="HS256", kid="x' UNION SELECT 'k'--"),
        "kid-url": forger.token(sign=attacker, kid="http://169.254.169.254/"),
        "jku": forger.token(sign=attacker, kid="attacker", jku="https://attacker.example/jwks.json"),
        "x5u": forger.token(sign=attacker, kid="attacker", x5u="https://attacker.example/cert.pem"),
        "jwk": forger.token(sign=attacker, kid="attacker", jwk=attacker_jwk),
        "jwk-gateway-kid": forger.token(sign=attacker, jwk={**attacker_jwk, "kid": forger.kid}),
        "x5c": forger.token(sign=attacker, kid="attacker", x5c=[b64u(b"0\x82 not really a certificate")]),
        "jku-real-signature": forger.token(jku="http://127.0.0.1:9/jwks.json"),
    }
    with no_outbound_connections(monkeypatch):
        for name, token in cases.items():
            await refusals.token(("C-026/C-027", name), token)


async def test_c028_expiry_edges(refusals: Refusals, forger: Forger) -> None:
    """C-028, over HTTP, signed with the gateway's real key (the unit tests pin the exact edges)."""
    now = int(time.time())
    cases: dict[str, dict[str, Any]] = {
        "exp-now": {"exp": now},
        "exp-past-leeway": {"iat": now - 600, "nbf": now - 600, "exp": now - 31},
        "exp-missing": {"exp": None},
        "exp-string": {"exp": "9999999999"},
        "nbf-future": {"nbf": now + 3600, "exp": now + 3000},
        "iat-future": {"iat": now + 3600, "exp": now + 3900},
        "ten-years": {"exp": now + 10 * 365 * 86_400},
    }
    for name, overrides in cases.items():
        await refusals.token(("C-028", name), forger.token(forger.claims(**overrides)))


async def test_c029_audience_issuer_and_type(
    refusals: Refusals, forger: Forger, attacker_key: rsa.RSAPrivateKey
) -> None:
    """C-029: `aud`/`iss` missing or near misses, refresh tokens and ID tokens presented as access tokens."""
    iss = forger.issuer
    claim_cases: dict[str, dict[str, Any]] = {
        "aud-missing": {"aud": None},
        "aud-other": {"aud": "other-service"},
        "iss-evil": {"iss": f"{iss}.evil"},
        "iss-prefix": {"iss": f"evil{iss}"},
        "iss-truncated": {"iss": iss[:-1]},
        "iss-case": {"iss": iss.upper()},
        "iss-missing": {"iss": None},
    }
    for name, overrides in claim_cases.items():
        await refusals.token(("C-029", name), forger.token(forger.claims(**overrides)))
    await refusals.token(("C-029", "typ JWT"), forger.token(typ="JWT"))
    await refusals.token(("C-029", "no typ"), forger.token(typ=None))
    await refusals.token(("C-029", "refresh"), new_refresh_token())
    await refusals.token(("C-029", "refresh-jwt"), forger.token(forger.claims(aud="refresh"), typ="rt+jwt"))
    now = int(time.time())
    id_token = {
        "iss": "https://idp.example.com",
        "aud": "portcullis-client",
        "sub": "user-1",
        "nonce": "abc",
        "auth_time": now,
        "iat": now,
        "exp": now + 600,
    }
    await refusals.token(
        ("C-029", "id-token"),
        compact({"alg": "RS256", "typ": "JWT", "kid": "idp-1"}, id_token, rsa_signer(attacker_key)),
    )
    await refusals.token(("C-029", "id-token-our-key"), forger.token(id_token, typ="JWT"))


async def test_c033_tampered_payload(client: httpx.AsyncClient, tenant: Tenant, refusals: Refusals) -> None:
    """C-033: a genuine token of a real session with `org`, `sub` or `sid` flipped keeps its signature."""
    auth = await login(client, tenant)
    token = auth["accessToken"]
    assert (await bearer(client, token)).status_code == 200
    head, body, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    for name, value in (("org", "another-org"), ("sub", "another-user"), ("sid", "another-session")):
        await refusals.token(("C-033", name), f"{head}.{b64json({**claims, name: value})}.{signature}")
    await refusals.token(("C-033", "roles"), f"{head}.{b64json({**claims, 'roles': ['owner']})}.{signature}")


async def test_c034_crit(refusals: Refusals, forger: Forger) -> None:
    """C-034: `crit: ["exp2"]`, signed with the gateway's real key."""
    await refusals.token("C-034", forger.token({**forger.claims(), "exp2": 1}, crit=["exp2"]))


async def test_c036_jwe(refusals: Refusals, forger: Forger) -> None:
    """C-036: a 5-segment JWE, and a JWS with `zip: DEF`."""
    jwe = ".".join(
        [
            b64json({"alg": "RSA-OAEP-256", "enc": "A256GCM", "zip": "DEF", "kid": forger.kid}),
            b64u(b"k" * 256),
            b64u(b"i" * 12),
            b64u(b"c" * 4096),
            b64u(b"t" * 16),
        ]
    )
    await refusals.token(("C-036", "jwe"), jwe)
    await refusals.token(("C-036", "zip"), forger.token(zip="DEF"))


# --- C-035 / C-037: size and structure ------------------------------------------------------------


async def test_c035_oversized_authorization_header(
    refusals: Refusals, forger: Forger, monkeypatch: pytest.MonkeyPatch
) -> None:
    """C-035: a 1 MB Authorization header is refused quickly, and the token is never decoded."""
    head, _, signature = forger.token().split(".")

    def no_decoding(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("an oversized token was decoded")

    monkeypatch.setattr("identity.tokens.jws.get_unverified_header", no_decoding)
    monkeypatch.setattr("identity.tokens.jwt.decode", no_decoding)
    for name, token in (
        ("1 MB", f"{head}.{'A' * (1024 * 1024)}.{signature}"),
        ("1 MB junk", "A" * (1024 * 1024)),
        ("just over 8 KiB", f"{head}.{'A' * 8192}.{signature}"),
    ):
        started = time.perf_counter()
        await refusals.token(("C-035", name), token)
        assert time.perf_counter() - started < 1.0, name
    # the decoders really are disabled here: a token of ordinary size reaches them, and fails unexpectedly
    r = await bearer(refusals.client, forger.token())
    assert r.status_code == 500
    assert error_codes(r.json()) == ["INTERNAL"]


async def test_c037_malformed_authorization(refusals: Refusals, client: httpx.AsyncClient, tenant: Tenant) -> None:
    """C-037: broken structure and broken `Authorization` headers, around a token that is itself genuine."""
    auth = await login(client, tenant)
    genuine = auth["accessToken"]
    assert (await bearer(client, genuine)).status_code == 200
    head, body, signature = genuine.split(".")
    tokens = {
        "2 segments": f"{head}.{body}",
        "4 segments": f"{head}.{body}.{signature}.{signature}",
        "non-base64url": f"{head}.{body}.{signature[:-2]}+/",
        "padding": f"{head}.{body}.{signature}==",
        "padding in payload": f"{head}.{body}=.{signature}",
        "star": f"{head}.{body}*.{signature}",
        "empty segments": "..",
        "dots": ".",
    }
    for name, token in tokens.items():
        await refusals.token(("C-037", name), token)
    headers: dict[str, Any] = {
        "double space": {"Authorization": f"Bearer  {genuine}"},
        "lowercase scheme": {"Authorization": f"bearer {genuine}"},
        "uppercase scheme": {"Authorization": f"BEARER {genuine}"},
        "tab": {"Authorization": f"Bearer\t{genuine}"},
        "trailing space": {"Authorization": f"Bearer {genuine} "},
        "space inside": {"Authorization": f"Bearer {head}.{body} .{signature}"},
        "newline inside": {"Authorization": f"Bearer {head}.{body}\n.{signature}"},
        "trailing newline": {"Authorization": f"Bearer {genuine}\n"},
        "no token": {"Authorization": "Bearer"},
        "no token, space": {"Authorization": "Bearer "},
        "empty": {"Authorization": ""},
        "token only": {"Authorization": genuine},
        "basic": {"Authorization": "Basic " + base64.b64encode(f"{tenant.email}:{tenant.password}".encode()).decode()},
        "two schemes": {"Authorization": f"Bearer {genuine}, Bearer {genuine}"},
        "two headers": [("Authorization", f"Bearer {genuine}"), ("Authorization", f"Bearer {genuine}")],
        "two headers, one empty": [("Authorization", f"Bearer {genuine}"), ("Authorization", "")],
        "bearer and api key": {"Authorization": f"Bearer {genuine}", "X-API-Key": "pk_x"},
    }
    for name, value in headers.items():
        await refusals.headers(("C-037", name), value)
    assert (await bearer(client, genuine)).status_code == 200


# --- C-031: the account or the membership ends ----------------------------------------------------


@pytest.mark.parametrize("change", ["deactivate", "remove membership"])
async def test_c031_access_and_refresh_refused_after_the_account_changes(
    client: httpx.AsyncClient, tenant: Tenant, database_url: str, change: str
) -> None:
    """C-031: the user is deactivated, or leaves the organization, directly in the database. The next refresh
    is refused, and so is the access token wherever the process has not already cached the session."""
    auth = await login(client, tenant)
    statement: Any = (
        update(User).where(User.id == tenant.user_id).values(is_active=False)  # type: ignore[arg-type]
        if change == "deactivate"
        else delete(Membership).where(Membership.user_id == tenant.user_id)  # type: ignore[arg-type]
    )
    db_execute(database_url, statement)
    assert_refused(await bearer(client, auth["accessToken"]), change)
    r = await gql(client, REFRESH, {"t": auth["refreshToken"]})
    assert error_codes(r.json()) == ["UNAUTHENTICATED"]
    assert r.json()["data"] is None


async def test_c031_refresh_refused_after_deactivation_with_the_session_cached(
    client: httpx.AsyncClient, tenant: Tenant, database_url: str
) -> None:
    """C-031: with the session already in this process's cache, the refresh still reads the database."""
    auth = await login(client, tenant)
    assert (await bearer(client, auth["accessToken"])).status_code == 200
    db_execute(database_url, update(User).where(User.id == tenant.user_id).values(is_active=False))  # type: ignore[arg-type]
    r = await gql(client, REFRESH, {"t": auth["refreshToken"]})
    assert error_codes(r.json()) == ["UNAUTHENTICATED"]


async def test_c031_no_session_cache_refuses_a_used_access_token(
    tenant: Tenant, database_url: str, signing_key: str
) -> None:
    """C-031: the cached session facts are the only delay; with the cache off (TTL 0) the access token that
    was just accepted is refused on the next request after deactivation."""
    app = create_app(make_settings(database_url, signing_key, session_cache_ttl_seconds=0))
    async with running(app) as client:
        auth = await login(client, tenant)
        assert (await bearer(client, auth["accessToken"])).status_code == 200
        db_execute(database_url, update(User).where(User.id == tenant.user_id).values(is_active=False))  # type: ignore[arg-type]
        assert_refused(await bearer(client, auth["accessToken"]), "deactivated")


# --- C-038: key rotation --------------------------------------------------------------------------


async def test_c038_rotation(tenant: Tenant, database_url: str, signing_key: str, tmp_path: Path) -> None:
    """C-038: a token of the previous key is accepted while that key is in the ring, refused once removed;
    the JWKS lists the current and previous public keys and no private member."""
    old_file = tmp_path / "old-key.pem"
    old_file.write_text(signing_key)
    new_key = generate_private_key_pem()

    async with running(create_app(make_settings(database_url, signing_key))) as before:
        old_token = (await login(before, tenant))["accessToken"]
        old_kid = (await before.get("/.well-known/jwks.json")).json()["keys"][0]["kid"]

    during = create_app(make_settings(database_url, new_key, previous_signing_key_files=[old_file]))
    async with running(during) as client:
        assert (await bearer(client, old_token)).status_code == 200
        new_token = (await login(client, tenant))["accessToken"]
        assert (await bearer(client, new_token)).status_code == 200
        r = await client.get("/.well-known/jwks.json")
        assert r.status_code == 200
        keys = r.json()["keys"]
        new_kid = during.state.services.tokens.keys.current.kid
        assert [k["kid"] for k in keys] == [new_kid, old_kid]
        for k in keys:
            assert not PRIVATE_JWK_MEMBERS & set(k), k
            assert (k["kty"], k["alg"], k["use"]) == ("RSA", "RS256", "sig")
        assert b'"d"' not in r.content

    async with running(create_app(make_settings(database_url, new_key))) as after:
        assert_refused(await bearer(after, old_token), "retired key")
        assert (await bearer(after, new_token)).status_code == 200
        assert [k["kid"] for k in (await after.get("/.well-known/jwks.json")).json()["keys"]] == [new_kid]
