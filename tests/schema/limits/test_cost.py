"""Static cost (IBM cost spec): hand-computed examples, the per-plan maximum, amount abuse (C-006)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import Tenant, cost_of, error_codes, gql, login, make_tenant
from tests.schema.limits.conftest import assert_refused

MEMBERS = """query ($n: Int) { organization { members(first: $n) {
  pageInfo { hasNextPage } edges { node { id user { email } } } } } }"""


@pytest.mark.parametrize(
    ("query", "variables", "cost"),
    [
        # organization 1 + children: assumed size 10 x (Organization 1 + slug 0) = 11
        ("{ organization { slug children { slug } } }", {}, 11),
        # organization 1 + members 1 + pageInfo 1 + edges sized by `first`: 30 x (edge 1 + node 1 + user 1)
        (MEMBERS, {"n": 30}, 93),
        # `first` not given: its default, 50 → 1 + 1 + 1 + 50 x 3
        (MEMBERS, {}, 153),
        # two aliases of organization, each 1 + apiKeys 50 x 1 + children 10 x 1, through one fragment
        (
            "{ a: organization { ...O } b: organization { ...O } } "
            "fragment O on Organization { apiKeys { id } kids: children { id } }",
            {},
            122,
        ),
        # a mutation's base cost 10, plus its object-returning field 1
        ('mutation { updateOrganization(input: {name: "Acme"}) { id } }', {}, 11),
    ],
    ids=["list-assumed-size", "slicing-variable", "slicing-default", "alias-fragment", "mutation"],
)
async def test_cost_computed_by_hand(client, tenant: Tenant, query: str, variables: dict[str, Any], cost: int) -> None:
    token = (await login(client, tenant))["accessToken"]
    r = await gql(client, query, variables, token=token)
    assert r.status_code == 200, r.text
    body = r.json()
    assert "errors" not in body, body
    assert body["extensions"] == {"cost": cost_of(cost)}


async def test_cost_is_left_on_the_context(client, tenant: Tenant, monkeypatch: pytest.MonkeyPatch) -> None:
    """The admission step reads the operation's cost from the request context."""
    from resolvers.deps import RequestContext

    seen: list[int | None] = []
    original = RequestContext.finish

    async def finish(self: RequestContext, *args: Any, **kwargs: Any) -> Any:
        seen.append(self.operation_cost)
        return await original(self, *args, **kwargs)

    token = (await login(client, tenant))["accessToken"]
    monkeypatch.setattr(RequestContext, "finish", finish)
    r = await gql(client, "{ organization { children { id } } }", token=token)
    assert r.json()["extensions"] == {"cost": cost_of(11)}
    assert seen == [11]


async def test_over_the_plan_maximum_cost_is_refused(client, database_url: str, resolver_calls: list[Any]) -> None:
    """FREE allows 1,000: 10 x 10 x 10 nested children cost 1,111; ENTERPRISE (50,000) admits it."""
    query = "{ organization { children { children { children { id } } } } }"
    free = await make_tenant(database_url, slug="free", email="o@free.test", plan="free")
    big = await make_tenant(database_url, slug="big", email="o@big.test", plan="enterprise")
    body = assert_refused(
        await gql(client, query, token=(await login(client, free))["accessToken"]), "cost", 1000, 1111
    )
    assert body["extensions"] == {"cost": cost_of(1111)}
    assert resolver_calls == []
    r = await gql(client, query, token=(await login(client, big))["accessToken"])
    assert r.status_code == 200
    assert r.json() == {"data": {"organization": {"children": []}}, "extensions": {"cost": cost_of(1111)}}


async def test_c006_huge_first_is_refused_by_the_cost_limit(client, tenant: Tenant, resolver_calls: list[Any]) -> None:
    """C-006: `first: 99999999` is refused before execution by the cost limit (limit "cost")."""
    token = (await login(client, tenant))["accessToken"]
    r = await gql(client, MEMBERS, {"n": 99_999_999}, token=token)
    assert_refused(r, "cost", 10_000, 1 + 1 + 1 + 99_999_999 * 3)
    assert resolver_calls == []


@pytest.mark.parametrize("first", [-1, 0, 101])
async def test_c006_out_of_range_first_is_refused_by_the_resolver(client, tenant: Tenant, first: int) -> None:
    """C-006: `first: -1` (cost counts it as 0) and `first: 101` (affordable) reach the resolver,
    which answers BAD_USER_INPUT; no page larger than 100 is ever returned."""
    token = (await login(client, tenant))["accessToken"]
    body = (await gql(client, MEMBERS, {"n": first}, token=token)).json()
    assert error_codes(body) == ["BAD_USER_INPUT"]
    assert body["errors"][0]["path"] == ["organization", "members"]
    assert body["data"] == {"organization": None}


async def test_every_response_reports_its_cost(client) -> None:
    r = await gql(client, "{ __typename }")
    assert r.json() == {"data": {"__typename": "Query"}, "extensions": {"cost": cost_of(0)}}
    refused = await gql(client, "{ organization { " + "parent { " * 12 + "id" + " }" * 12 + " } }")
    assert refused.json()["extensions"] == {"cost": cost_of(0)}  # refused before cost was measured
