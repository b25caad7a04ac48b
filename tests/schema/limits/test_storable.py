"""C-133: an operation whose arguments hold a character the database cannot store (U+0000, a lone
surrogate) is refused before execution with BAD_USER_INPUT naming the argument or the variable, HTTP 400,
on SQLite and on PostgreSQL (whose text cannot hold NUL): never INTERNAL, nothing executed or written."""

from __future__ import annotations

from typing import Any

import httpx
import orjson
import pytest
from graphql import parse

from authz import anonymous
from resolvers.deps import RequestContext
from tests.conftest import Tenant, gql, login, sql

SLUG_LITERAL = r'{ organization(slug: "ac\u0000me") { id } }'
SLUG_VARIABLE = "query($s: String) { organization(slug: $s) { id } }"
REPORT = "query($id: ID!) { report(id: $id) { id } }"
MEMBERS = "query($after: String) { organization { members(after: $after) { edges { cursor } } } }"
CREATE_KEY = "mutation($input: CreateApiKeyInput!) { createApiKey(input: $input) { secret } }"
CONFIGURE_SAML = "mutation($input: SamlConnectionInput!) { configureSaml(input: $input) { id } }"
VERIFY = "query($from: DateTime) { verifyAuditChain(from: $from) { ok } }"


@pytest.fixture
async def token(client: httpx.AsyncClient, tenant: Tenant) -> str:
    return str((await login(client, tenant))["accessToken"])


def assert_unstorable(r: httpx.Response, **named: str) -> dict[str, Any]:
    """400, no `data`, one BAD_USER_INPUT error naming the argument or the variable (`named`)."""
    assert r.status_code == 400, r.text
    body: dict[str, Any] = r.json()
    assert "data" not in body
    [error] = body["errors"]
    assert error["extensions"]["code"] == "BAD_USER_INPUT", error
    for key, value in named.items():
        assert error["extensions"][key] == value, error
    assert "cannot be stored" in error["message"]
    return body


def count(database_url: str, table: str) -> int:
    return int(sql(database_url, f"SELECT count(*) FROM {table}")[0][0])


# -- literals ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("document", "argument"),
    [
        (SLUG_LITERAL, "slug"),
        (r'{ report(id: "r\u0000") { id } }', "id"),
        (r'{ organization { members(after: "c\u0000") { edges { cursor } } } }', "after"),
        (
            r'mutation { createApiKey(input: {name: "ci\u0000", scopes: ["organization:read"]}) { secret } }',
            "input.name",
        ),
        (
            r'mutation { createApiKey(input: {name: "ci", scopes: ["organization:read", "x\u0000"]}) { secret } }',
            "input.scopes.1",
        ),
        (
            r'mutation { configureSaml(input: {idpMetadataXml: "<x/>", roleMapping: {admins: "ad\u0000min"}}) { id } }',
            "input.roleMapping.admins",
        ),
        ('{ organization(slug: """ac\u0000me""") { id } }', "slug"),  # a raw NUL inside a block string
        (r'query($s: String = "ac\u0000me") { organization(slug: $s) { id } }', "$s"),
    ],
)
async def test_c133_literal_is_refused(
    client, database_url: str, token: str, resolver_calls: list[Any], document: str, argument: str
) -> None:
    keys_before = count(database_url, "api_keys")
    assert_unstorable(await gql(client, document, token=token), argument=argument)
    assert resolver_calls == []
    assert count(database_url, "api_keys") == keys_before


async def test_c133_a_cached_document_is_refused_each_time(client, token: str) -> None:
    for _ in range(3):
        body = assert_unstorable(await gql(client, SLUG_LITERAL, token=token), argument="slug")
        assert body["errors"][0]["locations"] == [{"line": 1, "column": 22}]


# -- variables ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("document", "variables", "variable"),
    [
        (SLUG_VARIABLE, {"s": "ac\x00me"}, "s"),
        (REPORT, {"id": "r\x00"}, "id"),
        (MEMBERS, {"after": "c\x00"}, "after"),
        (CREATE_KEY, {"input": {"name": "ci\x00", "scopes": ["organization:read"]}}, "input.name"),
        (CREATE_KEY, {"input": {"name": "ci", "scopes": ["organization:read", "\x00"]}}, "input.scopes.1"),
        (
            CONFIGURE_SAML,
            {"input": {"idpMetadataXml": "<x/>", "roleMapping": {"adm\x00ins": "admin"}}},
            "input.roleMapping.adm\\x00ins",
        ),
        (
            CONFIGURE_SAML,
            {"input": {"idpMetadataXml": "<x/>", "roleMapping": {"admins": ["ad\x00min"]}}},
            "input.roleMapping.admins.0",
        ),
        (VERIFY, {"from": "2026-01-01T00:00:00\x00"}, "from"),
        # declared or not, every variable the request carries is checked
        (SLUG_VARIABLE, {"s": "acme", "unused": {"k": "\x00"}}, "unused.k"),
    ],
)
async def test_c133_variable_is_refused(
    client,
    database_url: str,
    token: str,
    resolver_calls: list[Any],
    document: str,
    variables: dict[str, Any],
    variable: str,
) -> None:
    keys_before, audit_before = count(database_url, "api_keys"), count(database_url, "audit_log")
    assert_unstorable(await gql(client, document, variables, token=token), variable=variable)
    assert resolver_calls == []
    assert count(database_url, "api_keys") == keys_before
    assert count(database_url, "sso_connections") == 0
    assert count(database_url, "audit_log") == audit_before


async def test_c133_deeply_nested_variable_is_refused_not_crashed(client, token: str) -> None:
    """The JSON body nests as deep as the parser allows; the walk is iterative."""
    deep = "[" * 1000 + '"\\u0000"' + "]" * 1000
    body = f'{{"query": {orjson.dumps(SLUG_VARIABLE).decode()}, "variables": {{"s": "acme", "deep": {deep}}}}}'
    r = await client.post(
        "/graphql", content=body, headers={"content-type": "application/json", "authorization": f"Bearer {token}"}
    )
    assert_unstorable(r, variable="deep." + ".".join(["0"] * 1000))


async def test_c133_anonymous_login_with_nul_is_refused_before_any_attempt(client, tenant: Tenant) -> None:
    login_document = "mutation($e: String!, $p: String!) { login(email: $e, password: $p) { accessToken } }"
    r = await gql(client, login_document, {"e": tenant.email, "p": "pass\x00word"})
    assert_unstorable(r, variable="p")


async def test_c133_variables_over_get_are_checked_too(client, token: str) -> None:
    r = await client.get(
        "/graphql",
        params={"query": SLUG_VARIABLE, "variables": '{"s": "ac\\u0000me"}'},
        headers={"authorization": f"Bearer {token}"},
    )
    assert_unstorable(r, variable="s")


@pytest.mark.parametrize(
    "body",
    [
        b'{"query": "{ organization { id } }\\u0000"}',  # outside any string: a syntax error
        b'{"query": "{ organization(slug: \\"ac\\u0000me\\") { id } }"}',  # raw in a string literal: refused
        b'{"query": "query A { organization { id } }", "operationName": "A\\u0000"}',
    ],
)
async def test_c133_nul_in_the_query_text_is_refused(client, token: str, body: bytes) -> None:
    r = await client.post(
        "/graphql", content=body, headers={"content-type": "application/json", "authorization": f"Bearer {token}"}
    )
    assert r.status_code == 400, r.text
    assert [e["extensions"]["code"] for e in r.json()["errors"]] == ["BAD_USER_INPUT"]


# -- lone surrogates -----------------------------------------------------------------------------------


async def test_c133_lone_surrogate_in_a_json_variable_is_refused(client, token: str) -> None:
    """JSON can spell a lone surrogate (`\\ud800`); the body is refused as JSON that cannot be read."""
    body = b'{"query": "query($s: String) { organization(slug: $s) { id } }", "variables": {"s": "a\\ud800"}}'
    r = await client.post(
        "/graphql", content=body, headers={"content-type": "application/json", "authorization": f"Bearer {token}"}
    )
    assert r.status_code == 400, r.text
    assert [e["extensions"]["code"] for e in r.json()["errors"]] == ["BAD_USER_INPUT"]


async def test_c133_lone_surrogate_escape_in_a_literal_is_refused(client, token: str) -> None:
    r = await gql(client, r'{ organization(slug: "a\ud800") { id } }', token=token)
    assert r.status_code == 400, r.text
    assert [e["extensions"]["code"] for e in r.json()["errors"]] == ["BAD_USER_INPUT"]


@pytest.mark.parametrize(
    ("document", "variables", "named"),
    [
        (SLUG_VARIABLE, {"s": "a\ud800"}, {"variable": "s"}),
        (
            CONFIGURE_SAML,
            {"input": {"idpMetadataXml": "<x/>", "roleMapping": {"a\udfff": "admin"}}},
            {"variable": "input.roleMapping.a\\udfff"},
        ),
    ],
)
async def test_c133_lone_surrogate_that_reaches_the_schema_is_refused(
    app, document: str, variables: dict[str, Any] | None, named: dict[str, str]
) -> None:
    """No HTTP transport of the gateway lets a lone surrogate through (JSON and the GraphQL lexer refuse
    it, in block strings too); executed in process with such variables, the operation is still refused
    before it runs."""
    services = app.state.services
    context = RequestContext(services, anonymous(client_ip="203.0.113.7", request_id="c133-in-process-1"))
    result = await app.state.schema.execute(document, variable_values=variables, context_value=context)
    assert result.data is None
    [error] = result.errors
    assert isinstance(error.original_error, Exception)
    assert getattr(error.original_error, "code", None) == "BAD_USER_INPUT"
    for key, value in named.items():
        assert error.original_error.extensions[key] == value  # type: ignore[attr-defined]


# -- what is still accepted ---------------------------------------------------------------------------


async def test_text_beyond_ascii_is_accepted(client, token: str) -> None:
    r = await gql(client, SLUG_VARIABLE, {"s": "acme"}, token=token)
    assert r.status_code == 200
    assert r.json()["data"]["organization"]["id"]
    r = await gql(
        client, CREATE_KEY, {"input": {"name": "Clé \U0001f511 ключ", "scopes": ["organization:read"]}}, token=token
    )
    assert r.status_code == 200, r.text
    assert r.json()["data"]["createApiKey"]["secret"]
    # an escaped surrogate pair is one character
    r = await gql(client, r'{ organization(slug: "\ud83d\udd11") { slug } }', token=token)
    assert r.status_code == 200, r.text


def test_storable() -> None:
    from store.text import storable

    for text in ["", "acme", "Clé", "\U0001f511", "tab\tand\nnewline", "\x7f", "\ufffd"]:
        assert storable(text), text
    for text in ["\x00", "a\x00", "\ud800", "a\udfffb", "é\x00"]:
        assert not storable(text), text


def test_literal_and_variable_paths() -> None:
    from schema.limits.storable import unstorable_literal, unstorable_variable

    found = unstorable_literal(parse('query($v: [String] = ["ok", "b\\u0000"]) { a(x: "ok") }'))
    assert found is not None
    assert found[0] == "$v.1"
    assert unstorable_literal(parse('{ a(x: "ok") @d(y: "\\u0000") }'))[0] == "y"  # type: ignore[index]
    assert unstorable_literal(parse('query { a(x: {y: [{z: "ok"}, {z: "\\u0000"}]}) }'))[0] == "x.y.1.z"  # type: ignore[index]
    assert unstorable_literal(parse('"a description is not an argument \\u0000" query { a(x: "ok") }')) is None
    assert unstorable_variable({"a": {"b": [1, True, None, 2.5, "ok"]}}) is None
    assert unstorable_variable({"a": {"b": [1, "\x00"]}}) == "a.b.1"
    assert unstorable_variable({"a\x00": 1}) == "a\\x00"
