"""CORS (docs/browsers.md): `PORTCULLIS_CORS_ALLOWED_ORIGINS` checked at start-up, preflights answered before
authentication and admission, actual requests authenticated and limited with the headers a frontend reads,
and nothing at all for an origin not allowed. The browser's side: tests/gateway/oidc/test_cross_origin.py."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from gateway.app import create_app
from gateway.cli.common import load_settings
from gateway.settings import UnusableSettingError
from tests.conftest import error_codes, make_settings, running

FRONTEND = "http://127.0.0.1:5173"
OTHER = "https://evil.example"


def preflight(origin: str, method: str = "POST", headers: str = "content-type, x-csrf-token") -> dict[str, str]:
    return {"origin": origin, "access-control-request-method": method, "access-control-request-headers": headers}


def cors_settings(sqlite_url: str, signing_key: str, **overrides: Any) -> Any:
    return make_settings(
        sqlite_url,
        signing_key,
        cors_allowed_origins=f"{FRONTEND},https://app.example.com",
        cors_max_age_seconds=900,
        **overrides,
    )


@pytest.fixture
async def gateway(sqlite_url: str, signing_key: str) -> AsyncIterator[httpx.AsyncClient]:
    async with running(create_app(cors_settings(sqlite_url, signing_key))) as client:
        yield client


async def test_preflight_of_an_allowed_origin_is_answered_and_cached(gateway: httpx.AsyncClient) -> None:
    r = await gateway.options("/graphql", headers=preflight(FRONTEND, headers="authorization, content-type"))
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == FRONTEND
    assert r.headers["access-control-allow-credentials"] == "true"
    assert r.headers["access-control-max-age"] == "900"
    allowed = {h.strip().lower() for h in r.headers["access-control-allow-headers"].split(",")}
    assert {"authorization", "x-csrf-token", "content-type", "x-api-key"} <= allowed
    assert r.headers["access-control-allow-methods"] == "GET, HEAD, POST, PUT, PATCH, DELETE"
    assert "x-request-id" in r.headers  # still inside the edge's request id and security headers
    assert r.headers["x-content-type-options"] == "nosniff"


async def test_preflights_spend_no_limit_but_requests_do_with_the_headers_exposed(
    sqlite_url: str, signing_key: str
) -> None:
    """Anonymous callers get 2 requests a minute here: ten preflights spend none of them; the third actual
    request is a 429 whose `Retry-After` and `RateLimit` the page may read."""
    async with running(create_app(cors_settings(sqlite_url, signing_key, anonymous_requests_per_minute=2))) as c:
        await limited(c)


async def limited(gateway: httpx.AsyncClient) -> None:
    for _ in range(10):
        assert (await gateway.options("/graphql", headers=preflight(FRONTEND))).status_code == 200
    answers = [
        await gateway.post("/graphql", json={"query": "{ __typename }"}, headers={"origin": FRONTEND}) for _ in range(3)
    ]
    assert [r.status_code for r in answers] == [200, 200, 429]
    refused = answers[-1]
    assert error_codes(refused.json()) == ["RATE_LIMITED"]
    assert refused.headers["access-control-allow-origin"] == FRONTEND
    exposed = {h.strip().lower() for h in refused.headers["access-control-expose-headers"].split(",")}
    assert {"x-request-id", "retry-after", "ratelimit", "ratelimit-policy", "www-authenticate"} <= exposed
    assert "retry-after" in refused.headers


async def test_actual_requests_are_still_authenticated(gateway: httpx.AsyncClient) -> None:
    r = await gateway.post(
        "/graphql",
        json={"query": "{ __typename }"},
        headers={"origin": FRONTEND, "authorization": "Bearer not-a-token"},
    )
    assert r.status_code == 401
    assert r.headers["access-control-allow-origin"] == FRONTEND
    assert "Origin" in r.headers["vary"]


async def test_bad_input_origin_not_allowed_gets_no_cors_headers(gateway: httpx.AsyncClient) -> None:
    for origin in (OTHER, "http://127.0.0.1:5174", "https://app.example.com.evil.example", "null", FRONTEND + "/"):
        r = await gateway.options("/graphql", headers=preflight(origin))
        assert r.status_code == 403, origin
        assert error_codes(r.json()) == ["FORBIDDEN"]
        assert not [h for h in r.headers if h.startswith("access-control-")], (origin, r.headers)
        r = await gateway.get("/graphql", params={"query": "{ __typename }"}, headers={"origin": origin})
        assert r.status_code == 200  # answered as without CORS: the browser keeps the body from the page
        assert not [h for h in r.headers if h.startswith("access-control-")], (origin, r.headers)
        assert "Origin" in r.headers["vary"]


async def test_preflight_of_an_unlisted_header_or_method_is_refused(gateway: httpx.AsyncClient) -> None:
    r = await gateway.options("/graphql", headers=preflight(FRONTEND, headers="x-something-else"))
    assert r.status_code == 400
    r = await gateway.options("/graphql", headers=preflight(FRONTEND, method="TRACE"))
    assert r.status_code == 400


async def test_without_the_setting_there_is_no_cors(sqlite_url: str, signing_key: str) -> None:
    async with running(create_app(make_settings(sqlite_url, signing_key))) as client:
        r = await client.options("/graphql", headers=preflight(FRONTEND))
        assert r.status_code == 405
        assert not [h for h in r.headers if h.startswith("access-control-")]


async def test_any_origin_without_credentials(sqlite_url: str, signing_key: str) -> None:
    async with running(create_app(make_settings(sqlite_url, signing_key, cors_allowed_origins="*"))) as client:
        r = await client.options("/graphql", headers=preflight(OTHER, headers="authorization, content-type"))
        assert r.status_code == 200
        assert r.headers["access-control-allow-origin"] == "*"
        assert "access-control-allow-credentials" not in r.headers
        r = await client.post("/graphql", json={"query": "{ __typename }"}, headers={"origin": OTHER})
        assert r.headers["access-control-allow-origin"] == "*"
        assert "access-control-allow-credentials" not in r.headers


async def test_exact_origins_without_credentials_when_told(sqlite_url: str, signing_key: str) -> None:
    settings = make_settings(sqlite_url, signing_key, cors_allowed_origins=FRONTEND, cors_allow_credentials=False)
    async with running(create_app(settings)) as client:
        r = await client.options("/graphql", headers=preflight(FRONTEND))
        assert r.headers["access-control-allow-origin"] == FRONTEND
        assert "access-control-allow-credentials" not in r.headers


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("app.example.com", "is not an origin"),
        ("ftp://app.example.com", "is not an origin"),
        ("https://app.example.com/", "no path"),
        ("https://app.example.com/app", "no path"),
        ("https://user@app.example.com", "no user"),
        ("https://app.example.com?x=1", "no path"),
        ("https://App.Example.com", "use 'https://app.example.com'"),
        ("https://app.example.com:443", "use 'https://app.example.com'"),
        ("http://127.0.0.1:99999", "is not an origin"),
        ("null", "is not an origin"),
        ("https://a.example, *", "'*' stands alone"),
    ],
)
def test_bad_input_malformed_origin_setting_is_a_startup_error(
    sqlite_url: str, signing_key: str, value: str, says: str, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    with pytest.raises(UnusableSettingError) as exc:
        make_settings(sqlite_url, signing_key, cors_allowed_origins=value)
    assert "PORTCULLIS_CORS_ALLOWED_ORIGINS" in str(exc.value)
    assert says in str(exc.value)
    assert "scheme://host[:port]" in str(exc.value)
    # from the environment, as `portcullis serve` reads it: one line, and the process stops
    monkeypatch.setenv("PORTCULLIS_ENV", "test")
    monkeypatch.setenv("PORTCULLIS_DATABASE_URL", sqlite_url)
    monkeypatch.setenv("PORTCULLIS_CORS_ALLOWED_ORIGINS", value)
    with pytest.raises(SystemExit) as stopped:
        load_settings()
    assert "PORTCULLIS_CORS_ALLOWED_ORIGINS" in str(stopped.value.code)


def test_bad_input_any_origin_with_credentials_is_a_startup_error(sqlite_url: str, signing_key: str) -> None:
    with pytest.raises(UnusableSettingError) as exc:
        make_settings(sqlite_url, signing_key, cors_allowed_origins="*", cors_allow_credentials=True)
    assert "PORTCULLIS_CORS_ALLOWED_ORIGINS='*' cannot go with PORTCULLIS_CORS_ALLOW_CREDENTIALS=true" in str(exc.value)


def test_origins_from_the_environment_are_comma_separated(
    sqlite_url: str, signing_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PORTCULLIS_CORS_ALLOWED_ORIGINS", f" {FRONTEND} , https://[::1]:8443,https://app.example.com")
    settings = make_settings(sqlite_url, signing_key)
    policy = settings.cors_policy()
    assert policy is not None
    assert policy.origins == (FRONTEND, "https://[::1]:8443", "https://app.example.com")
    assert policy.credentials
