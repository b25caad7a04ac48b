"""C-133 at the HTTP edge: a path, query string or ACS form holding a NUL is refused with 400 and the
gateway's JSON error before any route reads it, with the headers every response carries; and a route
that fails unexpectedly still answers through the edge (masked INTERNAL, request id, security headers),
never with a bare 500. On SQLite and on PostgreSQL, whose text cannot hold NUL."""

from __future__ import annotations

import logging
import uuid
from typing import Any

import httpx
import pytest

from tests.conftest import error_codes

SECURITY_HEADERS = (
    "x-content-type-options",
    "x-frame-options",
    "referrer-policy",
    "cross-origin-opener-policy",
    "content-security-policy",
    "cache-control",
)


async def normal_headers(client: httpx.AsyncClient) -> dict[str, str]:
    """What an ordinary JSON answer of a route carries (a download without a credential: 401)."""
    r = await client.get("/reports/r-1.csv")
    assert r.status_code == 401
    assert r.headers["content-type"] == "application/json"
    return {name: r.headers[name] for name in SECURITY_HEADERS}


def assert_edge_answer(r: httpx.Response, status: int, code: str, expected: dict[str, str]) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    assert {name: r.headers.get(name) for name in SECURITY_HEADERS} == expected
    assert r.headers["x-request-id"]
    body: dict[str, Any] = r.json()
    assert error_codes(body) == [code]
    return body


@pytest.mark.parametrize(
    ("method", "url"),
    [
        ("GET", "/auth/sso/ac%00me"),
        ("GET", "/auth/sso/acme?return_to=/home%00"),
        ("GET", "/auth/oidc/callback?state=st%00ate&code=c"),
        ("GET", "/auth/oidc/callback?state=state&code=%00"),
        ("GET", "/auth/saml/ac%00me/metadata"),
        ("POST", "/auth/saml/ac%00me/acs"),
        ("GET", "/reports/r%00.csv"),
        ("GET", "/reports/r-1.csv?x=%00"),
        ("GET", "/graphql?query=%7B__typename%7D%00"),
    ],
)
async def test_c133_nul_in_the_request_target_is_refused(
    client, tenant: Any, method: str, url: str, caplog: pytest.LogCaptureFixture
) -> None:
    expected = await normal_headers(client)
    caplog.set_level(logging.INFO, logger="portcullis")
    r = await client.request(method, url, data={"SAMLResponse": "PHg+"} if method == "POST" else None)
    body = assert_edge_answer(r, 400, "BAD_USER_INPUT", expected)
    uuid.UUID(r.headers["x-request-id"])
    assert "cannot be stored" in body["errors"][0]["message"]
    # refused before any route ran: no sign-in failure was recorded, nothing was logged as an error
    assert not [rec for rec in caplog.records if rec.levelno >= logging.WARNING]


@pytest.mark.parametrize(
    "form",
    [
        {"SAMLResponse": "PHg+\x00"},
        {"SAMLResponse": "PHg+", "RelayState": "\x00"},
        {"SAMLResponse": "PHg+", "a\x00": "b"},
    ],
)
async def test_c133_nul_in_the_acs_form_is_refused(client, tenant: Any, form: dict[str, str]) -> None:
    expected = await normal_headers(client)
    r = await client.post(f"/auth/saml/{tenant.slug}/acs", data=form)
    assert_edge_answer(r, 400, "BAD_USER_INPUT", expected)


async def test_c133_a_route_failing_unexpectedly_answers_through_the_edge(
    client, tenant: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Whatever escapes a route leaves as the masked INTERNAL error with the request id and the security
    headers (Starlette's own error page would be sent outside the gateway's middleware)."""
    from resolvers import saml as saml_service

    expected = await normal_headers(client)

    async def broken(*_: Any, **__: Any) -> Any:
        raise RuntimeError("connection to server lost: SELECT secret FROM organizations")

    monkeypatch.setattr(saml_service, "find_connection", broken)
    caplog.set_level(logging.ERROR, logger="portcullis")
    r = await client.get(f"/auth/saml/{tenant.slug}/metadata", headers={"X-Request-ID": "c133-route-fails"})
    body = assert_edge_answer(r, 500, "INTERNAL", expected)
    assert r.headers["x-request-id"] == "c133-route-fails"
    assert body == {
        "errors": [
            {"message": "Unexpected error.", "extensions": {"code": "INTERNAL", "requestId": "c133-route-fails"}}
        ]
    }
    assert "secret" not in r.text
    [record] = [rec for rec in caplog.records if rec.getMessage() == "unexpected error in a route"]
    assert record.request_id == "c133-route-fails"  # type: ignore[attr-defined]
    assert record.exc_info is not None


async def test_storable_targets_still_reach_their_routes(client, tenant: Any) -> None:
    assert (await client.get(f"/auth/saml/{tenant.slug}/metadata")).status_code == 404  # no SAML connection
    assert (await client.get("/auth/sso/acme%E2%82%AC?return_to=/caf%C3%A9")).status_code == 404
    assert (await client.get("/graphql", params={"query": "{ __typename }"})).status_code == 200
