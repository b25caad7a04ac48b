"""The directive limit (C-008): directive usages spread over many fields; C-009, the fragment cycle."""

from __future__ import annotations

from typing import Any

from tests.conftest import error_codes, gql
from tests.schema.limits.conftest import assert_refused


async def test_c008_directive_flood_is_refused(client, resolver_calls: list[Any]) -> None:
    """C-008: 21 `@skip` on as many selections, one over FREE's 20: 400, nothing runs."""
    query = "{ me { " + "role @skip(if: false) " * 21 + "} }"
    assert_refused(await gql(client, query), "directives", 20, 21)
    assert resolver_calls == []


async def test_directives_in_fragments_count_once_per_spread(client, resolver_calls: list[Any]) -> None:
    query = (
        "fragment F on Viewer { " + "role @skip(if: false) " * 5 + "} { me { ...F ...F ...F @include(if: true) ...F } }"
    )  # 4 x 5 + 1
    assert_refused(await gql(client, query), "directives", 20, 21)
    assert resolver_calls == []


async def test_repeated_non_repeatable_directive_is_a_validation_error(client) -> None:
    r = await gql(client, "{ me @include(if: true) @include(if: true) { role } }")
    assert r.status_code == 400
    assert error_codes(r.json()) == ["BAD_USER_INPUT"]


async def test_c009_fragment_cycle_is_refused_by_validation(client, resolver_calls: list[Any]) -> None:
    """C-009: `fragment A { ...B } fragment B { ...A }`: the standard NoFragmentCycles rule, 400."""
    query = "{ me { user { ...A } } } fragment A on User { id ...B } fragment B on User { email ...A }"
    r = await gql(client, query)
    assert r.status_code == 400
    body = r.json()
    assert "data" not in body
    assert any("Cannot spread fragment" in e["message"] for e in body["errors"])
    assert set(error_codes(body)) == {"BAD_USER_INPUT"}
    assert resolver_calls == []


# C-004 (array batching off) is tests/gateway/test_edge.py::test_array_batching_is_refused; C-005 does
# not apply (batching is never enabled); C-010 and C-011 are tests/schema/test_introspection.py and
# tests/schema/test_errors.py::test_no_field_suggestions_in_prod.
