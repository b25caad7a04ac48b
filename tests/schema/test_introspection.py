"""Introspection shows the schema as the caller may use it."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import Tenant, cost_of, gql, login, make_tenant

TYPE_FIELDS = "query($n: String!) { __type(name: $n) { name fields { name } } }"


def names(body: dict[str, Any], key: str = "__type") -> list[str] | None:
    t = body["data"][key]
    return None if t is None else [f["name"] for f in t["fields"]]


@pytest.fixture
async def viewer(database_url: str) -> Tenant:
    return await make_tenant(database_url, slug="initech", email="viewer@initech.test", role="viewer")


async def test_fields_the_caller_cannot_use_are_absent(client, tenant: Tenant, viewer: Tenant) -> None:
    as_viewer = await login(client, viewer)
    as_owner = await login(client, tenant)
    org = {"n": "Organization"}
    seen_by_viewer = names((await gql(client, TYPE_FIELDS, org, token=as_viewer["accessToken"])).json())
    seen_by_owner = names((await gql(client, TYPE_FIELDS, org, token=as_owner["accessToken"])).json())
    assert seen_by_viewer is not None
    assert seen_by_owner is not None
    assert not {"billingEmail", "members"} & set(seen_by_viewer)
    assert {"billingEmail", "members"} <= set(seen_by_owner)
    assert set(seen_by_viewer) < set(seen_by_owner)


async def test_types_the_caller_cannot_reach_are_absent(client, viewer: Tenant) -> None:
    auth = await login(client, viewer)
    body = (await gql(client, TYPE_FIELDS, {"n": "Role"}, token=auth["accessToken"])).json()
    assert body == {"data": {"__type": None}, "extensions": {"cost": cost_of(0)}}
    schema = (await gql(client, "{ __schema { types { name } } }", token=auth["accessToken"])).json()
    type_names = {t["name"] for t in schema["data"]["__schema"]["types"]}
    assert "Organization" in type_names
    assert not {"Role", "RoleInput", "MembershipConnection"} & type_names
    root = (await gql(client, TYPE_FIELDS, {"n": "Query"}, token=auth["accessToken"])).json()
    assert "roles" not in names(root)


async def test_aliases_fragments_and_data_alongside(client, viewer: Tenant) -> None:
    auth = await login(client, viewer)
    query = """
    fragment T on __Type { fields { name } }
    query { organization { slug } o: __type(name: "Organization") { ...T } }
    """
    body = (await gql(client, query, token=auth["accessToken"])).json()
    assert body["data"]["organization"] == {"slug": "initech"}
    assert "billingEmail" not in names(body, "o")


async def test_anonymous_sees_only_the_public_door(client) -> None:
    """Outside prod anonymous introspection is on, and shows only what an anonymous caller can use."""
    query = "{ __schema { queryType { fields { name } } mutationType { fields { name } } } }"
    body = (await gql(client, query)).json()
    schema = body["data"]["__schema"]
    assert schema["queryType"]["fields"] == [{"name": "signInOptions"}]
    assert {f["name"] for f in schema["mutationType"]["fields"]} == {
        "login",
        "refreshToken",
        "acceptInvitation",
        "requestPasswordReset",
        "resetPassword",
        "verifyEmail",
        "confirmEmailChange",
    }


async def test_tools_standard_introspection_query_fits_the_limits(client, viewer: Tenant) -> None:
    """GraphiQL's and code generators' introspection query nests deeper than the depth limit allows for
    data; introspection is bounded by the schema itself and answers within every plan's limits."""
    from graphql import get_introspection_query

    for token in (None, (await login(client, viewer))["accessToken"]):
        r = await gql(client, get_introspection_query(descriptions=True), token=token)
        assert r.status_code == 200, r.json()
        assert r.json()["data"]["__schema"]["queryType"]["name"] == "Query"


# -- C-129: the per-caller answer fails closed ---------------------------------------------------------

# A variable typed with a type the viewer cannot see (AuditLogFilter needs audit:read), used on a field
# that never runs: the document is valid against the full schema, the variable means nothing in the
# viewer's.
HIDDEN_VARIABLE = """
query($f: AuditLogFilter) {
  auditLogs(filter: $f) @include(if: false) { edges { cursor } }
  %s
}
%s
"""
HIDDEN_TYPES = ("AuditLogEntry", "AuditLogFilter", "AuditChainVerification", "RoleInput", "billingEmail")


def assert_closed(r: Any, query: str = "") -> None:
    """No data at all, an error with a code, and nothing of the untrimmed schema anywhere (a name the
    document itself wrote may come back in an error message)."""
    body = r.json()
    assert "data" not in body, body
    assert r.status_code in (400, 500), r.status_code
    assert body["errors"], body
    assert all(e["extensions"]["code"] for e in body["errors"]), body
    assert not [t for t in HIDDEN_TYPES if t in r.text and t not in query], r.text


@pytest.mark.parametrize(
    ("selection", "fragments"),
    [
        ("__schema { types { name fields { name } } }", ""),
        ("s: __schema { types { name } }", ""),
        ("...Intro", "fragment Intro on Query { __schema { types { name } } }"),
        ("... on Query { __schema { types { name } } }", ""),
        ('__type(name: "AuditLogEntry") { name fields { name } }', ""),
        ('t: __type(name: "Organization") { name fields { name } }', ""),
    ],
)
async def test_a_failing_trimmed_answer_never_returns_the_untrimmed_one(
    client, viewer: Tenant, selection: str, fragments: str
) -> None:
    """C-129: a variable of a type the caller cannot see makes the trimmed introspection fail as a
    whole; the caller gets an error and no data, never the full schema (through aliases, fragments,
    inline fragments and `__type` as well)."""
    auth = await login(client, viewer)
    query = HIDDEN_VARIABLE % (selection, fragments)
    r = await gql(client, query, token=auth["accessToken"])
    assert_closed(r, query)
    assert [e["extensions"]["code"] for e in r.json()["errors"]] == ["BAD_USER_INPUT"]


async def test_a_failing_trimmed_answer_over_get_is_closed_too(client, viewer: Tenant) -> None:
    """C-129: the same document sent as a GET query (asking for application/graphql-response+json, whose
    status says the request failed; application/json asked for by name answers such errors with 200)."""
    import json

    auth = await login(client, viewer)
    query = HIDDEN_VARIABLE % ("__schema { types { name fields { name } } }", "")
    r = await client.get(
        "/graphql",
        params={"query": query, "variables": json.dumps({"f": None})},
        headers={"Authorization": f"Bearer {auth['accessToken']}", "Accept": "application/graphql-response+json"},
    )
    assert_closed(r, query)


async def test_a_failure_while_trimming_answers_internal(client, viewer: Tenant, monkeypatch) -> None:
    """C-129: if the caller's schema cannot be built, the answer is INTERNAL with no data, never the
    full schema the operation resolved against."""
    from schema.introspection import IntrospectionFilter

    def broken(self: Any, principal: Any) -> Any:
        raise RuntimeError("trimming failed")

    monkeypatch.setattr(IntrospectionFilter, "_build", broken)
    auth = await login(client, viewer)
    r = await gql(
        client, "{ organization { slug } __schema { types { name fields { name } } } }", token=auth["accessToken"]
    )
    assert_closed(r)
    assert r.status_code == 500
    assert [e["extensions"]["code"] for e in r.json()["errors"]] == ["INTERNAL"]
    assert "trimming failed" not in r.text


async def test_a_skipped_introspection_field_stays_absent(client, viewer: Tenant) -> None:
    """C-129: a skipped fragment around `__schema` leaves no `__schema` in the answer, and a skipped
    `__type` none either: the trimmed answer replaces what the operation resolved, it adds nothing."""
    auth = await login(client, viewer)
    query = """
    query($no: Boolean!) {
      organization { slug }
      ... @skip(if: true) { __schema { types { name } } }
      ... on Query @include(if: $no) { t: __type(name: "Organization") { name } }
    }
    """
    body = (await gql(client, query, {"no": False}, token=auth["accessToken"])).json()
    assert body["data"] == {"organization": {"slug": "initech"}}, body


async def test_a_hidden_type_by_name_is_null(client, viewer: Tenant) -> None:
    """C-129: `__type(name:)` of a type the caller cannot see is null, with its name passed literally,
    by variable, or under an alias next to data."""
    auth = await login(client, viewer)
    for query, variables in (
        ('{ __type(name: "AuditLogEntry") { name fields { name } } }', None),
        ("query($n: String!) { organization { slug } h: __type(name: $n) { name } }", {"n": "RoleInput"}),
    ):
        r = await gql(client, query, variables, token=auth["accessToken"])
        body = r.json()
        assert "errors" not in body, body
        assert None in body["data"].values()
        assert not [t for t in HIDDEN_TYPES if t in r.text.replace('"RoleInput"', "")], r.text
