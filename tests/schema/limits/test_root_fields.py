"""The root-field limit: independent entry points in one operation, counted through fragments."""

from __future__ import annotations

from typing import Any

from tests.conftest import gql
from tests.schema.limits.conftest import assert_refused


async def test_too_many_root_fields_are_refused(client, resolver_calls: list[Any]) -> None:
    assert_refused(await gql(client, "{ " + "organization { id } " * 11 + "}"), "rootFields", 10, 11)
    assert resolver_calls == []


async def test_root_fields_spread_from_fragments_count(client, resolver_calls: list[Any]) -> None:
    query = "query { ...Q ...Q } fragment Q on Query { " + "__typename " * 6 + "}"
    assert_refused(await gql(client, query), "rootFields", 10, 12)


async def test_ten_root_fields_pass(client) -> None:
    r = await gql(client, "{ " + "__typename " * 10 + "}")
    assert r.status_code == 200
    assert r.json()["data"] == {"__typename": "Query"}
