"""Automatic blocks on abuse signals: failed sign-ins naming many accounts from one address, a burst of
invalid credentials, repeated rate-limit refusals; longer each time the address offends again; never an
address on the allowlist."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from resolvers import address_blocks
from tests.conftest import Tenant, error_codes, gql, login, make_tenant, sql
from tests.gateway.test_address_blocks import (
    BLOCKED_IP,
    LOGIN,
    as_operator,
    assert_blocked,
    client_at,
    gateway,
)
from tests.schema.test_api_keys import ORG

BAD_BEARER = {"Authorization": "Bearer not-a-valid-token"}
DURATIONS = "900,3600,86400"


def automatic_blocks(url: str) -> list[tuple[Any, ...]]:
    return sql(
        url,
        "SELECT cidr, organization_id, source, signal, created_at, expires_at FROM address_blocks "
        "WHERE source = 'automatic' ORDER BY created_at",
    )


def seconds(row: tuple[Any, ...]) -> int:
    created, expires = row[4], row[5]
    if isinstance(created, str):
        created, expires = datetime.fromisoformat(created), datetime.fromisoformat(expires)
    return round((expires - created).total_seconds())


async def test_failed_sign_ins_across_accounts(database_url: str, signing_key: str) -> None:
    t = await make_tenant(database_url)
    async with (
        gateway(database_url, signing_key, block_sign_in_accounts=3) as app,
        client_at(app, BLOCKED_IP) as there,
    ):
        token = (await login(app.state.client, t))["accessToken"]
        # the same account again and again is the lockout's business, not this signal's
        for _ in range(4):
            r = await gql(there, LOGIN, {"e": "someone@example.test", "p": "wrong password"})
            assert error_codes(r.json()) == ["UNAUTHENTICATED"]
        r = await gql(there, LOGIN, {"e": "another@example.test", "p": "wrong password"})
        assert error_codes(r.json()) == ["UNAUTHENTICATED"]
        assert automatic_blocks(database_url) == []
        # the third distinct account: the tenant's owner, so the block is told to that tenant
        r = await gql(there, LOGIN, {"e": t.email, "p": "wrong password"})
        assert error_codes(r.json()) == ["UNAUTHENTICATED"]
        assert_blocked(await gql(there, LOGIN, {"e": t.email, "p": t.password}))
        assert_blocked(await gql(there, "{ __typename }"))
        assert (await gql(app.state.client, ORG, token=token)).status_code == 200
        metrics = (await app.state.client.get("/metrics")).text
        assert 'portcullis_address_blocks_automatic_total{signal="failed_sign_ins"} 1.0' in metrics
        assert 'portcullis_address_blocks_active{scope="platform"} 1.0' in metrics
    [row] = automatic_blocks(database_url)
    assert row[:4] == (f"{BLOCKED_IP}/32", None, "automatic", "failed_sign_ins")
    assert seconds(row) == 900
    assert sql(database_url, "SELECT organization_id, kind, severity FROM security_events") == [
        (t.org_id, "address_blocked", "high")
    ]
    assert sql(database_url, "SELECT chain, actor_type FROM audit_log WHERE action = 'address_blocked'") == [
        ("platform", "system")
    ]


async def test_a_burst_of_invalid_credentials(database_url: str, signing_key: str) -> None:
    async with (
        gateway(database_url, signing_key, block_invalid_credentials=5) as app,
        client_at(app, BLOCKED_IP) as there,
    ):
        for _ in range(4):
            assert (await gql(there, ORG, headers=BAD_BEARER)).status_code == 401
        assert (await gql(there, "{ __typename }")).status_code == 200
        assert (await gql(there, ORG, headers=BAD_BEARER)).status_code == 401
        assert_blocked(await gql(there, "{ __typename }"))
        # another address, with the same bad credential, is not
        assert (await gql(app.state.client, ORG, headers=BAD_BEARER)).status_code == 401
    [row] = automatic_blocks(database_url)
    assert row[:4] == (f"{BLOCKED_IP}/32", None, "automatic", "invalid_credentials")
    # nobody's tenant: no security event
    assert sql(database_url, "SELECT count(*) FROM security_events") == [(0,)]


async def test_repeated_rate_limit_refusals(database_url: str, signing_key: str) -> None:
    t = await make_tenant(database_url)
    settings = {"anonymous_requests_per_minute": 2, "block_rate_limited": 3}
    async with gateway(database_url, signing_key, **settings) as app, client_at(app, BLOCKED_IP) as there:
        statuses = [(await gql(there, "{ __typename }")).status_code for _ in range(5)]
        assert statuses == [200, 200, 429, 429, 429]
        assert_blocked(await gql(there, "{ __typename }"))
        assert (await login(app.state.client, t))["accessToken"]
    [row] = automatic_blocks(database_url)
    assert row[3] == "rate_limited"


async def test_growing_durations(database_url: str, signing_key: str) -> None:
    settings = {"block_invalid_credentials": 2, "block_durations_seconds": DURATIONS}
    async with gateway(database_url, signing_key, **settings) as app, client_at(app, BLOCKED_IP) as there:
        for expected in (900, 3600, 86400, 86400):
            before = len(automatic_blocks(database_url))
            answers = [await gql(there, ORG, headers=BAD_BEARER) for _ in range(3)]
            assert [a.status_code for a in answers] == ([401, 401, 403] if expected == 900 else [401, 403, 403])
            assert_blocked(answers[-1])
            rows = automatic_blocks(database_url)
            assert len(rows) == before + 1
            assert seconds(rows[-1]) == expected
            # the operator lifts it; the address offends again
            block_id = sql(database_url, "SELECT id FROM address_blocks WHERE lifted_at IS NULL")[0][0]
            assert await as_operator(app, address_blocks.unblock_platform, block_id) is True


async def test_allowlisted_address_is_never_blocked(database_url: str, signing_key: str) -> None:
    t: Tenant = await make_tenant(database_url)
    settings = {
        "block_invalid_credentials": 2,
        "block_sign_in_accounts": 2,
        "block_allowlist": "203.0.113.0/24,2001:db8::/32",
    }
    async with gateway(database_url, signing_key, **settings) as app, client_at(app, BLOCKED_IP) as there:
        for _ in range(10):
            assert (await gql(there, ORG, headers=BAD_BEARER)).status_code == 401
        for n in range(5):
            r = await gql(there, LOGIN, {"e": f"user{n}@example.test", "p": "wrong password"})
            assert error_codes(r.json()) == ["UNAUTHENTICATED"]
        assert (await login(there, t))["accessToken"]
        async with client_at(app, "2001:db8::1") as v6:
            for _ in range(5):
                assert (await gql(v6, ORG, headers=BAD_BEARER)).status_code == 401
        assert automatic_blocks(database_url) == []


async def test_trusted_proxies_are_never_blocked(database_url: str, signing_key: str) -> None:
    """The proxy's own address (a request it sends without X-Forwarded-For) is never blocked; the clients
    behind it are, by the address it forwards."""
    settings = {"block_invalid_credentials": 2, "trusted_proxies": "10.0.0.0/8"}
    async with gateway(database_url, signing_key, **settings) as app, client_at(app, "10.1.2.3") as proxy:
        for _ in range(5):
            assert (await gql(proxy, ORG, headers=BAD_BEARER)).status_code == 401
        forwarded = {**BAD_BEARER, "X-Forwarded-For": BLOCKED_IP}
        assert (await gql(proxy, ORG, headers=forwarded)).status_code == 401
        assert (await gql(proxy, ORG, headers=forwarded)).status_code == 401
        assert_blocked(await gql(proxy, "{ __typename }", headers={"X-Forwarded-For": BLOCKED_IP}))
        assert (await gql(proxy, "{ __typename }")).status_code == 200
    assert [r[0] for r in automatic_blocks(database_url)] == [f"{BLOCKED_IP}/32"]


async def test_an_ipv6_offender_is_blocked_by_its_64(database_url: str, signing_key: str) -> None:
    """One IPv6 subscriber holds a whole /64: its addresses count together, and the block covers them all."""
    async with gateway(database_url, signing_key, block_invalid_credentials=3) as app:
        for ip in ("2001:db8:0:7::1", "2001:db8:0:7::2", "2001:db8:0:7:ffff::3"):
            async with client_at(app, ip) as c:
                assert (await gql(c, ORG, headers=BAD_BEARER)).status_code == 401
        async with client_at(app, "2001:db8:0:7::abcd") as same, client_at(app, "2001:db8:0:8::1") as next_door:
            assert_blocked(await gql(same, "{ __typename }"))
            assert (await gql(next_door, "{ __typename }")).status_code == 200
    assert [r[:4] for r in automatic_blocks(database_url)] == [
        ("2001:db8:0:7::/64", None, "automatic", "invalid_credentials")
    ]
