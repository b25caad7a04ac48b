"""Introspection shows the schema as the caller may use it."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import Tenant, cost_of, gql, login, make_tenant

TYPE_FIELDS = 'query($n: String!) { __type(name: $n) { name fields { name } } }'


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
    assert schema["queryType"]["fields"] == []
    assert {f["name"] for f in schema["mutationType"]["fields"]} == {"login", "refreshToken", "acceptInvitation"}


async def test_tools_standard_introspection_query_fits_the_limits(client, viewer: Tenant) -> None:
    """GraphiQL's and code generators' introspection query nests deeper than the depth limit allows for
    data; introspection is bounded by the schema itself and answers within every plan's limits."""
    from graphql import get_introspection_query

    for token in (None, (await login(client, viewer))["accessToken"]):
        r = await gql(client, get_introspection_query(descriptions=True), token=token)
        assert r.status_code == 200, r.json()
        assert r.json()["data"]["__schema"]["queryType"]["name"] == "Query"
