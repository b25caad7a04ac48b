"""Error shapes: every error carries `extensions.code`, the unexpected is masked, validation refusals
are 400, and prod hides what helps an attacker map the schema."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest

from gateway.app import create_app
from gateway.graphql import GraphQLView
from tests.conftest import Tenant, cost_of, error_codes, gql, login, make_settings, running

PROD_SECRETS = {"api_key_pepper": "p" * 40, "cookie_secret": "c" * 40, "data_encryption_key": "d" * 40}
ME = "{ me { user { email } } }"
SCHEMA_TYPES = "{ __schema { types { name } } }"
TYPE_FIELDS = '{ __type(name: "User") { fields { name } } }'
CODES = {
    "UNAUTHENTICATED",
    "FORBIDDEN",
    "RATE_LIMITED",
    "QUOTA_EXCEEDED",
    "BAD_USER_INPUT",
    "NOT_FOUND",
    "CONFLICT",
    "OPERATION_TOO_COMPLEX",
    "INTERNAL",
}


@pytest.fixture(scope="module")
async def prod_client(sqlite_url: str, signing_key: str) -> AsyncIterator[Any]:
    """Prod mode, anonymous only (writes nothing, so one app serves the module)."""
    async with running(create_app(make_settings(sqlite_url, signing_key, env="prod", **PROD_SECRETS))) as c:
        yield c


@pytest.fixture(scope="module")
async def dev_client(sqlite_url: str, signing_key: str) -> AsyncIterator[Any]:
    async with running(create_app(make_settings(sqlite_url, signing_key, env="dev"))) as c:
        yield c


def assert_codes(body: dict[str, Any]) -> None:
    assert body["errors"]
    for error in body["errors"]:
        assert error["extensions"]["code"] in CODES, error


# -- the unexpected -----------------------------------------------------------------------------------


async def test_unexpected_exception_is_masked(client, tenant: Tenant, monkeypatch, caplog) -> None:
    """C-015: a resolver's KeyError leaves as INTERNAL with the request id; the log has the rest."""
    import resolvers.users

    auth = await login(client, tenant)

    async def broken(*_: Any, **__: Any) -> Any:
        raise KeyError("secret_column")

    monkeypatch.setattr(resolvers.users, "get_viewer", broken)
    caplog.set_level(logging.ERROR, logger="portcullis")
    r = await gql(client, ME, token=auth["accessToken"], headers={"X-Request-ID": "c015-request-1"})
    body = r.json()
    assert body["data"] is None  # `me` is non-null: the null bubbles up to the root
    [error] = body["errors"]
    assert error["message"] == "Unexpected error."
    assert error["extensions"] == {"code": "INTERNAL", "requestId": "c015-request-1"}
    assert error["path"] == ["me"]
    assert r.headers["x-request-id"] == "c015-request-1"
    text = r.text
    for leak in ("secret_column", "KeyError", "Traceback", "resolvers", ".py", "SELECT"):
        assert leak not in text, leak

    logged = [rec for rec in caplog.records if rec.exc_info and getattr(rec, "request_id", None)]
    assert logged, "the exception is logged"
    record = logged[0]
    assert record.request_id == "c015-request-1"
    assert isinstance(record.exc_info[1], KeyError)
    assert "secret_column" in str(record.exc_info[1])


async def test_generated_request_id_is_in_the_internal_error(client, tenant: Tenant, monkeypatch) -> None:
    """C-015: without a caller-supplied id the body names the id that the header carries."""
    import resolvers.users

    auth = await login(client, tenant)

    async def broken(*_: Any, **__: Any) -> Any:
        raise RuntimeError("password=hunter2 at postgresql://u:p@db/x")

    monkeypatch.setattr(resolvers.users, "get_viewer", broken)
    r = await gql(client, ME, token=auth["accessToken"])
    [error] = r.json()["errors"]
    assert error["extensions"]["requestId"] == r.headers["x-request-id"]
    assert "hunter2" not in r.text
    assert "postgresql" not in r.text


async def test_failure_outside_the_schema_is_internal_too(dev_client, monkeypatch, caplog) -> None:
    """An exception escaping the view is still a GraphQL-shaped INTERNAL error with the request id."""

    async def broken(self: Any, request: Any, response: Any) -> Any:
        raise ValueError("secret_column")

    monkeypatch.setattr(GraphQLView, "get_context", broken)
    caplog.set_level(logging.ERROR, logger="portcullis")
    r = await gql(dev_client, "{ __typename }", headers={"X-Request-ID": "outside-1234"})
    assert r.status_code == 500
    assert r.json() == {
        "errors": [{"message": "Unexpected error.", "extensions": {"code": "INTERNAL", "requestId": "outside-1234"}}]
    }
    assert r.headers["x-request-id"] == "outside-1234"
    assert r.headers["x-content-type-options"] == "nosniff"
    assert "secret_column" not in r.text
    assert any(getattr(rec, "request_id", None) == "outside-1234" and rec.exc_info for rec in caplog.records)


# -- documents that never execute ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "query",
    [
        "{ nope }",
        "{ me { nope } }",
        "{{{",
        "{ me ",
        "query A { __typename } query A { __typename }",
        "query($x: Int) { __typename }",
        "mutation { login(email: 1) { accessToken } }",
        "fragment A on User { ...B } fragment B on User { ...A } { me { user { ...A } } }",
        "subscription { nothing }",
    ],
)
async def test_invalid_documents_are_400_with_codes(dev_client, query: str) -> None:
    r = await gql(dev_client, query)
    assert r.status_code == 400, r.text
    body = r.json()
    assert "data" not in body
    assert_codes(body)
    assert set(error_codes(body)) == {"BAD_USER_INPUT"}


async def test_fragment_cycle_is_refused(dev_client) -> None:
    """C-009"""
    r = await gql(dev_client, "fragment A on User { ...B } fragment B on User { ...A } { me { user { ...A } } }")
    assert r.status_code == 400
    assert any("cycle" in e["message"].lower() or "spread" in e["message"].lower() for e in r.json()["errors"])


@pytest.mark.parametrize(
    "body", [{"query": 42}, {"query": None}, {"query": ""}, {"query": "{ __typename }", "variables": "x"}]
)
async def test_malformed_request_fields(dev_client, body: dict[str, Any]) -> None:
    r = await dev_client.post("/graphql", json=body)
    assert r.status_code == 400, r.text
    assert_codes(r.json())


async def test_refusals_are_graphql_shaped(dev_client) -> None:
    r = await gql(dev_client, ME)
    assert r.status_code == 200
    assert error_codes(r.json()) == ["UNAUTHENTICATED"]


# -- what prod hides ----------------------------------------------------------------------------------


async def test_field_suggestions_in_dev(dev_client) -> None:
    r = await gql(dev_client, "{ mee { user { email } } }")
    assert r.status_code == 400
    assert "Did you mean" in r.json()["errors"][0]["message"]


async def test_no_field_suggestions_in_prod(prod_client) -> None:
    """C-011"""
    for query in ["{ mee { user { email } } }", "{ me { usr { email } } }", "mutation { logi }"]:
        r = await gql(prod_client, query)
        assert r.status_code == 400
        body = r.json()
        assert_codes(body)
        assert all("Did you mean" not in e["message"] for e in body["errors"]), body


@pytest.mark.parametrize(
    "query", [SCHEMA_TYPES, TYPE_FIELDS, "{ me { user { email } } __schema { queryType { name } } }"]
)
async def test_anonymous_introspection_refused_in_prod(prod_client, query: str) -> None:
    """C-010"""
    r = await gql(prod_client, query)
    assert r.status_code == 400
    body = r.json()
    assert "data" not in body
    assert set(error_codes(body)) == {"BAD_USER_INPUT"}
    assert "introspection" in body["errors"][0]["message"].lower()


async def test_typename_allowed_in_prod(prod_client) -> None:
    """C-010: `__typename` is not introspection of the schema."""
    r = await gql(prod_client, "{ __typename }")
    assert r.json() == {"data": {"__typename": "Query"}, "extensions": {"cost": cost_of(0)}}


async def test_authenticated_introspection_in_prod(database_url: str, signing_key: str, tenant: Tenant) -> None:
    app = create_app(make_settings(database_url, signing_key, env="prod", **PROD_SECRETS))
    async with running(app) as c:
        auth = await login(c, tenant)
        r = await gql(c, SCHEMA_TYPES, token=auth["accessToken"])
        assert r.status_code == 200
        names = {t["name"] for t in r.json()["data"]["__schema"]["types"]}
        assert {"Query", "Mutation", "Viewer"} <= names
        r = await gql(c, TYPE_FIELDS, token=auth["accessToken"])
        assert {f["name"] for f in r.json()["data"]["__type"]["fields"]} >= {"id", "email"}


async def test_anonymous_introspection_in_dev(dev_client) -> None:
    r = await gql(dev_client, SCHEMA_TYPES)
    assert r.status_code == 200
    assert r.json()["data"]["__schema"]["types"]


async def test_introspection_over_get_refused_in_prod(prod_client) -> None:
    r = await prod_client.get("/graphql", params={"query": SCHEMA_TYPES})
    assert r.status_code == 400
    assert "data" not in r.json()
