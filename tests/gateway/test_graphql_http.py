"""GraphQL over HTTP (docs/graphql.md, "Content types and status codes"): graphql-http's server audit against
the served gateway, anonymous and with a Bearer token; the media type and request-error status negotiated
from `Accept`; the gateway's own statuses kept; and the bad inputs of methods, `Accept` and query strings."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.app import create_app
from gateway.graphql_http import GRAPHQL_RESPONSE_JSON, JSON, negotiate
from tests.conftest import LOGIN, Tenant, error_codes, login, make_settings, running, unavailable
from tests.gateway.test_edge import count_sessions, login_body
from tests.served import serving
from tests.services import ServiceUnavailable, free_port, npm_ci

AUDIT = Path(__file__).resolve().parents[1] / "graphql_http"
GRJ = GRAPHQL_RESPONSE_JSON
TOO_MANY_ALIASES = "{ " + " ".join(f"a{i}: __typename" for i in range(40)) + " }"


def run_audit(url: str, *headers: str) -> list[dict[str, Any]]:
    """graphql-http's `auditServer` against `url` (tests/graphql_http/audit.mjs): one result per audit."""
    try:
        npm_ci(AUDIT, ("graphql-http", "graphql"), "the GraphQL-over-HTTP audit (tests/graphql_http)")
    except ServiceUnavailable as exc:
        unavailable(str(exc))
    done = subprocess.run(
        ["node", str(AUDIT / "audit.mjs"), url, *headers], cwd=AUDIT, capture_output=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-2000:]
    return [json.loads(line) for line in done.stdout.decode().splitlines() if line.strip()]


@pytest.mark.slow
async def test_graphql_over_http_audit_passes_anonymous_and_authenticated(
    database_url: str, signing_key: str, tenant: Tenant
) -> None:
    """Every audit of graphql-http's server audit is `ok`: no error, no warning, no notice."""
    app = create_app(make_settings(database_url, signing_key))
    with serving(app, free_port()) as base:
        async with httpx.AsyncClient(base_url=base) as client:
            token = (await login(client, tenant))["accessToken"]
        runs = {
            "anonymous": await asyncio.to_thread(run_audit, f"{base}/graphql"),
            "bearer": await asyncio.to_thread(run_audit, f"{base}/graphql", "authorization", f"Bearer {token}"),
        }
    failed = []
    for who, results in runs.items():
        assert len(results) >= 50, results  # the whole audit ran
        for result in results:
            if result["status"] != "ok":
                print(f"{who}: {result['status']} {result['id']} {result['name']}: {json.dumps(result)}")
                failed.append((who, result["id"]))
    assert failed == []


@pytest.fixture(scope="module")
async def edge(sqlite_url: str, signing_key: str) -> AsyncIterator[httpx.AsyncClient]:
    async with running(create_app(make_settings(sqlite_url, signing_key, env="dev"))) as client:
        yield client


def post(client: httpx.AsyncClient, body: dict[str, Any], accept: str | None, **headers: str) -> Any:
    sent = dict(headers)
    if accept is not None:
        sent["accept"] = accept
    return client.post("/graphql", json=body, headers=sent)


PARSE_ERROR = {"query": "{"}
VALIDATION_ERROR = {"query": "{ noSuchField }"}
VARIABLES_ERROR = {"query": "query Q($n: String!) { __type(name: $n) { name } }", "variables": {"n": None}}


@pytest.mark.parametrize(
    ("accept", "media_type", "request_error_status"),
    [
        (GRJ, GRJ, 400),
        (f"{GRJ}, {JSON};q=0.9", GRJ, 400),  # what Apollo Client and graphql-http's client send
        (f"{JSON}, {GRJ}", GRJ, 400),  # named alike: the specification's own type
        (JSON, JSON, 200),
        (f"{JSON}; charset=utf-8", JSON, 200),
        (f"{GRJ};q=0.5, {JSON}", JSON, 200),
        (f"{JSON}, text/plain, */*", JSON, 200),  # axios
        ("*/*", JSON, 400),  # names neither: the contract's 400
        ("application/*", JSON, 400),
        (None, JSON, 400),
    ],
)
@pytest.mark.parametrize("body", [PARSE_ERROR, VALIDATION_ERROR, VARIABLES_ERROR], ids=["parse", "validate", "vars"])
async def test_media_type_and_request_error_status_follow_accept(
    edge: httpx.AsyncClient, accept: str | None, media_type: str, request_error_status: int, body: dict[str, Any]
) -> None:
    ok = await post(edge, {"query": "{ __typename }"}, accept)
    assert ok.status_code == 200
    assert ok.headers["content-type"] == media_type
    assert ok.json()["data"] == {"__typename": "Query"}
    r = await post(edge, body, accept)
    assert r.status_code == request_error_status, r.text
    assert r.headers["content-type"] == media_type
    assert "data" not in r.json()
    assert error_codes(r.json()) == ["BAD_USER_INPUT"]


@pytest.mark.parametrize("accept", [GRJ, JSON])
async def test_the_gateways_own_statuses_are_kept_in_either_media_type(edge: httpx.AsyncClient, accept: str) -> None:
    """401 for a credential that does not verify, 400 for an operation over the limits, whatever the type."""
    r = await post(edge, {"query": "{ __typename }"}, accept, authorization="Bearer not-a-token")
    assert r.status_code == 401
    assert r.headers["www-authenticate"].startswith("Bearer")
    assert error_codes(r.json()) == ["UNAUTHENTICATED"]
    r = await post(edge, {"query": TOO_MANY_ALIASES}, accept)
    assert r.status_code == 400
    assert r.headers["content-type"] == accept
    assert error_codes(r.json()) == ["OPERATION_TOO_COMPLEX"]


@pytest.mark.parametrize(
    "accept", ["text/plain", "text/html", "image/png, text/*", f"{JSON};q=0, {GRJ};q=0", "nonsense"]
)
async def test_bad_input_unacceptable_accept_is_406_and_runs_nothing(
    client: httpx.AsyncClient, tenant: Tenant, database_url: str, accept: str
) -> None:
    before = count_sessions(database_url)
    r = await client.post("/graphql", json=login_body(tenant), headers={"accept": accept})
    assert r.status_code == 406, r.text
    assert error_codes(r.json()) == ["BAD_USER_INPUT"]
    assert "application/graphql-response+json" in r.json()["errors"][0]["message"]
    assert count_sessions(database_url) == before
    assert (await client.post("/graphql", json=login_body(tenant))).json()["data"]["login"]


async def test_bad_input_mutation_over_get_is_405_with_allow_in_either_media_type(
    client: httpx.AsyncClient, tenant: Tenant, database_url: str
) -> None:
    """C-012, as GraphQL over HTTP has it: 405 and `Allow: POST`; nothing written."""
    before = count_sessions(database_url)
    variables = json.dumps({"email": tenant.email, "password": tenant.password})
    for accept in (GRJ, JSON, "*/*"):
        r = await client.get("/graphql", params={"query": LOGIN, "variables": variables}, headers={"accept": accept})
        assert r.status_code == 405, r.text
        assert r.headers["allow"] == "POST"
        assert error_codes(r.json()) == ["BAD_USER_INPUT"]
    assert count_sessions(database_url) == before


@pytest.mark.parametrize("method", ["PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"])
async def test_bad_input_other_methods_are_405_with_allow(edge: httpx.AsyncClient, method: str) -> None:
    r = await edge.request(method, "/graphql")
    assert r.status_code == 405
    assert r.headers["allow"] == "GET, POST"


@pytest.mark.parametrize(
    ("query_string", "says"),
    [
        ("query=%7B__typename%7D&query=%7Bme%7Brole%7D%7D", "at most once"),
        ("query=%7B__typename%7D&variables=%7Bnot-json", "not JSON"),
        ("query=%7B__typename%7D&variables=%5B1%5D", "must be an object"),
        ("query=%7B__typename%7D&extensions=oops", "not JSON"),
        ("variables=%7B%7D", "No GraphQL query"),
        ("query=%7B__typename%00%7D", "cannot be stored"),
    ],
)
async def test_bad_input_malformed_get_query_string_is_400(
    edge: httpx.AsyncClient, query_string: str, says: str
) -> None:
    r = await edge.get(f"/graphql?{query_string}", headers={"accept": GRJ})
    assert r.status_code == 400, r.text
    assert error_codes(r.json()) == ["BAD_USER_INPUT"]
    assert says in r.json()["errors"][0]["message"]


async def test_get_runs_queries_with_variables(edge: httpx.AsyncClient) -> None:
    params = {"query": "query T($n: String!) { __type(name: $n) { name } }", "variables": '{"n": "Query"}'}
    r = await edge.get("/graphql", params=params, headers={"accept": GRJ})
    assert r.status_code == 200
    assert r.headers["content-type"] == GRJ
    assert r.json()["data"] == {"__type": {"name": "Query"}}


def test_negotiation_reads_quality_and_specificity() -> None:
    assert negotiate(None).media_type == JSON
    assert negotiate(b"").media_type == JSON
    assert negotiate(b"application/json;q=0.2, */*;q=0.8").media_type == GRJ  # the wildcard's quality is higher
    assert negotiate(b"text/html, */*;q=0.1").media_type == JSON
    assert negotiate(b"*/*, application/json;q=0").media_type == GRJ
    assert negotiate(b"application/json;q=x").media_type is None  # a malformed quality accepts nothing
    assert negotiate(b"application/json").request_errors_ok
    assert not negotiate(b"*/*").request_errors_ok
