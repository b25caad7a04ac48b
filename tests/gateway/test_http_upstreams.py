"""HTTP routes forwarded to a real HTTP upstream: the example billing service (examples/billing), verifying the
gateway's context tokens against its JWKS, both served by uvicorn on free ports."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from jose import jwt

from gateway.app import create_app
from tests.conftest import PASSWORD, Tenant, gql, login, make_settings, make_tenant, sql
from tests.http_upstreams import Billing, billing_service, get, raw_request, serving, status_of

ISSUER = "http://gateway.test"
ROUTES = """
[[permission]]
name = "billing:write"
description = "Create invoices"
roles = ["owner", "admin", "manager"]

[[http_upstream]]
name = "billing"
url = "{url}"
prefix = "/api/billing"
timeout_seconds = {timeout}
max_body_bytes = 4096

[[http_upstream.route]]
methods = ["GET"]
path = "/invoices/{{id}}"
rule = {{ requires_scopes = [["billing:read"]] }}
cost = 2

[[http_upstream.route]]
methods = ["POST"]
path = "/invoices"
rule = {{ requires_scopes = [["billing:write"]], requires_plan = "professional" }}
cost = 5

[[http_upstream.route]]
methods = ["GET", "POST"]
path = "/echo"
rule = {{ authenticated = true }}
audit = false

[[http_upstream.route]]
methods = ["POST"]
path = "/uploads"
rule = {{ authenticated = true }}
max_body_bytes = 3000000

[[http_upstream.route]]
methods = ["GET"]
path = "/healthz"
rule = {{ public = true }}
cost = 0

[[http_upstream.route]]
methods = ["GET"]
path = "/{{what}}"
rule = {{ authenticated = true }}

[[http_upstream.route]]
methods = ["GET"]
path = "/downloads/{{size}}"
rule = {{ authenticated = true }}

[[http_upstream.route]]
methods = ["GET"]
path = "/cookie/session"
rule = {{ authenticated = true }}
allow_set_cookie = true
"""


@pytest.fixture
def billing(signing_key: str) -> Iterator[Billing]:
    with billing_service(signing_key, ISSUER) as upstream:
        yield upstream


def routes_file(tmp_path: Path, url: str, timeout: float = 5) -> Path:
    path = tmp_path / "upstreams.toml"
    path.write_text(ROUTES.format(url=url, timeout=timeout))
    return path


@pytest.fixture
async def gateway(database_url: str, signing_key: str, billing: Billing, tmp_path: Path) -> AsyncIterator[str]:
    settings = make_settings(
        database_url, signing_key, upstreams_file=routes_file(tmp_path, billing.url), public_url=ISSUER
    )
    with serving(create_app(settings), lifespan="on") as url:
        yield url


@pytest.fixture
async def client(gateway: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=gateway, timeout=30) as c:
        yield c


async def bearer(client: httpx.AsyncClient, t: Tenant) -> dict[str, str]:
    return {"authorization": f"Bearer {(await login(client, t))['accessToken']}"}


async def test_a_route_is_forwarded_with_a_context_token_the_upstream_verifies(
    client: httpx.AsyncClient, billing: Billing, tenant: Tenant
) -> None:
    auth = await bearer(client, tenant)
    invoice = f"inv-{tenant.org_id[:8]}-1"
    r = await client.get(f"/api/billing/invoices/{invoice}", headers=auth)
    assert r.status_code == 200, r.text
    assert r.json()["organizationId"] == tenant.org_id
    received = billing.recorder.received[-1]
    assert received.path == f"/invoices/{invoice}"  # the prefix stripped
    assert received.headers["x-request-id"] == r.headers["x-request-id"]
    claims = jwt.get_unverified_claims(received.headers["authorization"].removeprefix("Bearer "))
    assert (claims["aud"], claims["iss"], claims["org"], claims["sub"]) == (
        "billing",
        ISSUER,
        tenant.org_id,
        tenant.user_id,
    )
    # only the permissions the billing routes name, and of those only the caller's
    assert set(claims["scope"].split()) == {"billing:read", "billing:write"}
    # another tenant's invoice is the upstream's 404, passed through
    r = await client.get("/api/billing/invoices/inv-someone-else-1", headers=auth)
    assert r.status_code == 404


async def test_c138_credentials_cookies_and_hop_by_hop_headers_never_reach_the_upstream(
    client: httpx.AsyncClient, billing: Billing, tenant: Tenant
) -> None:
    auth = await bearer(client, tenant)
    r = await client.post(
        "/api/billing/echo?x=1&y=%20",
        content=b'{"a": 1}',
        headers={
            **auth,
            "content-type": "application/json",
            "accept-language": "fr",
            "cookie": "portcullis_other=1",
            "x-forwarded-for": "198.51.100.66",
            "forwarded": "for=198.51.100.66",
            "x-real-ip": "198.51.100.66",
            "connection": "x-hop",
            "x-hop": "1",
            "te": "trailers",
            "proxy-authorization": "Basic eDp5",
            "x-request-id": "bad id with spaces",
        },
    )
    assert r.status_code == 200, r.text
    echoed = r.json()
    headers = {name: value for name, value in echoed["headers"]}
    assert headers["authorization"] != auth["authorization"]
    assert headers["authorization"].startswith("Bearer ")
    for dropped in ("cookie", "forwarded", "x-real-ip", "x-hop", "te", "proxy-authorization", "x-api-key"):
        assert dropped not in headers, dropped
    assert headers["x-forwarded-for"] == "127.0.0.1"  # the peer the edge trusts, never the client's claim
    assert headers["accept-language"] == "fr"
    assert headers["content-type"] == "application/json"
    assert headers["x-forwarded-prefix"] == "/api/billing"
    # a malformed request id is replaced, and the upstream sees the one the client gets back
    assert headers["x-request-id"] == r.headers["x-request-id"] != "bad id with spaces"
    assert echoed["query"] == "x=1&y=%20"
    assert echoed["bodyLength"] == 8


async def test_rules_answer_401_and_403_with_what_is_missing_and_forward_nothing(
    client: httpx.AsyncClient, billing: Billing, tenant: Tenant, database_url: str
) -> None:
    r = await client.get("/api/billing/invoices/inv-1")
    assert r.status_code == 401
    assert r.json()["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
    viewer = await make_tenant(database_url, slug="viewers", email="v@viewers.test", role="viewer")
    r = await client.get("/api/billing/invoices/inv-1", headers=await bearer(client, viewer))
    assert r.status_code == 403
    error = r.json()["errors"][0]
    assert error["extensions"] == {"code": "FORBIDDEN", "requiredScopes": [["billing:read"]]}
    starter = await make_tenant(database_url, slug="small", email="o@small.test", plan="starter")
    r = await client.post(
        "/api/billing/invoices", json={"customer": "A", "amount": 1}, headers=await bearer(client, starter)
    )
    assert r.status_code == 403
    assert r.json()["errors"][0]["extensions"] == {"code": "FORBIDDEN", "requiredPlan": "professional"}
    assert billing.recorder.paths() == []
    # a public route needs no credential
    r = await client.get("/api/billing/healthz")
    assert r.status_code == 200
    assert [r.path for r in billing.recorder.received] == ["/healthz"]


async def test_an_api_key_is_held_to_its_scopes(client: httpx.AsyncClient, billing: Billing, tenant: Tenant) -> None:
    auth = await bearer(client, tenant)
    keys = {}
    for name, scopes in (("reader", '["billing:read"]'), ("other", '["organization:read"]')):
        created = await gql(
            client,
            f'mutation {{ createApiKey(input: {{name: "{name}", scopes: {scopes}}}) {{ secret }} }}',
            token=auth["authorization"].removeprefix("Bearer "),
        )
        keys[name] = created.json()["data"]["createApiKey"]["secret"]
    invoice = f"/api/billing/invoices/inv-{tenant.org_id[:8]}-1"
    assert (await client.get(invoice, headers={"x-api-key": keys["other"]})).status_code == 403
    r = await client.get(invoice, headers={"x-api-key": keys["reader"]})
    assert r.status_code == 200, r.text
    claims = jwt.get_unverified_claims(billing.recorder.received[-1].headers["authorization"].removeprefix("Bearer "))
    assert (claims["scope"], claims["amr"]) == ("billing:read", ["api_key"])


async def test_a_route_spends_its_cost_and_explain_forwards_nothing(
    client: httpx.AsyncClient, billing: Billing, database_url: str
) -> None:
    t = await make_tenant(database_url, slug="budget", email="o@budget.test", limits={"COST_PER_MINUTE": 5})
    auth = await bearer(client, t)
    invoice = f"/api/billing/invoices/inv-{t.org_id[:8]}-1"
    r = await client.get(invoice, headers={**auth, "x-portcullis-explain": "1"})
    assert r.status_code == 200
    explained = r.json()["explain"]
    assert explained["route"] == "/invoices/{id}"
    assert explained["cost"] == 2
    assert explained["allowed"] is True
    assert explained["rule"] == {"authenticated": True, "requiresScopes": [["billing:read"]]}
    assert billing.recorder.paths() == []
    assert (await client.get(invoice, headers=auth)).status_code == 200
    assert (await client.get(invoice, headers=auth)).status_code == 200
    r = await client.get(invoice, headers=auth)  # 2 + 2 spent, 2 more would pass the budget of 5
    assert r.status_code == 429
    assert r.json()["errors"][0]["extensions"]["code"] == "RATE_LIMITED"
    assert "retry-after" in r.headers
    assert len(billing.recorder.paths()) == 2
    # the tenant's one cost budget, which GraphQL operations spend too
    r = await client.get(invoice, headers={**auth, "x-portcullis-explain": "1"})
    limits = {limit["name"]: limit for limit in r.json()["explain"]["rateLimits"]}
    assert (limits["tenant-cost"]["limit"], limits["tenant-cost"]["remaining"]) == (5, 1)
    r = await gql(client, "{ organization { slug } }", token=auth["authorization"].removeprefix("Bearer "))
    assert r.json()["extensions"]["cost"] == {
        "requested": 1,
        "remaining": 0,
        "resetAt": r.json()["extensions"]["cost"]["resetAt"],
    }


async def test_c140_paths_and_methods_outside_the_routes_are_refused_and_never_forwarded(
    gateway: str, billing: Billing, tenant: Tenant
) -> None:
    async with httpx.AsyncClient(base_url=gateway) as client:
        auth = await bearer(client, tenant)
    for path in (
        "/api/billing/../graphql",
        "/api/billing/invoices/../../admin",
        "/api/billing/%2e%2e/admin",
        "/api/billing/invoices/%2E%2E",
        "/api/billing/invoices/%252e%252e",
        "/api/billing//invoices/1",
        "/api/billing/invoices/a%2f..%2fb",
        "/api/billing/invoices/..\\admin",
        "/api/billing/invoices/a%5cb",
        "/api/billing/nothing/here",
        "/api/billing/invoices/1/",
        "/api/billing",
    ):
        response = raw_request(gateway, get(path, auth))
        assert status_of(response) == 404, (path, response[:300])
        assert b'"NOT_FOUND"' in response
    response = raw_request(gateway, get("/api/billing/invoices/1", auth).replace(b"GET ", b"DELETE ", 1))
    assert status_of(response) == 405
    assert b"\r\nallow: get\r\n" in response.lower()
    assert billing.recorder.paths() == []


async def test_c140_smuggling_attempts_are_refused_by_the_server_and_never_forwarded(
    gateway: str, billing: Billing, tenant: Tenant
) -> None:
    async with httpx.AsyncClient(base_url=gateway) as client:
        token = (await bearer(client, tenant))["authorization"]
    head = f"POST /api/billing/echo HTTP/1.1\r\nHost: gateway.test\r\nAuthorization: {token}\r\n".encode()
    attempts = [
        head
        + b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /api/billing/echo HTTP/1.1\r\n\r\n",
        head + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
        head + b"Transfer-Encoding: chunked\r\n\r\n-5\r\nabc\r\n0\r\n\r\n",
        head + b"Content-Length: 3\r\nContent-Length: 5\r\n\r\nabcde",
        head + b"Transfer-Encoding: chunked, identity\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    ]
    for attempt in attempts:
        response = raw_request(gateway, attempt)
        assert status_of(response) == 400, (attempt, response[:300])
    assert billing.recorder.paths() == []


async def test_bodies_over_the_route_limit_are_413_and_unsent(
    client: httpx.AsyncClient, billing: Billing, tenant: Tenant
) -> None:
    auth = await bearer(client, tenant)
    r = await client.post("/api/billing/echo", content=b"x" * 4097, headers=auth)
    assert r.status_code == 413
    assert r.json()["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"

    async def chunked(size: int) -> AsyncIterator[bytes]:
        for _ in range(size // 1000):
            yield b"y" * 1000

    r = await client.post("/api/billing/echo", content=chunked(5000), headers=auth)
    assert r.status_code == 413
    assert billing.recorder.paths() == []
    # within the route's own, larger limit, of unknown length
    r = await client.post("/api/billing/uploads", content=chunked(2_000_000), headers=auth)
    assert r.status_code == 200, r.text
    assert r.json()["bytes"] == 2_000_000
    r = await client.post("/api/billing/echo", content=chunked(3000), headers=auth)
    assert r.json()["bodyLength"] == 3000


async def test_upstream_cookies_and_hop_by_hop_headers_stop_at_the_gateway(
    client: httpx.AsyncClient, billing: Billing, tenant: Tenant
) -> None:
    auth = await bearer(client, tenant)
    r = await client.get("/api/billing/session", headers=auth)
    assert r.status_code == 200
    assert "set-cookie" not in r.headers
    r = await client.get("/api/billing/cookie/session", headers=auth)  # a route that allows it
    assert r.headers["set-cookie"].startswith("billing_session=")
    r = await client.get("/api/billing/hop", headers=auth)
    assert r.status_code == 200
    for dropped in ("x-custom-hop", "keep-alive", "proxy-authenticate"):
        assert dropped not in r.headers, dropped
    assert r.headers["x-billing"] == "yes"
    assert r.headers.get_list("x-request-id") == [r.headers["x-request-id"]]
    assert r.headers["x-content-type-options"] == "nosniff"


async def test_an_upstream_that_dies_mid_answer_cuts_the_answer_short(
    client: httpx.AsyncClient, tenant: Tenant
) -> None:
    auth = await bearer(client, tenant)
    with pytest.raises(httpx.RemoteProtocolError):
        await client.get("/api/billing/truncated", headers=auth)
    # the gateway goes on answering
    assert (await client.get("/api/billing/healthz")).status_code == 200


async def test_an_unreachable_or_slow_upstream_is_upstream_unavailable(
    database_url: str, signing_key: str, billing: Billing, tmp_path: Path, tenant: Tenant
) -> None:
    from tests.services import free_port

    for url, path, status in (
        (f"http://127.0.0.1:{free_port()}", "/api/billing/echo", 502),
        (billing.url, "/api/billing/slow", 504),
    ):
        upstreams = routes_file(tmp_path, url, 0.5)
        settings = make_settings(database_url, signing_key, upstreams_file=upstreams, public_url=ISSUER)
        with serving(create_app(settings), lifespan="on") as gateway:
            async with httpx.AsyncClient(base_url=gateway, timeout=10) as client:
                auth = await bearer(client, tenant)
                r = await client.get(path + "?seconds=3", headers=auth)
        assert r.status_code == status, r.text
        extensions = r.json()["errors"][0]["extensions"]
        assert extensions["code"] == "UPSTREAM_UNAVAILABLE"
        assert extensions["upstream"] == "billing"
        assert extensions["requestId"] == r.headers["x-request-id"]


async def test_an_audited_route_writes_one_entry_per_request(
    client: httpx.AsyncClient, tenant: Tenant, database_url: str
) -> None:
    auth = await bearer(client, tenant)
    r = await client.post("/api/billing/invoices", json={"customer": "Ada", "amount": 12.5}, headers=auth)
    assert r.status_code == 201, r.text
    assert r.headers["location"].startswith("/invoices/")
    await client.get(f"/api/billing/invoices/inv-{tenant.org_id[:8]}-1", headers=auth)  # GET: not audited
    await asyncio.sleep(0.1)
    rows = sql(
        database_url,
        "SELECT action, result, resource_id, request_id, details FROM audit_log WHERE action = 'upstream_request'",
    )
    assert len(rows) == 1, rows
    action, result, resource, request_id, details = rows[0]
    assert (action, result, resource, request_id) == (
        "upstream_request",
        "success",
        "billing",
        r.headers["x-request-id"],
    )
    for shown in ('"POST"', '"/invoices"', '"status": 201'):
        assert shown in str(details).replace("'", '"'), details
    assert PASSWORD not in str(details)
    r = await gql(
        client,
        '{ auditLogs(filter: {upstream: "billing"}, first: 5) { edges { node { action requestId } } } }',
        token=auth["authorization"].removeprefix("Bearer "),
    )
    nodes = [edge["node"] for edge in r.json()["data"]["auditLogs"]["edges"]]
    assert nodes == [{"action": "upstream_request", "requestId": request_id}], r.text


async def test_metrics_count_routes_operations_and_upstream_calls(
    client: httpx.AsyncClient, billing: Billing, tenant: Tenant
) -> None:
    auth = await bearer(client, tenant)
    invoice = f"/api/billing/invoices/inv-{tenant.org_id[:8]}-1"
    for _ in range(2):
        assert (await client.get(invoice, headers=auth)).status_code == 200
    assert (await client.get("/api/billing/invoices/missing", headers=auth)).status_code == 404  # the service's
    assert (await client.get("/api/billing/no/route", headers=auth)).status_code == 404  # no route
    await gql(client, "query Mine { organization { slug } }", token=auth["authorization"].removeprefix("Bearer "))
    await gql(client, "{ organization { slug } }", token=auth["authorization"].removeprefix("Bearer "))
    text = (await client.get("/metrics")).text

    def value(sample: str) -> float:
        line = next((line for line in text.splitlines() if line.startswith(sample + " ")), None)
        assert line is not None, f"{sample} not in /metrics"
        return float(line.rsplit(" ", 1)[1])

    route = 'kind="route",name="GET /api/billing/invoices/{id}"'
    assert value(f'portcullis_request_duration_seconds_count{{{route},outcome="2xx"}}') == 2
    assert value(f'portcullis_request_duration_seconds_count{{{route},outcome="4xx"}}') == 1
    assert value('portcullis_request_duration_seconds_count{kind="gateway",name="other",outcome="4xx"}') >= 1
    assert value('portcullis_request_duration_seconds_count{kind="graphql",name="Mine",outcome="2xx"}') == 1
    assert value('portcullis_request_duration_seconds_count{kind="graphql",name="anonymous",outcome="2xx"}') >= 1
    assert value('portcullis_upstream_request_duration_seconds_count{outcome="ok",upstream="billing"}') == 3
    assert value('portcullis_upstream_requests_total{upstream="billing"}') == 3
    assert value('portcullis_upstream_failures_total{upstream="billing"}') == 0
    assert value('portcullis_upstream_circuit_open{upstream="billing"}') == 0
    assert value('portcullis_upstream_in_flight{upstream="billing"}') == 0
    assert value("portcullis_requests_in_flight") == 1  # this request


async def test_a_download_the_client_leaves_stops_being_read_from_the_upstream(gateway: str, tenant: Tenant) -> None:
    async with httpx.AsyncClient(base_url=gateway, timeout=30) as client:
        auth = await bearer(client, tenant)
        async with client.stream("GET", f"/api/billing/downloads/{500 * 1024 * 1024}", headers=auth) as response:
            assert response.status_code == 200
            async for _ in response.aiter_raw():
                break  # the client reads one chunk of 500 MB and hangs up
    async with httpx.AsyncClient(base_url=gateway, timeout=30) as client:
        sample = 'portcullis_upstream_request_duration_seconds_count{outcome="client_gone",upstream="billing"} 1.0'
        for _ in range(100):
            if sample in (await client.get("/metrics")).text:
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the gateway kept reading a download nobody waits for")


async def test_an_admitted_route_answer_carries_the_ratelimit_headers(
    client: httpx.AsyncClient, billing: Billing, tenant: Tenant
) -> None:
    """Every admitted answer tells the caller its budgets (draft-ietf-httpapi-ratelimit-headers), as a 429 does."""
    auth = await bearer(client, tenant)
    first = await client.get(f"/api/billing/invoices/inv-{tenant.org_id[:8]}-1", headers=auth)
    second = await client.get(f"/api/billing/invoices/inv-{tenant.org_id[:8]}-1", headers=auth)
    assert first.status_code == second.status_code == 200
    assert '"tenant-minute";q=6000;w=60' in first.headers["ratelimit-policy"]  # PROFESSIONAL
    remaining = [int(r.headers["ratelimit"].split('"tenant-minute";r=')[1].split(";")[0]) for r in (first, second)]
    assert remaining[1] == remaining[0] - 1
