"""The token limit (C-007, C-008): a flood of tokens is refused before the text is parsed."""

from __future__ import annotations

import time
from typing import Any

from tests.conftest import gql
from tests.schema.limits.conftest import assert_refused


async def test_c007_field_duplication_flood_is_refused_quickly(client, resolver_calls: list[Any]) -> None:
    """C-007: `{ me { id id … x50,000 } }`: counted no further than 10,001 tokens, never parsed."""
    query = "{ me { " + "id " * 50_000 + "} }"
    started = time.perf_counter()
    r = await gql(client, query)
    elapsed = time.perf_counter() - started
    assert_refused(r, "tokens", 1000, 10_001)
    assert elapsed < 1.0
    assert resolver_calls == []


async def test_c008_directive_flood_on_one_field_hits_the_token_limit(client, resolver_calls: list[Any]) -> None:
    """C-008: `{ me @include(if: true) … x10,000 { id } }`: over the token limit, refused unparsed."""
    query = "{ me " + "@include(if: true) " * 10_000 + "{ id } }"
    assert_refused(await gql(client, query), "tokens", 1000, 10_001)
    assert resolver_calls == []


async def test_the_token_limit_is_exact(client) -> None:
    at_limit = await gql(client, "{ " + "__typename " * 998 + "}")  # 1,000 tokens: parsed and validated
    assert at_limit.status_code == 400
    assert at_limit.json()["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
    assert_refused(await gql(client, "{ " + "__typename " * 999 + "}"), "tokens", 1000, 1001)
