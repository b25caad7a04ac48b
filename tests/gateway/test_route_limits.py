"""Per-address limits of the public HTTP routes (starting SSO, the OIDC callback, SAML metadata and ACS,
report downloads): the limit's requests from one address pass, the next is 429 with `Retry-After` and the
`RateLimit` headers, another address is unaffected; the ACS refuses a caller over its limit before any
XML is read; when Redis fails, `limits_on_redis_error` decides (logged and counted)."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from gateway.app import create_app
from store.audit import AuditAction
from tests.conftest import CLIENT_IP, error_codes, make_settings, running, sql
from tests.services import redis_server

OTHER_IP = "198.51.100.20"
LIMIT = 3
# (setting, policy name, method, path, what the route answers within its limit)
ROUTES = [
    ("sso_start_per_minute", "sso-start", "GET", "/auth/sso/nosuch", 404),
    ("oidc_callback_per_minute", "oidc-callback", "GET", "/auth/oidc/callback?state=s&code=c", 400),
    ("saml_metadata_per_minute", "saml-metadata", "GET", "/auth/saml/nosuch/metadata", 404),
    ("saml_acs_per_minute", "saml-acs", "POST", "/auth/saml/nosuch/acs", 400),
    ("report_downloads_per_minute", "report-downloads", "GET", "/reports/r-1.csv", 401),
]


def assert_route_limited(r: httpx.Response, policy: str, limit: int) -> None:
    assert r.status_code == 429, r.text
    body = r.json()
    assert error_codes(body) == ["RATE_LIMITED"]
    retry = body["errors"][0]["extensions"]["retryAfter"]
    assert 1 <= retry <= 60
    assert r.headers["retry-after"] == str(retry)
    assert r.headers["ratelimit-policy"] == f'"{policy}";q={limit};w=60'
    assert r.headers["ratelimit"] == f'"{policy}";r=0;t={retry}'
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["x-request-id"]


def send(client: httpx.AsyncClient, method: str, path: str) -> Any:
    return client.request(method, path, data={"SAMLResponse": "PHg+"} if method == "POST" else None)


def client_at(app: Any, address: str) -> httpx.AsyncClient:
    """Another caller of a running app, from `address`."""
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app, client=(address, 40001)), base_url="http://testserver"
    )


@pytest.mark.parametrize(("setting", "policy", "method", "path", "status"), ROUTES)
async def test_each_public_route_has_its_limit_per_address(
    database_url: str, signing_key: str, setting: str, policy: str, method: str, path: str, status: int
) -> None:
    app = create_app(make_settings(database_url, signing_key, **{setting: LIMIT}))
    async with running(app) as client, client_at(app, OTHER_IP) as other:
        for _ in range(LIMIT):
            assert (await send(client, method, path)).status_code == status
        assert_route_limited(await send(client, method, path), policy, LIMIT)
        assert (await send(other, method, path)).status_code == status
        # the other routes keep budgets of their own
        for _, other_policy, other_method, other_path, other_status in ROUTES:
            if other_policy != policy:
                assert (await send(client, other_method, other_path)).status_code == other_status
        metrics = (await client.get("/metrics")).text
        assert f'portcullis_rate_limited_total{{limit="{policy}"}} 1.0' in metrics
    [(details,)] = sql(
        database_url, "SELECT details FROM audit_log WHERE action = :a", a=AuditAction.EXCESS_RATE_LIMIT_EXCEEDED.value
    )
    details = details if isinstance(details, dict) else json.loads(details)
    assert details["limit"] == policy
    assert details["per"] == LIMIT


async def test_route_limits_apart_from_the_anonymous_admission_limit(database_url: str, signing_key: str) -> None:
    """Admission's per-address limit still counts these requests; the route's own limit is smaller."""
    app = create_app(make_settings(database_url, signing_key, sso_start_per_minute=2, anonymous_requests_per_minute=4))
    async with running(app) as client:
        statuses = [(await client.get("/auth/sso/nosuch")).status_code for _ in range(3)]
        assert statuses == [404, 404, 429]
        assert (await client.get("/auth/saml/nosuch/metadata")).status_code == 404
        r = await client.get("/auth/saml/nosuch/metadata")
        assert r.status_code == 429
        assert r.headers["ratelimit-policy"].startswith('"address";')


async def test_c080_forwarded_for_from_an_untrusted_peer_is_ignored(database_url: str, signing_key: str) -> None:
    app = create_app(make_settings(database_url, signing_key, sso_start_per_minute=1))
    async with running(app) as client:
        assert (await client.get("/auth/sso/nosuch", headers={"x-forwarded-for": "192.0.2.1"})).status_code == 404
        r = await client.get("/auth/sso/nosuch", headers={"x-forwarded-for": "192.0.2.2"})
        assert_route_limited(r, "sso-start", 1)


async def test_forwarded_for_from_a_trusted_proxy_keys_by_client(database_url: str, signing_key: str) -> None:
    app = create_app(make_settings(database_url, signing_key, saml_metadata_per_minute=1, trusted_proxies=[CLIENT_IP]))
    async with running(app) as proxy:
        a = {"x-forwarded-for": "192.0.2.10"}
        assert (await proxy.get("/auth/saml/nosuch/metadata", headers=a)).status_code == 404
        assert (await proxy.get("/auth/saml/nosuch/metadata", headers=a)).status_code == 429
        assert (
            await proxy.get("/auth/saml/nosuch/metadata", headers={"x-forwarded-for": "192.0.2.11"})
        ).status_code == 404


# -- the ACS ---------------------------------------------------------------------------------------------


@pytest.fixture
def idp() -> Iterator[Any]:
    from tests.saml_idp import TestIdp

    server = TestIdp()
    yield server
    server.close()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_acs_over_its_limit_refuses_before_reading_the_response(
    database_url: str, signing_key: str, idp: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gateway.saml
    from tests.gateway.test_saml import sso_setup

    validated: list[Any] = []
    original = gateway.saml.validate_response

    async def spy(*args: Any, **kwargs: Any) -> Any:
        validated.append(args)
        return await original(*args, **kwargs)

    monkeypatch.setattr(gateway.saml, "validate_response", spy)
    async for sso in sso_setup(database_url, signing_key, idp, saml_acs_per_minute=1):
        first = await sso.post(idp.respond(await sso.start()))
        assert first.status_code == 303
        assert len(validated) == 1
        r = await sso.post(idp.respond(await sso.start()))
        assert_route_limited(r, "saml-acs", 1)
        assert len(validated) == 1  # no signature verified, no XML parsed
        assert len(sso.recorder.calls) == 1


# -- when Redis fails --------------------------------------------------------------------------------------


@pytest.mark.redis
@pytest.mark.parametrize("fail_open", [False, True])
async def test_c087_route_limit_follows_the_setting_when_redis_is_down(
    fail_open: bool, caplog: pytest.LogCaptureFixture
) -> None:
    from redis.asyncio import Redis

    from gateway.route_limits import RouteLimits
    from tests.gateway.test_admission_shared import _stop_redis

    async def endpoint(_: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    with redis_server() as url:
        redis = Redis.from_url(url)
        limits = RouteLimits.build(redis, fail_open=fail_open)
        outcomes: list[str] = []
        limits.on_store_error = outcomes.append
        app = Starlette(routes=[Route("/r", endpoint, middleware=limits("some-route", 5))])
        try:
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
                assert (await client.get("/r")).status_code == 200
                assert _stop_redis(url)
                caplog.set_level(logging.WARNING, logger="portcullis")
                r = await client.get("/r")
        finally:
            await redis.aclose()
    if fail_open:
        assert r.status_code == 200
        assert outcomes == ["admitted"]
    else:
        assert r.status_code == 503
        assert r.headers["retry-after"] == "1"
        assert error_codes(r.json()) == ["INTERNAL"]
        assert outcomes == ["refused"]
    # the outage is logged once (identity/redis_health.py), naming the part that met it
    [record] = [rec for rec in caplog.records if rec.getMessage() == "redis_unavailable"]
    assert record.component == "route-limits"  # type: ignore[attr-defined]
