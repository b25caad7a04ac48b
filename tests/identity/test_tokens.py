"""Access-token verification against the JWT attack catalog (security design, cases C-023 to C-038).

Every forged token here is built by hand, so each one differs from a token the gateway would accept by
the one property under test; `test_hand_built_token_is_accepted` proves the baseline is acceptable.
The clock is injected: no test depends on the wall clock, and none needs a database.
"""

from __future__ import annotations

import base64
import builtins
import contextlib
import datetime as dt
import hashlib
import hmac
import io
import json
import os
import socket
import time
import urllib.request
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from identity.tokens import (
    MAX_TOKEN_BYTES,
    AccessTokens,
    KeyRing,
    SigningKey,
    TokenError,
    new_refresh_token,
)

ISSUER = "https://gw.example.com"
AUDIENCE = "portcullis-api"
NOW = 1_800_000_000
LEEWAY = 30
MAX_LIFETIME = 3600
DROP = object()


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64json(value: Any) -> str:
    return b64u(json.dumps(value, separators=(",", ":")).encode())


def pem_of(key: rsa.RSAPrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def rsa_sign(key: rsa.RSAPrivateKey, signing_input: str) -> str:
    return b64u(key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256()))


def hmac_signer(secret: bytes, digest: Callable[..., Any] = hashlib.sha256) -> Callable[[str], str]:
    def sign(signing_input: str) -> str:
        return b64u(hmac.new(secret, signing_input.encode(), digest).digest())

    return sign


def compact(header: dict[str, Any], payload: Any, sign: Callable[[str], str]) -> str:
    signing_input = f"{b64json(header)}.{b64json(payload)}"
    return f"{signing_input}.{sign(signing_input)}"


def with_overrides(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    merged = {**base, **overrides}
    return {k: v for k, v in merged.items() if v is not DROP}


@pytest.fixture(scope="module")
def gateway_key(signing_key: str) -> rsa.RSAPrivateKey:
    key = serialization.load_pem_private_key(signing_key.encode(), password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    return key


@pytest.fixture(scope="module")
def attacker_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def old_key_pem() -> str:
    return pem_of(rsa.generate_private_key(public_exponent=65537, key_size=2048))


@pytest.fixture(scope="module")
def ring_3072() -> KeyRing:
    return KeyRing(pem_of(rsa.generate_private_key(public_exponent=65537, key_size=3072)))


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(scope="module")
def ring(signing_key: str) -> KeyRing:
    return KeyRing(signing_key)


@pytest.fixture
def access(ring: KeyRing, clock: Clock) -> AccessTokens:
    return AccessTokens(
        ring,
        issuer=ISSUER,
        audience=AUDIENCE,
        lifetime_seconds=900,
        max_lifetime_seconds=MAX_LIFETIME,
        leeway_seconds=LEEWAY,
        clock=clock,
    )


@pytest.fixture
def kid(ring: KeyRing) -> str:
    return ring.current.kid


def header(key_id: str, /, **overrides: Any) -> dict[str, Any]:
    return with_overrides({"alg": "RS256", "typ": "at+jwt", "kid": key_id}, overrides)


def claims(**overrides: Any) -> dict[str, Any]:
    base = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "user-1",
        "org": "org-1",
        "sid": "session-1",
        "jti": "jti-1",
        "iat": NOW,
        "nbf": NOW,
        "exp": NOW + 600,
    }
    return with_overrides(base, overrides)


@pytest.fixture
def forge(gateway_key: rsa.RSAPrivateKey, kid: str) -> Callable[..., str]:
    """A token signed with the gateway's real key; keyword arguments change the header."""

    def build(payload: Any = None, **header_overrides: Any) -> str:
        body = claims() if payload is None else payload
        return compact(header(kid, **header_overrides), body, lambda s: rsa_sign(gateway_key, s))

    return build


def kid_of(token: str) -> Any:
    head = token.split(".")[0]
    return json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))["kid"]


def accepted(access: AccessTokens, token: str) -> bool:
    try:
        access.verify(token)
    except TokenError:
        return False
    return True


def refused(access: AccessTokens, token: str) -> TokenError:
    with pytest.raises(TokenError) as caught:
        access.verify(token)
    return caught.value


@contextlib.contextmanager
def no_io(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Fails the test if anything opens a file, resolves a name or connects a socket meanwhile."""
    attempts: list[str] = []

    def spy(name: str) -> Callable[..., Any]:
        def refuse(*args: Any, **kwargs: Any) -> Any:
            attempts.append(f"{name}{args!r}")
            raise OSError(f"{name} attempted during token verification")

        return refuse

    with monkeypatch.context() as m:
        m.setattr(builtins, "open", spy("open"))
        m.setattr(io, "open", spy("io.open"))
        m.setattr(os, "open", spy("os.open"))
        m.setattr(socket.socket, "connect", spy("connect"))
        m.setattr(socket.socket, "connect_ex", spy("connect_ex"))
        m.setattr(socket, "create_connection", spy("create_connection"))
        m.setattr(socket, "getaddrinfo", spy("getaddrinfo"))
        m.setattr(urllib.request, "urlopen", spy("urlopen"))
        yield attempts
    assert attempts == []


# --- the baseline ------------------------------------------------------------------------------


def test_genuine_token_verifies_and_the_cache_refuses_it_after_exp(access: AccessTokens, clock: Clock) -> None:
    token, issued = access.issue(subject="user-1", organization_id="org-1", session_id="session-1")
    assert access.verify(token) == issued
    assert (issued.issued_at, issued.expires_at) == (NOW, NOW + 900)
    clock.now = issued.expires_at - 1
    assert access.verify(token) == issued  # served from the cache
    clock.now = issued.expires_at
    assert refused(access, token).reason == "expired"
    clock.now = issued.expires_at + 3600
    refused(access, token)


def test_hand_built_token_is_accepted(access: AccessTokens, forge: Callable[..., str]) -> None:
    verified = access.verify(forge())
    assert (verified.subject, verified.organization_id, verified.session_id) == ("user-1", "org-1", "session-1")


# --- C-023 / C-024: no signature ------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE"])
@pytest.mark.parametrize("signature", ["", "kept", "AAAA"])
def test_c023_alg_none(access: AccessTokens, forge: Callable[..., str], kid: str, alg: str, signature: str) -> None:
    """C-023: `alg: none` in any spelling, signature empty, kept from a genuine token, or junk."""
    genuine_signature = forge().rsplit(".", 1)[1]
    sig = genuine_signature if signature == "kept" else signature
    token = f"{b64json(header(kid, alg=alg))}.{b64json(claims())}.{sig}"
    refused(access, token)


def test_c024_null_signature(access: AccessTokens, forge: Callable[..., str]) -> None:
    """C-024: a genuine header and payload with the signature segment removed."""
    head, body, _ = forge().split(".")
    refused(access, f"{head}.{body}.")
    refused(access, f"{head}.{body}")


# --- C-025: RS256 -> HS256 confusion --------------------------------------------------------------


def public_key_forms(key: rsa.RSAPrivateKey, ring: KeyRing) -> dict[str, bytes]:
    public = key.public_key()
    spki_pem = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return {
        "pem-spki": spki_pem,
        "pem-spki-stripped": spki_pem.strip(),
        "pem-pkcs1": public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.PKCS1),
        "der-spki": public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo),
        "der-pkcs1": public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.PKCS1),
        "openssh": public.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH),
        "jwk-json": json.dumps(ring.current.public_jwk).encode(),
        "jwks-json": json.dumps(ring.jwks()).encode(),
    }


@pytest.mark.parametrize("alg", ["HS256", "HS384", "HS512", "hs256"])
def test_c025_hmac_signed_with_the_public_key(
    access: AccessTokens, gateway_key: rsa.RSAPrivateKey, ring: KeyRing, kid: str, alg: str
) -> None:
    """C-025: HMAC over the gateway's public key in PEM, DER, OpenSSH and JWK forms (DER is the python-jose
    regression), with the real `kid`."""
    digest = {"HS384": hashlib.sha384, "HS512": hashlib.sha512}.get(alg, hashlib.sha256)
    forged = {
        form: compact(header(kid, alg=alg), claims(), hmac_signer(secret, digest))
        for form, secret in public_key_forms(gateway_key, ring).items()
    }
    assert [form for form, token in forged.items() if accepted(access, token)] == []


def test_c025_hmac_signature_under_an_rs256_header(
    access: AccessTokens, gateway_key: rsa.RSAPrivateKey, ring: KeyRing, kid: str
) -> None:
    """C-025: the header claims RS256 but the signature is an HMAC keyed with the public key."""
    forged = {
        form: compact(header(kid), claims(), hmac_signer(secret))
        for form, secret in public_key_forms(gateway_key, ring).items()
    }
    assert [form for form, token in forged.items() if accepted(access, token)] == []


# --- C-026 / C-027: key selection from the token --------------------------------------------------

INJECTED_KIDS = [
    "../../../../dev/null",
    "/dev/null",
    "file:///etc/passwd",
    "x' UNION SELECT 'k'--",
    "' OR '1'='1",
    "http://169.254.169.254/",
    "https://attacker.example/jwks.json",
    "",
]


@pytest.mark.parametrize("injected", INJECTED_KIDS)
def test_c026_kid_injection(
    access: AccessTokens, attacker_key: rsa.RSAPrivateKey, monkeypatch: pytest.MonkeyPatch, injected: str
) -> None:
    """C-026: a `kid` naming a file, an SQL fragment or a URL; HMAC over an empty key, over the contents of
    /dev/null, or RS256 by an attacker key. Refused without opening a file or a connection."""
    candidates = [
        compact(header(injected, alg="HS256"), claims(), hmac_signer(b"")),
        compact(header(injected, alg="HS256"), claims(), hmac_signer(b"k")),
        compact(header(injected), claims(), lambda s: rsa_sign(attacker_key, s)),
    ]
    with no_io(monkeypatch):
        for token in candidates:
            with pytest.raises(TokenError):
                access.verify(token)


@pytest.mark.parametrize("kid_value", [None, 0, 1.5, ["kid"], {"kid": "x"}, True])
def test_c026_kid_of_the_wrong_type(access: AccessTokens, forge: Callable[..., str], kid_value: Any) -> None:
    """C-026: a `kid` that is not a string (or is missing) never reaches the key ring."""
    refused(access, forge(kid=DROP if kid_value is None else kid_value))


def attacker_jwk(key: rsa.RSAPrivateKey, kid: str) -> dict[str, str]:
    numbers = key.public_key().public_numbers()

    def enc(n: int) -> str:
        return b64u(n.to_bytes((n.bit_length() + 7) // 8, "big"))

    return {"kty": "RSA", "alg": "RS256", "use": "sig", "kid": kid, "n": enc(numbers.n), "e": enc(numbers.e)}


def self_signed_certificate(key: rsa.RSAPrivateKey) -> str:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gw.example.com")])
    start = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=3650))
        .sign(key, hashes.SHA256())
    )
    return base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()


def test_c027_key_carried_or_pointed_to_by_the_token(
    access: AccessTokens,
    attacker_key: rsa.RSAPrivateKey,
    gateway_key: rsa.RSAPrivateKey,
    kid: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """C-027: `jku`/`x5u` pointing at an attacker JWKS, an embedded `jwk` or `x5c` of the attacker key;
    signed by that key, under its own `kid` or the gateway's. Zero outbound connections."""
    attacker_kid = SigningKey.from_pem(pem_of(attacker_key)).kid
    extra_headers: list[dict[str, Any]] = []
    for k in (attacker_kid, kid):
        extra_headers += [
            {"kid": k, "jku": "https://attacker.example/.well-known/jwks.json"},
            {"kid": k, "jku": "http://169.254.169.254/latest/meta-data/"},
            {"kid": k, "x5u": "https://attacker.example/cert.pem"},
            {"kid": k, "jwk": attacker_jwk(attacker_key, k)},
            {"kid": k, "x5c": [self_signed_certificate(attacker_key)]},
        ]
    extra_headers.append({"jwk": attacker_jwk(attacker_key, attacker_kid), "kid": DROP})
    with no_io(monkeypatch):
        for extra in extra_headers:
            token = compact(
                with_overrides({"alg": "RS256", "typ": "at+jwt"}, extra),
                claims(),
                lambda s: rsa_sign(attacker_key, s),
            )
            with pytest.raises(TokenError):
                access.verify(token)
            # the header alone is enough: even with the gateway's own signature it is refused
            token = compact(
                with_overrides({"alg": "RS256", "typ": "at+jwt", "kid": kid}, {**extra, "kid": kid}),
                claims(),
                lambda s: rsa_sign(gateway_key, s),
            )
            with pytest.raises(TokenError):
                access.verify(token)


def test_c027_attacker_key_with_the_gateway_kid(
    access: AccessTokens, attacker_key: rsa.RSAPrivateKey, kid: str
) -> None:
    """C-027: a plain RS256 token signed by a key outside the ring, claiming the ring's `kid`."""
    refused(access, compact(header(kid), claims(), lambda s: rsa_sign(attacker_key, s)))


# --- C-028: time claims ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("case", "overrides"),
    [
        ("exp equals now", {"exp": NOW}),
        ("exp one second ago", {"iat": NOW - 600, "nbf": NOW - 600, "exp": NOW - 1}),
        ("exp before the leeway", {"iat": NOW - 600, "nbf": NOW - 600, "exp": NOW - LEEWAY - 1}),
        ("exp missing", {"exp": DROP}),
        ("exp a numeric string", {"exp": "9999999999"}),
        ("exp a fraction", {"exp": NOW + 600.5}),
        ("exp a boolean", {"exp": True}),
        ("exp null", {"exp": None}),
        ("nbf in an hour", {"nbf": NOW + 3600, "exp": NOW + 3000}),
        ("nbf a string", {"nbf": str(NOW)}),
        ("iat in an hour", {"iat": NOW + 3600, "exp": NOW + 3900}),
        ("iat missing", {"iat": DROP}),
        ("iat a string", {"iat": str(NOW)}),
        ("ten-year token", {"exp": NOW + 10 * 365 * 86_400}),
        ("lifetime one second over the maximum", {"iat": NOW - 1, "exp": NOW + MAX_LIFETIME}),
        ("exp before iat", {"iat": NOW, "exp": NOW - 10}),
    ],
)
def test_c028_expiry_edges(
    access: AccessTokens, forge: Callable[..., str], case: str, overrides: dict[str, Any]
) -> None:
    """C-028: expired on or after `exp`, NumericDates only, nothing from the future, bounded lifetime."""
    refused(access, forge(claims(**overrides)))


@pytest.mark.parametrize(
    "overrides",
    [
        {"exp": NOW + 1},
        {"iat": NOW - 100, "nbf": NOW - 100, "exp": NOW - 100 + MAX_LIFETIME},
        {"iat": NOW + LEEWAY, "nbf": NOW + LEEWAY},
        {"nbf": DROP},
    ],
)
def test_c028_inside_the_edges_is_accepted(
    access: AccessTokens, forge: Callable[..., str], overrides: dict[str, Any]
) -> None:
    """C-028: the other side of each edge: a token with now < exp is accepted."""
    assert access.verify(forge(claims(**overrides))).subject == "user-1"


# --- C-029: audience, issuer and token type -------------------------------------------------------


@pytest.mark.parametrize(
    "overrides",
    [
        {"aud": DROP},
        {"aud": "other-service"},
        {"aud": AUDIENCE.upper()},
        {"aud": AUDIENCE + " "},
        {"aud": ""},
        {"aud": ["other-service"]},
        {"aud": [AUDIENCE, "other-service"]},
        {"aud": [AUDIENCE]},
        {"iss": DROP},
        {"iss": ISSUER + ".evil"},
        {"iss": "https://gw.example.com.evil"},
        {"iss": "portcullis.evil"},
        {"iss": "https://evil" + ISSUER.removeprefix("https://")},
        {"iss": ISSUER[:-1]},
        {"iss": ISSUER + "/"},
        {"iss": ISSUER.upper()},
        {"iss": "HTTPS://GW.EXAMPLE.COM"},
        {"iss": " " + ISSUER},
        {"iss": [ISSUER]},
        {"sub": DROP},
        {"sub": ""},
        {"jti": DROP},
        {"org": DROP},
        {"sid": DROP},
    ],
)
def test_c029_audience_and_issuer_compared_exactly(
    access: AccessTokens, forge: Callable[..., str], overrides: dict[str, Any]
) -> None:
    """C-029: `aud` and `iss` missing, other, or a prefix/suffix/case variant of ours."""
    refused(access, forge(claims(**overrides)))


@pytest.mark.parametrize("typ", [DROP, "JWT", "jwt", "rt+jwt", "id+jwt", "at+jwt ", "AT+JWT", "", None])
def test_c029_token_type(access: AccessTokens, forge: Callable[..., str], typ: Any) -> None:
    """C-029: only `typ: at+jwt` is an access token (RFC 9068); a signature of ours does not make one."""
    refused(access, forge(typ=typ))


def test_c029_refresh_token_presented_as_access_token(access: AccessTokens, forge: Callable[..., str]) -> None:
    """C-029: the opaque refresh token, and a JWT shaped like a refresh token, are not access tokens."""
    refused(access, new_refresh_token())
    refused(access, forge(claims(aud="portcullis-refresh"), typ="rt+jwt"))


def test_c029_id_token_presented_as_access_token(
    access: AccessTokens, forge: Callable[..., str], attacker_key: rsa.RSAPrivateKey
) -> None:
    """C-029: an OIDC ID token from an upstream IdP (its own key and `kid`), and one signed with our key."""
    id_claims = {
        "iss": "https://idp.example.com",
        "aud": "portcullis-client",
        "azp": "portcullis-client",
        "sub": "user-1",
        "nonce": "n-0S6_WzA2Mj",
        "auth_time": NOW - 5,
        "iat": NOW,
        "exp": NOW + 600,
        "email": "owner@acme.test",
    }
    idp_kid = SigningKey.from_pem(pem_of(attacker_key)).kid
    refused(
        access, compact({"alg": "RS256", "typ": "JWT", "kid": idp_kid}, id_claims, lambda s: rsa_sign(attacker_key, s))
    )
    refused(access, forge(id_claims, typ="JWT"))
    refused(access, forge({**claims(), "nonce": "n-0S6_WzA2Mj", "azp": "portcullis-client"}, typ="JWT"))


# --- C-033 / C-034: integrity and critical headers ------------------------------------------------


@pytest.mark.parametrize(
    "overrides",
    [{"org": "org-2"}, {"sub": "user-2"}, {"sid": "session-2"}, {"roles": ["owner"]}, {"exp": NOW + 601}],
)
def test_c033_tampered_payload(access: AccessTokens, forge: Callable[..., str], overrides: dict[str, Any]) -> None:
    """C-033: the payload changed after signing, the header and signature kept."""
    head, _, signature = forge().split(".")
    refused(access, f"{head}.{b64json(claims(**overrides))}.{signature}")


def test_c033_tampered_signature_or_header(access: AccessTokens, forge: Callable[..., str], kid: str) -> None:
    """C-033: one bit of the signature flipped, or the header re-encoded with an extra member."""
    head, body, signature = forge().split(".")
    raw = bytearray(base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4)))
    raw[-1] ^= 1
    refused(access, f"{head}.{body}.{b64u(bytes(raw))}")
    refused(access, f"{b64json(header(kid, cty='JWT'))}.{body}.{signature}")


@pytest.mark.parametrize("crit", [["exp2"], ["b64"], [], "exp2", ["exp"]])
def test_c034_crit_header(access: AccessTokens, forge: Callable[..., str], crit: Any) -> None:
    """C-034: an unknown (or any) `crit` header is refused, RFC 7515 section 4.1.11."""
    refused(access, forge({**claims(), "exp2": NOW + 600}, crit=crit, b64=True))
    refused(access, forge(crit=crit))


# --- C-035 / C-036: size and JWE ------------------------------------------------------------------


def test_c035_oversized_token_is_refused_before_decoding(
    access: AccessTokens, forge: Callable[..., str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """C-035: a 1 MB token (and one a byte over 8 KiB) is refused by its length, nothing decoded."""
    genuine = forge()
    head, _, signature = genuine.split(".")
    padded_claims = b64json({**claims(), "pad": "x" * MAX_TOKEN_BYTES})
    just_over = f"{head}.{padded_claims}.{signature}"[: MAX_TOKEN_BYTES + 1]
    huge = f"{head}.{'A' * (1024 * 1024)}.{signature}"

    def no_decoding(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("an oversized token was decoded")

    with monkeypatch.context() as m:
        m.setattr("identity.tokens.jws.get_unverified_header", no_decoding)
        m.setattr("identity.tokens.jwt.decode", no_decoding)
        m.setattr(base64, "urlsafe_b64decode", no_decoding)
        m.setattr(json, "loads", no_decoding)
        for token in (just_over, huge, "A" * (1024 * 1024)):
            started = time.perf_counter()
            assert refused(access, token).reason == "too large"
            assert time.perf_counter() - started < 0.5
        with pytest.raises(AssertionError, match="decoded"):
            access.verify(genuine)  # the decoders really are disabled here
    assert access.verify(genuine).subject == "user-1"


def test_c036_jwe_and_compression(
    access: AccessTokens, forge: Callable[..., str], gateway_key: rsa.RSAPrivateKey, kid: str
) -> None:
    """C-036: a JWE-shaped token (5 segments, small and zip-bomb sized) and a JWS with a `zip` header."""
    bomb = b64u(zlib.compress(b"\0" * (4 * 1024 * 1024), 9))
    jwe_headers = [
        {"alg": "RSA-OAEP-256", "enc": "A256GCM", "kid": kid},
        {"alg": "dir", "enc": "A128CBC-HS256", "zip": "DEF", "kid": kid},
        {"alg": "RSA-OAEP", "enc": "A256GCM", "zip": "DEF", "typ": "at+jwt", "kid": kid},
    ]
    for jwe_header in jwe_headers:
        for ciphertext in (b64u(b"\x01" * 64), bomb):
            token = ".".join([b64json(jwe_header), b64u(b"k" * 256), b64u(b"i" * 12), ciphertext, b64u(b"t" * 16)])
            refused(access, token)
    compressed = b64u(zlib.compress(json.dumps(claims()).encode()))
    for extra in ({"zip": "DEF"}, {"enc": "A256GCM"}):
        signing_input = f"{b64json(header(kid, **extra))}.{compressed}"
        refused(access, f"{signing_input}.{rsa_sign(gateway_key, signing_input)}")
        refused(access, forge(**extra))


# --- C-037: malformed structure -------------------------------------------------------------------


def test_c037_malformed_structure(access: AccessTokens, forge: Callable[..., str]) -> None:
    """C-037: wrong segment counts, characters outside base64url, padding, whitespace; never anything but
    `TokenError`."""
    genuine = forge()
    head, body, signature = genuine.split(".")
    truncated_json = b64u(b'{"alg":"RS256"')
    malformed = [
        "",
        ".",
        "..",
        "...",
        "....",
        f"{head}.{body}",
        f"{head}.{body}.{signature}.{signature}",
        f"{head}.{body}.{signature}.",
        f"{head}..{signature}",
        f".{body}.{signature}",
        f"{head}+.{body}.{signature}",
        f"{head}.{body}/.{signature}",
        f"{head}.{body}.{signature[:-1]}*",
        f"{head}.{body}.{signature}é",
        f"{head}.{body}.{signature}\x00",
        f"{head}=.{body}.{signature}",
        f"{head}.{body}==.{signature}",
        f"{head}.{body}.{signature}==",
        f" {genuine}",
        f"{genuine} ",
        f"{genuine}\n",
        f"{genuine}\r\n",
        f"{head}\n.{body}.{signature}",
        f"{head}.{body}\n.{signature}",
        f"{head}.{body}.{signature[:100]}\n{signature[100:]}",
        f"{head}.{body}.{signature[:100]} {signature[100:]}",
        f"{head}.{body}.{signature[:100]}\t{signature[100:]}",
        f"Bearer {genuine}",
        f"{b64u(b'not json')}.{body}.{signature}",
        f"{b64json([1, 2])}.{body}.{signature}",
        f"{b64json('RS256')}.{body}.{signature}",
        f"{truncated_json}.{body}.{signature}",
        f"{b64u(bytes([0xFF, 0xFE, 0xFD]))}.{body}.{signature}",
        f"{head}.{b64u(b'not json')}.{signature}",
        f"{head}.{b64json([claims()])}.{signature}",
        f"{head}.{b64json(None)}.{signature}",
        f"{head[:-1]}.{body}.{signature}",
        f"{head}.{body[:-1]}.{signature}",
    ]
    for token in malformed:
        with pytest.raises(TokenError):
            access.verify(token)


@pytest.mark.parametrize("alg", [["RS256"], {"RS256": 1}, None, 256, "RS256 ", "rs256", "RS384", "PS256", "ES256"])
def test_c037_algorithm_of_the_wrong_shape(access: AccessTokens, forge: Callable[..., str], alg: Any) -> None:
    """C-037: `alg` anything but the exact string RS256, even over a genuine RS256 signature."""
    refused(access, forge(alg=alg))


@pytest.mark.parametrize("suffix", ["\n", "\r\n", " ", "\t", "="])
def test_c037_trailing_whitespace_on_a_genuine_token(ring_3072: KeyRing, clock: Clock, suffix: str) -> None:
    """C-037: with a 3072-bit key the signature segment is a whole number of base64 quanta, where a lenient
    decoder would drop a trailing newline and verify the token; the token text must match exactly."""
    access = AccessTokens(ring_3072, issuer=ISSUER, audience=AUDIENCE, clock=clock)
    token, _ = access.issue(subject="user-1", organization_id="org-1", session_id="session-1")
    assert len(token.rsplit(".", 1)[1]) % 4 == 0
    refused(access, token + suffix)
    assert access.verify(token).subject == "user-1"
    refused(access, token + suffix)  # the cache holds the exact text only


# --- C-038: key rotation --------------------------------------------------------------------------


def test_c038_previous_key_accepted_until_exp_then_refused_once_retired(
    signing_key: str, old_key_pem: str, clock: Clock
) -> None:
    """C-038: a token of the previous key is accepted during the grace period (until its own `exp`), and
    refused once the key leaves the ring."""
    options: dict[str, Any] = {"issuer": ISSUER, "audience": AUDIENCE, "clock": clock}
    before_rotation = AccessTokens(KeyRing(old_key_pem), **options)
    old_token, old_claims = before_rotation.issue(subject="user-1", organization_id="org-1", session_id="s-1")

    during_grace = AccessTokens(KeyRing(signing_key, [old_key_pem]), **options)
    assert during_grace.verify(old_token) == old_claims
    new_token, _ = during_grace.issue(subject="user-1", organization_id="org-1", session_id="s-1")
    assert kid_of(new_token) == during_grace.keys.current.kid != kid_of(old_token)
    clock.now = old_claims.expires_at - 1
    assert during_grace.verify(old_token) == old_claims
    clock.now = old_claims.expires_at
    refused(during_grace, old_token)

    clock.now = NOW
    after_grace = AccessTokens(KeyRing(signing_key), **options)
    assert refused(after_grace, old_token).reason == "unknown kid"
    assert after_grace.verify(new_token).subject == "user-1"


def test_c038_previous_key_may_be_given_as_a_public_key(signing_key: str, old_key_pem: str, clock: Clock) -> None:
    """C-038: a retiring key only verifies, so its public half is enough in the ring."""
    old_private = serialization.load_pem_private_key(old_key_pem.encode(), password=None)
    assert isinstance(old_private, rsa.RSAPrivateKey)
    old_public_pem = (
        old_private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    old_token, _ = AccessTokens(KeyRing(old_key_pem), issuer=ISSUER, audience=AUDIENCE, clock=clock).issue(
        subject="user-1", organization_id="org-1", session_id="s-1"
    )
    ring = KeyRing(signing_key, [old_public_pem])
    assert ring.previous[0].signer is None
    assert AccessTokens(ring, issuer=ISSUER, audience=AUDIENCE, clock=clock).verify(old_token).subject == "user-1"
    with pytest.raises(ValueError):
        KeyRing(old_public_pem)


def test_c038_jwks_lists_current_and_previous_public_keys_only(signing_key: str, old_key_pem: str) -> None:
    """C-038: the JWKS has the current key first, then the previous ones, and no private member."""
    ring = KeyRing(signing_key, [old_key_pem])
    keys = ring.jwks()["keys"]
    assert [k["kid"] for k in keys] == [ring.current.kid, ring.previous[0].kid]
    assert ring.current.kid != ring.previous[0].kid
    for k in keys:
        assert set(k) == {"kty", "use", "alg", "kid", "n", "e"}
        assert not {"d", "p", "q", "dp", "dq", "qi", "oth", "k"} & set(k)
        assert (k["kty"], k["alg"], k["use"]) == ("RSA", "RS256", "sig")


# -- auth_time (RFC 9068 §2.2.1) -------------------------------------------------------------------


def test_auth_time_is_the_sign_in_and_a_later_token_keeps_it(access: AccessTokens) -> None:
    _, signed_in = access.issue(subject="u", organization_id="o", session_id="s")
    assert signed_in.auth_time == signed_in.issued_at
    token, later = access.issue(subject="u", organization_id="o", session_id="s", auth_time=NOW - 3600)
    assert later.auth_time == NOW - 3600
    assert access.verify(token).auth_time == NOW - 3600
    # a sign-in cannot be dated after the token
    _, clamped = access.issue(subject="u", organization_id="o", session_id="s", auth_time=NOW + 3600)
    assert clamped.auth_time == clamped.issued_at


@pytest.mark.parametrize("value", [NOW + 1, "1700000000", 1.5, True], ids=["after-iat", "string", "float", "bool"])
def test_a_bad_auth_time_is_refused(access: AccessTokens, forge: Callable[..., str], value: Any) -> None:
    assert "auth_time" in refused(access, forge(claims(auth_time=value))).reason


def test_a_token_without_auth_time_is_accepted_without_one(access: AccessTokens, forge: Callable[..., str]) -> None:
    assert access.verify(forge()).auth_time is None
    assert access.verify(forge(claims(auth_time=NOW - 60))).auth_time == NOW - 60
