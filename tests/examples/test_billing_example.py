"""The example billing service (examples/billing/): a REST upstream that answers only to the gateway's context
tokens, keeps each organization's invoices to that organization even when the gateway is bypassed or wrong,
and streams bodies both ways without holding them whole.

Tokens are minted the way the gateway mints them and forged one property at a time (tests/examples/tokens.py).
The service runs in process (httpx's ASGITransport), but for what only a socket shows (an answer cut short, a
gibibyte download's first bytes, the keys fetched from a JWKS URL): there `python -m examples.billing` runs on
loopback, reading its keys from a JWKS the test serves.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator, MutableMapping
from pathlib import Path
from typing import Any

import httpx
import pytest
from jose import jwt
from starlette.applications import Starlette

from examples.billing.app import (
    AUDIENCE,
    CHUNK,
    MAX_DOWNLOAD,
    MAX_JSON_BODY,
    create_app,
    download_chunks,
    download_sha256,
    invoice_id,
    seeded_invoice,
)
from examples.context_tokens import UNAUTHENTICATED, ContextTokenVerifier
from identity.tokens import KeyRing, generate_private_key_pem
from tests.conftest import unavailable
from tests.examples.billing_node import JwksServer, serving_jwks
from tests.examples.tokens import ISSUER, REFUSED, mint_token
from tests.examples.tokens import forged as forge
from tests.services import ServiceUnavailable, free_port, stop_process

ROOT = Path(__file__).resolve().parents[2]
NAMED = frozenset({"billing:read", "billing:write"})
MIB = 1 << 20
# every route that answers only to a context token, as (method, path)
GUARDED = [
    ("GET", "/invoices"),
    ("GET", "/invoices/inv-org-a-1"),
    ("POST", "/invoices"),
    ("POST", "/uploads"),
    ("GET", "/downloads/10"),
    ("GET", "/echo"),
    ("POST", "/echo"),
    ("GET", "/session"),
    ("GET", "/truncated"),
    ("GET", "/slow?seconds=0"),
    ("GET", "/hop"),
]
BAD_BODIES = {
    "not JSON": b"not json",
    "not UTF-8": b'{"customer": "\xff", "amount": 5}',
    "a list": b"[]",
    "null": b"null",
    "no amount": b'{"customer": "Ada"}',
    "no customer": b'{"amount": 5}',
    "an unknown field": b'{"customer": "Ada", "amount": 5, "status": "paid"}',
    "customer empty": b'{"customer": "", "amount": 5}',
    "customer blank": b'{"customer": "   ", "amount": 5}',
    "customer a number": b'{"customer": 7, "amount": 5}',
    "customer too long": b'{"customer": "' + b"a" * 201 + b'", "amount": 5}',
    "amount a string": b'{"customer": "Ada", "amount": "5"}',
    "amount a boolean": b'{"customer": "Ada", "amount": true}',
    "amount zero": b'{"customer": "Ada", "amount": 0}',
    "amount negative": b'{"customer": "Ada", "amount": -3}',
    "amount too large": b'{"customer": "Ada", "amount": 1000000001}',
    "amount NaN": b'{"customer": "Ada", "amount": NaN}',
    "amount overflowing": b'{"customer": "Ada", "amount": 1e999}',
}
DOWNLOAD_SIZES = [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * MIB + 5]
BAD_SIZES = [str(MAX_DOWNLOAD + 1), "99999999999", "-1", "1.5", "abc", "1e3"]
COOKIE = re.compile(r"billing_session=[A-Za-z0-9_-]{16,}; HttpOnly; Path=/")


@pytest.fixture(scope="module")
def keys() -> KeyRing:
    return KeyRing(generate_private_key_pem())


def verifier_of(keys: KeyRing) -> ContextTokenVerifier:
    return ContextTokenVerifier(jwks_url=None, jwks=keys.jwks(), issuer=ISSUER, audience=AUDIENCE)


@pytest.fixture
async def client(keys: KeyRing) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(verifier_of(keys))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://billing.test") as c:
        yield c


def mint(
    keys: KeyRing,
    org: str = "org-a",
    *,
    audience: str = AUDIENCE,
    issuer: str = ISSUER,
    clock: Callable[[], float] = time.time,
    permissions: frozenset[str] = NAMED,
) -> str:
    return mint_token(keys, org, audience=audience, named=NAMED, permissions=permissions, issuer=issuer, clock=clock)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def refused_headers(keys: KeyRing, how: str) -> dict[str, str]:
    """The Authorization header of a refused request: the forged tokens of tests/examples/tokens.py, and two more."""
    match how:
        case "minted in the future":
            return bearer(mint(keys, clock=lambda: time.time() + 120))
        case "basic scheme":
            return {"Authorization": f"Basic {mint(keys)}"}
    token = forge(keys, how, mint)
    return {} if token is None else bearer(token)


def seeded(org: str) -> list[dict[str, Any]]:
    return [seeded_invoice(org, n).as_json() for n in (1, 2, 3)]


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def code(response: httpx.Response) -> str:
    return str(response.json()["errors"][0]["extensions"]["code"])


async def test_health_needs_no_token_and_unknown_routes_are_not_found(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    assert (
        await client.get("/elsewhere", headers=bearer(mint(KeyRing(generate_private_key_pem()))))
    ).status_code == 404
    assert (await client.delete("/invoices")).status_code == 405


async def test_a_valid_token_reads_its_own_organizations_invoices(client: httpx.AsyncClient, keys: KeyRing) -> None:
    token = mint(keys, "org-a")
    response = await client.get("/invoices", headers=bearer(token))
    assert response.status_code == 200
    assert response.json() == seeded("org-a")
    assert [i["id"] for i in response.json()] == ["inv-org-a-1", "inv-org-a-2", "inv-org-a-3"]
    assert {i["organizationId"] for i in response.json()} == {"org-a"}
    one = await client.get(f"/invoices/{invoice_id('org-a', 2)}", headers=bearer(token))
    assert one.json() == seeded("org-a")[1]
    missing = await client.get("/invoices/inv-org-a-9", headers=bearer(token))
    assert (missing.status_code, code(missing)) == (404, "NOT_FOUND")


@pytest.mark.parametrize("how", [*REFUSED, "minted in the future", "basic scheme"])
async def test_anything_but_a_valid_context_token_is_refused_before_any_route(
    client: httpx.AsyncClient, keys: KeyRing, how: str
) -> None:
    headers = refused_headers(keys, how)
    for method, path in GUARDED:
        body = b'{"customer": "Mallory", "amount": 1}' if method == "POST" else None
        response = await client.request(method, path, content=body, headers=headers)
        assert response.status_code == 401, (method, path)
        assert response.json() == UNAUTHENTICATED
        assert response.headers["www-authenticate"] == "Bearer"
        assert "set-cookie" not in response.headers
    # the refused POST /invoices created nothing
    assert (await client.get("/invoices", headers=bearer(mint(keys)))).json() == seeded("org-a")


async def test_two_organizations_never_mix(client: httpx.AsyncClient, keys: KeyRing) -> None:
    a, b = bearer(mint(keys, "org-a")), bearer(mint(keys, "org-b"))
    created = await client.post("/invoices", json={"customer": "Edsger", "amount": 99.5}, headers=a)
    assert created.status_code == 201
    new_id = created.json()["id"]
    assert (await client.get("/invoices", headers=b)).json() == seeded("org-b")
    for id in (new_id, "inv-org-a-1"):
        response = await client.get(f"/invoices/{id}", headers=b)
        assert (response.status_code, code(response)) == (404, "NOT_FOUND")
    assert (await client.get(f"/invoices/{new_id}", headers=a)).json() == created.json()
    assert len((await client.get("/invoices", headers=a)).json()) == 4


async def test_organizations_whose_ids_share_a_prefix_share_invoice_ids_but_never_invoices(
    client: httpx.AsyncClient, keys: KeyRing
) -> None:
    first, second = "acme-corp-1", "acme-corp-2"
    assert invoice_id(first, 1) == invoice_id(second, 1)
    for org in (first, second):
        response = await client.get(f"/invoices/{invoice_id(org, 1)}", headers=bearer(mint(keys, org)))
        assert response.json()["organizationId"] == org


async def test_creating_an_invoice_needs_billing_write(client: httpx.AsyncClient, keys: KeyRing) -> None:
    reader = bearer(mint(keys, "org-r", permissions=frozenset({"billing:read"})))
    assert jwt.get_unverified_claims(reader["Authorization"].split()[1])["scope"] == "billing:read"
    for body in (b'{"customer": "Ada", "amount": 5}', b"not json"):
        response = await client.post("/invoices", content=body, headers=reader)
        assert (response.status_code, code(response)) == (403, "FORBIDDEN")
    assert (await client.get("/invoices", headers=reader)).json() == seeded("org-r")
    writer = bearer(mint(keys, "org-r"))
    response = await client.post("/invoices", json={"customer": "Ada", "amount": 42}, headers=writer)
    assert response.status_code == 201
    assert response.headers["location"] == "/invoices/inv-org-r-4"
    expected = {"id": "inv-org-r-4", "organizationId": "org-r", "customer": "Ada", "amount": 42}
    assert response.json() == {**expected, "currency": "EUR", "status": "open"}
    assert (await client.get(response.headers["location"], headers=reader)).json() == response.json()
    response = await client.post("/invoices", json={"customer": "Grace", "amount": 1e9}, headers=writer)
    assert (response.status_code, response.json()["id"]) == (201, "inv-org-r-5")


@pytest.mark.parametrize("body", BAD_BODIES.values(), ids=BAD_BODIES.keys())
async def test_a_bad_invoice_body_is_refused(client: httpx.AsyncClient, keys: KeyRing, body: bytes) -> None:
    headers = {**bearer(mint(keys, "org-v")), "Content-Type": "application/json"}
    response = await client.post("/invoices", content=body, headers=headers)
    assert (response.status_code, code(response)) == (400, "BAD_REQUEST")
    assert (await client.get("/invoices", headers=headers)).json() == seeded("org-v")


async def test_an_invoice_body_over_64_kib_is_too_large(client: httpx.AsyncClient, keys: KeyRing) -> None:
    headers = bearer(mint(keys, "org-l"))
    body = b'{"customer": "' + b"a" * MAX_JSON_BODY + b'", "amount": 5}'
    response = await client.post("/invoices", content=body, headers=headers)
    assert (response.status_code, code(response)) == (413, "PAYLOAD_TOO_LARGE")
    assert (await client.get("/invoices", headers=headers)).json() == seeded("org-l")


async def test_an_upload_is_counted_and_hashed_as_it_streams(client: httpx.AsyncClient, keys: KeyRing) -> None:
    headers = bearer(mint(keys))
    data = os.urandom(3 * MIB + 7)
    assert (await client.post("/uploads", content=data, headers=headers)).json() == {
        "bytes": len(data),
        "sha256": digest(data),
    }

    async def pieces() -> AsyncIterator[bytes]:
        for start in range(0, len(data), 10_007):
            yield data[start : start + 10_007]

    assert (await client.post("/uploads", content=pieces(), headers=headers)).json()["sha256"] == digest(data)
    assert (await client.post("/uploads", headers=headers)).json() == {"bytes": 0, "sha256": digest(b"")}


async def sent(app: Starlette, path: str, headers: dict[str, str]) -> tuple[dict[str, str], list[bytes]]:
    """The headers and each body message the app sends for `GET path`, as a server gets them (httpx's
    ASGITransport joins the body into one)."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "server": ("billing.test", 80),
    }
    asked = asyncio.Event()
    messages: list[MutableMapping[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if asked.is_set():
            await asyncio.Event().wait()  # no disconnect: the streaming response stops listening once it is done
        asked.set()
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: MutableMapping[str, Any]) -> None:
        messages.append(message)

    await app(scope, receive, send)
    start, *bodies = messages
    assert bodies[-1].get("more_body", False) is False
    return {k.decode(): v.decode() for k, v in start["headers"]}, [m["body"] for m in bodies if m["body"]]


def test_the_download_bytes_are_the_seeds_block_repeated() -> None:
    block = hashlib.shake_256(b"portcullis billing downloads").digest(CHUNK)
    assert b"".join(download_chunks(2 * CHUNK + 10)) == block + block + block[:10]
    assert download_sha256(2 * CHUNK + 10) == digest(block + block + block[:10])
    assert download_sha256(0) == digest(b"")


@pytest.mark.parametrize("size", DOWNLOAD_SIZES)
async def test_a_download_streams_exactly_its_size_in_64_kib_chunks(
    client: httpx.AsyncClient, keys: KeyRing, size: int
) -> None:
    response = await client.get(f"/downloads/{size}", headers=bearer(mint(keys)))
    assert response.status_code == 200
    assert response.headers["content-length"] == str(size)
    assert len(response.content) == size
    assert digest(response.content) == download_sha256(size)
    headers, chunks = await sent(create_app(verifier_of(keys)), f"/downloads/{size}", bearer(mint(keys)))
    assert headers["content-length"] == str(size)
    assert [len(c) for c in chunks] == [CHUNK] * (size // CHUNK) + ([size % CHUNK] if size % CHUNK else [])


@pytest.mark.parametrize("size", BAD_SIZES)
async def test_a_download_over_a_gibibyte_or_of_no_size_is_refused(
    client: httpx.AsyncClient, keys: KeyRing, size: str
) -> None:
    response = await client.get(f"/downloads/{size}", headers=bearer(mint(keys)))
    assert (response.status_code, code(response)) == (400, "BAD_REQUEST")


async def test_echo_shows_what_arrived(client: httpx.AsyncClient, keys: KeyRing) -> None:
    token = mint(keys)
    headers = [("Authorization", f"Bearer {token}"), ("X-Repeat", "1"), ("X-Repeat", "2"), ("X-Request-ID", "r-9")]
    seen = (await client.get("/echo?b=2&a=1&a=%20x", headers=headers)).json()
    assert (seen["method"], seen["path"], seen["rawPath"], seen["query"]) == ("GET", "/echo", "/echo", "b=2&a=1&a=%20x")
    pairs = [tuple(pair) for pair in seen["headers"]]
    assert [p for p in pairs if p[0] in ("authorization", "x-repeat", "x-request-id")] == [
        ("authorization", f"Bearer {token}"),
        ("x-repeat", "1"),
        ("x-repeat", "2"),
        ("x-request-id", "r-9"),
    ]
    assert seen["claims"] == jwt.get_unverified_claims(token)
    assert "bodyLength" not in seen
    seen = (await client.post("/echo", content=b"z" * 12_345, headers=headers)).json()
    assert (seen["method"], seen["bodyLength"]) == ("POST", 12_345)


async def test_session_sets_a_fresh_http_only_cookie(client: httpx.AsyncClient, keys: KeyRing) -> None:
    cookies = [(await client.get("/session", headers=bearer(mint(keys)))).headers["set-cookie"] for _ in range(2)]
    assert all(COOKIE.fullmatch(c) for c in cookies)
    assert cookies[0] != cookies[1]


async def test_hop_answers_hop_by_hop_headers_beside_an_end_to_end_one(
    client: httpx.AsyncClient, keys: KeyRing
) -> None:
    response = await client.get("/hop", headers=bearer(mint(keys)))
    assert {k: response.headers[k] for k in ("connection", "x-custom-hop", "keep-alive", "proxy-authenticate")} == {
        "connection": "X-Custom-Hop",
        "x-custom-hop": "1",
        "keep-alive": "timeout=5",
        "proxy-authenticate": "Basic",
    }
    assert response.headers["x-billing"] == "yes"


async def test_slow_sleeps_what_it_is_asked_up_to_30_seconds(keys: KeyRing) -> None:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    app = create_app(verifier_of(keys), sleep=sleep)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://billing.test") as client:
        headers = bearer(mint(keys))
        for asked, answered in (("0.25", 0.25), ("100", 30.0), (None, 1.0)):
            params = {} if asked is None else {"seconds": asked}
            assert (await client.get("/slow", params=params, headers=headers)).json() == {"slept": answered}
        for bad in ("", "-1", "soon", "nan", "inf"):
            response = await client.get("/slow", params={"seconds": bad}, headers=headers)
            assert (response.status_code, code(response)) == (400, "BAD_REQUEST")
    assert slept == [0.25, 30.0, 1.0]


@contextlib.contextmanager
def billing_upstream(jwks_url: str, issuer: str) -> Iterator[str]:
    """The base URL of `python -m examples.billing` on a free loopback port, trusting the keys at `jwks_url`."""
    port = free_port()
    env = {**os.environ, "BILLING_PORT": str(port), "BILLING_JWKS_URL": jwks_url, "BILLING_ISSUER": issuer}
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen([sys.executable, "-m", "examples.billing"], cwd=ROOT, env=env, stdout=log, stderr=log)
        try:
            deadline = time.monotonic() + 30
            while True:
                with contextlib.suppress(httpx.TransportError):
                    if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                        break
                if proc.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    raise ServiceUnavailable(f"the billing service did not start: {log.read()[-500:]!r}")
                time.sleep(0.05)
            yield f"http://127.0.0.1:{port}"
        finally:
            stop_process(proc)


@pytest.fixture(scope="module")
def served(keys: KeyRing) -> Iterator[tuple[httpx.Client, JwksServer]]:
    try:
        with (
            serving_jwks(keys.jwks()) as jwks,
            billing_upstream(jwks.url, ISSUER) as url,
            httpx.Client(base_url=url) as client,
        ):
            yield client, jwks
    except ServiceUnavailable as exc:
        unavailable(str(exc))


def test_the_served_service_reads_its_keys_from_the_jwks_url(
    served: tuple[httpx.Client, JwksServer], keys: KeyRing
) -> None:
    client, jwks = served
    assert client.get("/invoices", headers=bearer(mint(keys, "org-s"))).json() == seeded("org-s")
    assert client.get("/invoices", headers=refused_headers(keys, "unknown kid")).status_code == 401
    assert jwks.fetches == 1


def test_an_answer_cut_short_drops_the_connection(served: tuple[httpx.Client, JwksServer], keys: KeyRing) -> None:
    client, _ = served
    received: list[bytes] = []
    with client.stream("GET", "/truncated", headers=bearer(mint(keys))) as response:
        assert response.headers["content-length"] == "1000000"
        with pytest.raises(httpx.RemoteProtocolError):
            received.extend(response.iter_raw())
    assert len(b"".join(received)) == 100_000
    assert client.get("/healthz").status_code == 200


def test_a_gibibyte_download_is_streamed_not_built(served: tuple[httpx.Client, JwksServer], keys: KeyRing) -> None:
    client, _ = served
    with client.stream("GET", f"/downloads/{MAX_DOWNLOAD}", headers=bearer(mint(keys))) as response:
        assert response.headers["content-length"] == str(MAX_DOWNLOAD)
        first = b""
        for chunk in response.iter_raw():
            first += chunk
            if len(first) >= 4 * MIB:
                break
    assert first[: 4 * MIB] == b"".join(download_chunks(4 * MIB))
    response = client.get(f"/downloads/{8 * MIB}", headers=bearer(mint(keys)))
    assert digest(response.content) == download_sha256(8 * MIB)


def test_hop_by_hop_headers_leave_the_served_service(served: tuple[httpx.Client, JwksServer], keys: KeyRing) -> None:
    client, _ = served
    response = client.get("/hop", headers=bearer(mint(keys)))
    assert response.headers["connection"] == "X-Custom-Hop"
    assert (response.headers["x-custom-hop"], response.headers["keep-alive"]) == ("1", "timeout=5")
    assert (response.headers["proxy-authenticate"], response.headers["x-billing"]) == ("Basic", "yes")
