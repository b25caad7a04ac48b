"""The edge in front of the schema: request ids, security headers, the body limit, the transports the
GraphQL endpoint accepts, GraphiQL, and the health probes."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import create_engine, func, select

from gateway.app import create_app
from store.db import sync_url
from store.models import AuthSession
from tests.conftest import LOGIN, Tenant, cost_of, error_codes, gql, make_settings, running
from tests.services import free_port

PROD_SECRETS = {"api_key_pepper": "p" * 40, "cookie_secret": "c" * 40, "data_encryption_key": "d" * 40}
MIB = 1024 * 1024


@pytest.fixture(scope="module")
async def edge(sqlite_url: str, signing_key: str) -> AsyncIterator[Any]:
    """A dev-mode client for tests that write nothing."""
    async with running(create_app(make_settings(sqlite_url, signing_key, env="dev"))) as client:
        yield client


@pytest.fixture(scope="module")
async def prod(sqlite_url: str, signing_key: str) -> AsyncIterator[Any]:
    settings = make_settings(sqlite_url, signing_key, env="prod", **PROD_SECRETS)
    async with running(create_app(settings)) as client:
        yield client


def count_sessions(url: str) -> int:
    engine = create_engine(sync_url(url))
    try:
        with engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(AuthSession)).scalar_one())
    finally:
        engine.dispose()


def login_body(t: Tenant) -> dict[str, Any]:
    return {"query": LOGIN, "variables": {"email": t.email, "password": t.password}}


# -- request id ---------------------------------------------------------------------------------------


# the parameters are fixed values (no uuid4() here): every pytest-xdist worker must collect the same tests
A_UUID = "3f2b8c1e-9d4a-4e7b-8c2d-5a6f7e8d9c0b"


@pytest.mark.parametrize(
    "given",
    [A_UUID, "abc12345", "req-2026.11_23", "A" * 64],
)
async def test_valid_request_id_is_echoed(edge, given: str) -> None:
    r = await edge.get("/healthz", headers={"X-Request-ID": given})
    assert r.headers["x-request-id"] == given


@pytest.mark.parametrize(
    "given",
    [
        "A" * 65,  # too long
        "short",  # too short
        "bad id with spaces",
        "<script>alert(1)</script>",
        "abc12345;drop",
        "urn:" + uuid.UUID(A_UUID).hex,  # accepted by uuid.UUID, but not a canonical id
        "{" + A_UUID + "}",
        "",
    ],
)
async def test_invalid_request_id_is_replaced(edge, given: str) -> None:
    r = await edge.get("/healthz", headers={"X-Request-ID": given})
    rid = r.headers["x-request-id"]
    assert rid != given
    assert str(uuid.UUID(rid)) == rid


async def test_two_request_ids_are_replaced(edge) -> None:
    r = await edge.get("/healthz", headers=[("X-Request-ID", "first-id-1"), ("X-Request-ID", "second-id-2")])
    rid = r.headers["x-request-id"]
    assert rid not in ("first-id-1", "second-id-2")
    uuid.UUID(rid)
    assert len(r.headers.get_list("x-request-id")) == 1


async def test_generated_request_ids_differ(edge) -> None:
    a = (await edge.get("/healthz")).headers["x-request-id"]
    await asyncio.sleep(0.002)
    b = (await edge.get("/healthz")).headers["x-request-id"]
    assert a != b
    # made by the gateway: version 7, ordered by time (the audit log indexes them at the end)
    assert uuid.UUID(a).version == uuid.UUID(b).version == 7
    assert a < b
    uuid.UUID(b)


async def test_every_response_carries_a_request_id(edge) -> None:
    responses = {
        200: await edge.get("/healthz"),
        400: await edge.post("/graphql", content=b"{not json", headers={"content-type": "application/json"}),
        401: await gql(edge, "{ __typename }", token="not-a-jwt"),
        404: await edge.get("/nowhere"),
        413: await edge.post("/graphql", content=b"x" * (MIB + 1), headers={"content-type": "application/json"}),
    }
    for status, r in responses.items():
        assert r.status_code == status, (status, r.text)
        uuid.UUID(r.headers["x-request-id"])


# -- security headers ---------------------------------------------------------------------------------


def assert_security_headers(r: Any) -> None:
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["x-frame-options"] == "DENY"
    assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
    assert r.headers["cache-control"] == "no-store"


async def test_security_headers_on_every_response(edge) -> None:
    for r in [
        await edge.get("/healthz"),
        await edge.get("/readyz"),
        await gql(edge, "{ __typename }"),
        await gql(edge, "{ nope }"),
        await gql(edge, "{ __typename }", token="not-a-jwt"),
        await edge.get("/nowhere"),
        await edge.post("/graphql", content=b"x" * (MIB + 1)),
    ]:
        assert_security_headers(r)
        assert "strict-transport-security" not in r.headers
    api = await gql(edge, "{ __typename }")
    assert api.headers["content-security-policy"] == "default-src 'none'; frame-ancestors 'none'"


async def test_hsts_only_in_prod(prod) -> None:
    for r in [await prod.get("/healthz"), await gql(prod, "{ __typename }"), await prod.get("/nowhere")]:
        assert_security_headers(r)
        assert r.headers["strict-transport-security"].startswith("max-age=")


# -- body limit ---------------------------------------------------------------------------------------


async def test_body_over_the_limit_by_content_length(edge) -> None:
    body = b'{"query": "{ __typename }", "pad": "' + b"x" * MIB + b'"}'
    r = await edge.post("/graphql", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert error_codes(r.json()) == ["BAD_USER_INPUT"]
    assert "exceeds" in r.json()["errors"][0]["message"]


async def test_body_just_under_the_limit_is_read(edge) -> None:
    pad = MIB - 100
    body = b'{"query": "{ __typename }", "extensions": {"pad": "' + b"x" * pad + b'"}}'
    assert len(body) <= MIB
    r = await edge.post("/graphql", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 200, r.text
    assert r.json() == {"data": {"__typename": "Query"}, "extensions": {"cost": cost_of(0)}}


async def test_chunked_body_over_the_limit(edge) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"query": "{ __typename }", "pad": "'
        for _ in range(40):
            yield b"x" * 32 * 1024
        yield b'"}'

    r = await edge.post("/graphql", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert error_codes(r.json()) == ["BAD_USER_INPUT"]


async def test_smaller_limit_is_honoured(sqlite_url: str, signing_key: str) -> None:
    app = create_app(make_settings(sqlite_url, signing_key, max_body_bytes=2048))
    async with running(app) as client:
        ok = await gql(client, "{ __typename }")
        assert ok.status_code == 200
        big = await client.post("/graphql", json={"query": "{ __typename }", "pad": "x" * 3000})
        assert big.status_code == 413
        assert "2048" in big.json()["errors"][0]["message"]


async def test_bad_content_length(edge) -> None:
    r = await edge.post("/graphql", content=b"{}", headers={"content-length": "abc"})
    assert r.status_code == 400
    assert error_codes(r.json()) == ["BAD_USER_INPUT"]


async def test_huge_syntax_error_is_refused_quickly(edge) -> None:
    """C-016: a 1 MB document of opening braces is refused with 400 or 413, fast."""
    body = b'{"query": "' + b"{" * 1_000_000 + b'"}'
    started = time.perf_counter()
    r = await edge.post("/graphql", content=body, headers={"content-type": "application/json"})
    elapsed = time.perf_counter() - started
    assert r.status_code in (400, 413)
    assert r.json()["errors"][0]["extensions"]["code"]
    assert elapsed < 1.0


# -- what the endpoint accepts ------------------------------------------------------------------------


@pytest.mark.parametrize("body", [b"{not json", b"", b'"just a string"', b"42", b"null"])
async def test_invalid_json_is_400(edge, body: bytes) -> None:
    r = await edge.post("/graphql", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400
    assert r.headers["content-type"].startswith("application/json")
    assert error_codes(r.json()) == ["BAD_USER_INPUT"]


async def test_array_batching_is_refused(client, tenant: Tenant, database_url: str) -> None:
    """C-004: batching is off; a list of operations executes none of them."""
    before = count_sessions(database_url)
    r = await client.post("/graphql", json=[login_body(tenant), login_body(tenant)])
    assert r.status_code == 400
    body = r.json()
    assert "data" not in body
    assert error_codes(body) == ["BAD_USER_INPUT"]
    assert "batching" in body["errors"][0]["message"].lower()
    assert count_sessions(database_url) == before


async def test_mutation_over_get_is_refused(client, tenant: Tenant, database_url: str) -> None:
    """C-012: GET carries queries only; a login over GET is 405 (GraphQL over HTTP) and writes nothing."""
    before = count_sessions(database_url)
    r = await client.get(
        "/graphql",
        params={
            "query": LOGIN,
            "variables": f'{{"email": "{tenant.email}", "password": "{tenant.password}"}}',
        },
    )
    assert r.status_code == 405
    assert r.headers["allow"] == "POST"
    assert error_codes(r.json()) == ["BAD_USER_INPUT"]
    assert "mutation" in r.json()["errors"][0]["message"].lower()
    assert count_sessions(database_url) == before
    # the same document over POST works, so the refusal was the method's
    assert (await gql(client, LOGIN, {"email": tenant.email, "password": tenant.password})).json()["data"]
    assert count_sessions(database_url) == before + 1


async def test_query_over_get_works(edge) -> None:
    r = await edge.get("/graphql", params={"query": "{ __typename }"})
    assert r.status_code == 200
    assert r.json() == {"data": {"__typename": "Query"}, "extensions": {"cost": cost_of(0)}}


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "text/plain; charset=utf-8"]
)
async def test_simple_request_content_types_are_refused(
    client, tenant: Tenant, database_url: str, content_type: str
) -> None:
    """C-013: a cross-site form or text/plain POST never reaches the schema."""
    import json

    before = count_sessions(database_url)
    r = await client.post(
        "/graphql", content=json.dumps(login_body(tenant)).encode(), headers={"content-type": content_type}
    )
    assert r.status_code == 400, r.text
    assert r.json()["errors"][0]["message"] == "Unsupported content type"
    assert error_codes(r.json()) == ["BAD_USER_INPUT"]
    assert count_sessions(database_url) == before


async def test_form_encoded_query_is_refused(edge) -> None:
    r = await edge.post("/graphql", data={"query": "{ __typename }"})
    assert r.status_code == 400
    assert "data" not in r.json()


async def test_multipart_is_refused(edge) -> None:
    """C-014: uploads are disabled; a multipart request is a 400."""
    operations = '{"query": "mutation($f: Upload!) { upload(file: $f) }", "variables": {"f": null}}'
    r = await edge.post(
        "/graphql",
        data={"operations": operations, "map": '{"0": ["variables.f"]}'},
        files={"0": ("a.txt", b"hello", "text/plain")},
    )
    assert r.status_code == 400
    assert error_codes(r.json()) == ["BAD_USER_INPUT"]


async def test_missing_content_type_is_refused(edge) -> None:
    r = await edge.post("/graphql", content=b'{"query": "{ __typename }"}')
    assert r.status_code == 400
    assert error_codes(r.json()) == ["BAD_USER_INPUT"]


async def test_missing_query_is_400(edge) -> None:
    r = await edge.post("/graphql", json={"variables": {}})
    assert r.status_code == 400
    assert error_codes(r.json()) == ["BAD_USER_INPUT"]


async def test_other_methods_are_refused(edge) -> None:
    r = await edge.put("/graphql", json={"query": "{ __typename }"})
    assert r.status_code == 405
    assert r.headers["allow"] == "GET, POST"


# -- GraphiQL -----------------------------------------------------------------------------------------


async def test_graphiql_in_dev(edge) -> None:
    r = await edge.get("/graphql", headers={"accept": "text/html"})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    assert "graphiql" in r.text.lower()
    assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
    assert_security_headers(r)


async def test_no_graphiql_in_prod(prod) -> None:
    r = await prod.get("/graphql", headers={"accept": "text/html"})
    assert r.status_code in (400, 404)
    assert not r.headers["content-type"].startswith("text/html")
    assert "graphiql" not in r.text.lower()
    assert r.headers["content-security-policy"] == "default-src 'none'; frame-ancestors 'none'"


# -- health -------------------------------------------------------------------------------------------


async def test_healthz(edge) -> None:
    r = await edge.get("/healthz")
    assert r.status_code == 200
    assert r.json() == {"status": "ok"}


async def test_readyz_with_the_database(client) -> None:
    r = await client.get("/readyz")
    assert r.status_code == 200
    assert r.json() == {"status": "ok", "checks": {"database": "ok", "migrations": "ok"}}


async def test_readyz_with_redis(postgresql_url: str, redis_url: str, signing_key: str) -> None:
    app = create_app(make_settings(postgresql_url, signing_key, redis_url=redis_url))
    async with running(app) as client:
        r = await client.get("/readyz")
    assert r.status_code == 200
    assert r.json() == {"status": "ok", "checks": {"database": "ok", "migrations": "ok", "redis": "ok"}}


async def test_readyz_without_a_database(signing_key: str) -> None:
    url = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/nothing"
    app = create_app(make_settings(url, signing_key))
    async with running(app) as client:
        r = await client.get("/readyz")
        assert r.status_code == 503
        assert r.json() == {
            "status": "unavailable",
            "checks": {"database": "unavailable"},
            "reason": "the database is unreachable",
        }
        assert (await client.get("/healthz")).status_code == 200
        # a GraphQL request that needs the database fails as a GraphQL error, not a 500 page
        g = await gql(client, LOGIN, {"email": "a@b.test", "password": "whatever it is"})
        assert g.status_code != 500
        [error] = g.json()["errors"]
        assert error["extensions"] == {"code": "INTERNAL", "requestId": g.headers["x-request-id"]}
        assert "refused" not in g.text.lower()
        assert "postgres" not in g.text.lower()
