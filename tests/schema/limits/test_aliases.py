"""The alias limit (C-002, C-003): alias amplification and aliased sign-in attempts, refused whole."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import gql, login, make_tenant
from tests.schema.limits.conftest import assert_refused


def aliased(n: int) -> str:
    return "{ " + " ".join(f"o{i}: organization {{ id }}" for i in range(n)) + " }"


async def test_c002_alias_amplification_is_refused(client, resolver_calls: list[Any]) -> None:
    """C-002: 16 aliases of one field, one over FREE's 15: 400, nothing fetched."""
    assert_refused(await gql(client, aliased(16)), "aliases", 15, 16)
    assert resolver_calls == []


async def test_aliases_through_fragments_count_once_per_spread(client, resolver_calls: list[Any]) -> None:
    query = (
        "fragment A on Organization { " + " ".join(f"s{i}: slug" for i in range(8)) + " } "
        "{ organization { ...A x: children { ...A } } }"
    )
    assert_refused(await gql(client, query), "aliases", 15, 17)
    assert resolver_calls == []


@pytest.fixture
def hasher_calls(app: Any, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    hasher = app.state.services.hasher

    async def verify(stored: Any, password: str) -> bool:
        calls.append("verify")
        return False

    async def burn() -> None:
        calls.append("burn")

    monkeypatch.setattr(hasher, "verify", verify)
    monkeypatch.setattr(hasher, "burn", burn)
    return calls


def logins(n: int) -> str:
    return (
        "mutation { "
        + " ".join(f'l{i}: login(email: "owner@acme.test", password: "guess-{i}") {{ accessToken }}' for i in range(n))
        + " }"
    )


async def test_c003_hundred_aliased_logins_never_check_a_password(client, tenant: Any, hasher_calls: list[str]) -> None:
    """C-003: 100 aliased `login` in one document are refused before any password is checked. This
    document is 1,403 tokens, so the token limit (FREE: 1,000) refuses it, before it is even parsed."""
    assert_refused(await gql(client, logins(100)), "tokens", 1000, 1403)
    assert hasher_calls == []


async def test_c003_aliased_logins_within_the_token_limit_hit_the_alias_limit(
    client, tenant: Any, hasher_calls: list[str]
) -> None:
    """C-003: 16 aliased `login` fit the token limit; the alias limit refuses them, no hash is checked."""
    assert_refused(await gql(client, logins(16)), "aliases", 15, 16)
    assert hasher_calls == []


async def test_a_higher_plan_admits_more_aliases(client, database_url: str) -> None:
    # STARTER allows 30 aliases but 15 root fields; PROFESSIONAL allows both
    big = await make_tenant(database_url, slug="big", email="o@big.test", plan="professional")
    token = (await login(client, big))["accessToken"]
    r = await gql(client, aliased(16), token=token)
    assert r.status_code == 200
    assert len(r.json()["data"]) == 16
