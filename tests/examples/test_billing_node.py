"""The example billing service on Node (examples/billing-node), verifying the gateway's context tokens with
`jose` against a JWKS it fetches: the same routes and guarantees as the Python example, from a second
implementation, down to the same seeded invoices and the same download bytes.

Tokens are minted and forged through the Python example's helpers; the service runs as a real node process on
loopback, one per module, fetching its keys from a JWKS the test serves. Tests that change invoices use an
organization of their own, so they do not depend on each other's order.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest
from jose import jwt

from examples.billing.app import CHUNK, MAX_DOWNLOAD, MAX_JSON_BODY, download_chunks, download_sha256
from examples.context_tokens import UNAUTHENTICATED
from identity.tokens import KeyRing, generate_private_key_pem
from tests.conftest import unavailable
from tests.examples.billing_node import JwksServer, billing_node_upstream, serving_jwks
from tests.examples.test_billing_example import (
    BAD_BODIES,
    BAD_SIZES,
    COOKIE,
    DOWNLOAD_SIZES,
    GUARDED,
    MIB,
    bearer,
    code,
    digest,
    mint,
    refused_headers,
    seeded,
)
from tests.examples.tokens import ISSUER, REFUSED
from tests.services import ServiceUnavailable


@pytest.fixture(scope="module")
def keys() -> KeyRing:
    return KeyRing(generate_private_key_pem())


@pytest.fixture(scope="module")
def jwks(keys: KeyRing) -> Iterator[JwksServer]:
    with serving_jwks(keys.jwks()) as server:
        yield server


@pytest.fixture(scope="module")
def node(jwks: JwksServer) -> Iterator[httpx.Client]:
    try:
        with billing_node_upstream(jwks.url, ISSUER) as url, httpx.Client(base_url=url) as client:
            yield client
    except ServiceUnavailable as exc:
        unavailable(str(exc))


def fresh_org() -> str:
    return f"org-{uuid.uuid4().hex[:8]}"


def test_health_needs_no_token_and_what_is_no_route(node: httpx.Client) -> None:
    assert node.get("/healthz").json() == {"status": "ok"}
    assert node.get("/elsewhere").status_code == 404
    assert node.delete("/invoices").status_code == 405
    assert node.post("/healthz").status_code == 405


def test_a_valid_token_reads_its_own_organizations_invoices(
    node: httpx.Client, keys: KeyRing, jwks: JwksServer
) -> None:
    org = fresh_org()
    headers = bearer(mint(keys, org))
    assert node.get("/invoices", headers=headers).json() == seeded(org)
    assert node.get(f"/invoices/inv-{org[:8]}-2", headers=headers).json() == seeded(org)[1]
    missing = node.get(f"/invoices/inv-{org[:8]}-9", headers=headers)
    assert (missing.status_code, code(missing)) == (404, "NOT_FOUND")
    assert jwks.fetches >= 1


@pytest.mark.parametrize("how", [*REFUSED, "minted in the future", "basic scheme"])
def test_anything_but_a_valid_context_token_is_refused_before_any_route(
    node: httpx.Client, keys: KeyRing, how: str
) -> None:
    headers = refused_headers(keys, how)  # for org-a, which no other test here changes
    for method, path in GUARDED:
        body = b'{"customer": "Mallory", "amount": 1}' if method == "POST" else None
        response = node.request(method, path, content=body, headers=headers)
        assert response.status_code == 401, (method, path)
        assert response.json() == UNAUTHENTICATED
        assert response.headers["www-authenticate"] == "Bearer"
        assert "set-cookie" not in response.headers
    assert node.get("/invoices", headers=bearer(mint(keys))).json() == seeded("org-a")


def test_two_organizations_never_mix(node: httpx.Client, keys: KeyRing) -> None:
    a, b = fresh_org(), fresh_org()
    created = node.post("/invoices", json={"customer": "Edsger", "amount": 99.5}, headers=bearer(mint(keys, a)))
    assert created.status_code == 201
    assert node.get("/invoices", headers=bearer(mint(keys, b))).json() == seeded(b)
    for id in (created.json()["id"], f"inv-{a[:8]}-1"):
        response = node.get(f"/invoices/{id}", headers=bearer(mint(keys, b)))
        assert (response.status_code, code(response)) == (404, "NOT_FOUND")
    assert node.get(f"/invoices/{created.json()['id']}", headers=bearer(mint(keys, a))).json() == created.json()


def test_creating_an_invoice_needs_billing_write(node: httpx.Client, keys: KeyRing) -> None:
    org = fresh_org()
    reader = bearer(mint(keys, org, permissions=frozenset({"billing:read"})))
    assert jwt.get_unverified_claims(reader["Authorization"].split()[1])["scope"] == "billing:read"
    for body in (b'{"customer": "Ada", "amount": 5}', b"not json"):
        response = node.post("/invoices", content=body, headers=reader)
        assert (response.status_code, code(response)) == (403, "FORBIDDEN")
    assert node.get("/invoices", headers=reader).json() == seeded(org)
    response = node.post("/invoices", json={"customer": "Ada", "amount": 42}, headers=bearer(mint(keys, org)))
    assert response.status_code == 201
    assert response.headers["location"] == f"/invoices/inv-{org[:8]}-4"
    assert response.json() == {
        "id": f"inv-{org[:8]}-4",
        "organizationId": org,
        "customer": "Ada",
        "amount": 42,
        "currency": "EUR",
        "status": "open",
    }
    assert node.get(response.headers["location"], headers=reader).json() == response.json()


@pytest.mark.parametrize("body", BAD_BODIES.values(), ids=BAD_BODIES.keys())
def test_a_bad_invoice_body_is_refused(node: httpx.Client, keys: KeyRing, body: bytes) -> None:
    org = fresh_org()
    headers = {**bearer(mint(keys, org)), "Content-Type": "application/json"}
    response = node.post("/invoices", content=body, headers=headers)
    assert (response.status_code, code(response)) == (400, "BAD_REQUEST")
    assert node.get("/invoices", headers=headers).json() == seeded(org)


def test_an_invoice_body_over_64_kib_is_too_large(node: httpx.Client, keys: KeyRing) -> None:
    org = fresh_org()
    body = b'{"customer": "' + b"a" * MAX_JSON_BODY + b'", "amount": 5}'
    response = node.post("/invoices", content=body, headers=bearer(mint(keys, org)))
    assert (response.status_code, code(response)) == (413, "PAYLOAD_TOO_LARGE")
    assert node.get("/invoices", headers=bearer(mint(keys, org))).json() == seeded(org)


def test_an_upload_is_counted_and_hashed_as_it_streams(node: httpx.Client, keys: KeyRing) -> None:
    headers = bearer(mint(keys))
    data = os.urandom(3 * MIB + 7)
    assert node.post("/uploads", content=data, headers=headers).json() == {"bytes": len(data), "sha256": digest(data)}
    pieces = (data[start : start + 10_007] for start in range(0, len(data), 10_007))
    assert node.post("/uploads", content=pieces, headers=headers).json()["sha256"] == digest(data)
    assert node.post("/uploads", headers=headers).json() == {"bytes": 0, "sha256": digest(b"")}


@pytest.mark.parametrize("size", DOWNLOAD_SIZES)
def test_a_download_streams_exactly_its_size(node: httpx.Client, keys: KeyRing, size: int) -> None:
    response = node.get(f"/downloads/{size}", headers=bearer(mint(keys)))
    assert response.status_code == 200
    assert response.headers["content-length"] == str(size)
    assert len(response.content) == size
    assert digest(response.content) == download_sha256(size)


def test_a_gibibyte_download_is_streamed_not_built(node: httpx.Client, keys: KeyRing) -> None:
    with node.stream("GET", f"/downloads/{MAX_DOWNLOAD}", headers=bearer(mint(keys))) as response:
        assert response.headers["content-length"] == str(MAX_DOWNLOAD)
        first = b""
        for chunk in response.iter_raw():
            first += chunk
            if len(first) >= 4 * MIB:
                break
    assert first[: 4 * MIB] == b"".join(download_chunks(4 * MIB))
    assert len(first) >= 4 * MIB > CHUNK


@pytest.mark.parametrize("size", BAD_SIZES)
def test_a_download_over_a_gibibyte_or_of_no_size_is_refused(node: httpx.Client, keys: KeyRing, size: str) -> None:
    response = node.get(f"/downloads/{size}", headers=bearer(mint(keys)))
    assert (response.status_code, code(response)) == (400, "BAD_REQUEST")


def test_echo_shows_what_arrived(node: httpx.Client, keys: KeyRing) -> None:
    token = mint(keys)
    headers = [("Authorization", f"Bearer {token}"), ("X-Repeat", "1"), ("X-Repeat", "2"), ("X-Request-ID", "r-9")]
    seen = node.get("/echo?b=2&a=1&a=%20x", headers=headers).json()
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
    seen = node.post("/echo", content=b"z" * 12_345, headers=headers).json()
    assert (seen["method"], seen["bodyLength"]) == ("POST", 12_345)


def test_session_sets_a_fresh_http_only_cookie(node: httpx.Client, keys: KeyRing) -> None:
    cookies = [node.get("/session", headers=bearer(mint(keys))).headers["set-cookie"] for _ in range(2)]
    assert all(COOKIE.fullmatch(c) for c in cookies)
    assert cookies[0] != cookies[1]


def test_an_answer_cut_short_drops_the_connection(node: httpx.Client, keys: KeyRing) -> None:
    received: list[bytes] = []
    with node.stream("GET", "/truncated", headers=bearer(mint(keys))) as response:
        assert response.headers["content-length"] == "1000000"
        with pytest.raises(httpx.RemoteProtocolError):
            received.extend(response.iter_raw())
    assert len(b"".join(received)) == 100_000
    assert node.get("/healthz").status_code == 200


def test_hop_answers_hop_by_hop_headers_beside_an_end_to_end_one(node: httpx.Client, keys: KeyRing) -> None:
    response = node.get("/hop", headers=bearer(mint(keys)))
    assert response.headers["connection"] == "X-Custom-Hop"
    assert (response.headers["x-custom-hop"], response.headers["keep-alive"]) == ("1", "timeout=5")
    assert (response.headers["proxy-authenticate"], response.headers["x-billing"]) == ("Basic", "yes")


def test_slow_sleeps_what_it_is_asked(node: httpx.Client, keys: KeyRing) -> None:
    headers = bearer(mint(keys))
    started = time.monotonic()
    assert node.get("/slow", params={"seconds": "0.3"}, headers=headers).json() == {"slept": 0.3}
    assert time.monotonic() - started >= 0.3
    for bad in ("", "-1", "soon", "nan", "inf"):
        response = node.get("/slow", params={"seconds": bad}, headers=headers)
        assert (response.status_code, code(response)) == (400, "BAD_REQUEST")
