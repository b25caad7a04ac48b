"""The depth limit (C-001): direct, through fragments and inline fragments; refused before any resolver."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import gql, login, make_tenant
from tests.schema.limits.conftest import assert_refused


def direct(levels: int) -> str:
    return "{ organization { " + "parent { " * levels + "slug" + " }" * levels + " } }"


def through_fragments(levels: int) -> str:
    fragments = ["fragment C0 on Organization { slug }"]
    fragments += [f"fragment C{i} on Organization {{ parent {{ ...C{i - 1} }} }}" for i in range(1, levels + 1)]
    return f"{{ organization {{ ...C{levels} }} }} " + " ".join(fragments)


def through_inline_fragments(levels: int) -> str:
    return "{ organization { " + "... on Organization { parent { " * levels + "slug" + " } }" * levels + " } }"


# organization + 9 x parent + slug: depth 11, one over FREE's 10
BOMBS = [direct(9), through_fragments(9), through_inline_fragments(9)]


@pytest.mark.parametrize("query", BOMBS, ids=["direct", "fragments", "inline-fragments"])
async def test_c001_depth_bomb_is_refused_before_any_resolver(client, resolver_calls: list[Any], query: str) -> None:
    """C-001: nesting one level over the plan's depth, written any way, is 400 and nothing runs."""
    assert_refused(await gql(client, query), "depth", 10, 11)
    assert resolver_calls == []


async def test_depth_at_the_limit_executes(client, resolver_calls: list[Any]) -> None:
    r = await gql(client, direct(8))  # depth 10: not refused by the limit (the caller is anonymous)
    assert r.json()["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"


async def test_a_higher_plan_admits_what_free_refuses(client, database_url: str, resolver_calls: list[Any]) -> None:
    free = await make_tenant(database_url, slug="free", email="o@free.test", plan="free")
    big = await make_tenant(database_url, slug="big", email="o@big.test", plan="enterprise")
    as_free = await login(client, free)
    as_big = await login(client, big)
    for query in BOMBS:
        assert_refused(await gql(client, query, token=as_free["accessToken"]), "depth", 10, 11)
        assert resolver_calls == []
        r = await gql(client, query, token=as_big["accessToken"])
        assert r.status_code == 200
        assert r.json()["data"] == {"organization": {"parent": None}}
        assert [name for name, _ in resolver_calls] == ["get_organization"]
        resolver_calls.clear()
