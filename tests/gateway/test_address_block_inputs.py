"""`blockAddress` and `unblockAddress` refuse bad input with the contract's codes and write nothing: each case
below is one test."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.conftest import Tenant, error_codes, gql, login, make_tenant, sql
from tests.gateway.test_address_blocks import ADMIN_IP, BLOCK, BLOCKED, UNBLOCK, block, gateway


async def refused(database_url: str, signing_key: str, code: str, **variables: Any) -> dict[str, Any]:
    """`blockAddress` with these variables (over a valid default), by the owner: refused with `code`, and
    nothing written."""
    t = await make_tenant(database_url)
    async with gateway(database_url, signing_key) as app:
        token = (await login(app.state.client, t))["accessToken"]
        given = {"cidr": "203.0.113.0/24", "reason": "scanning", **variables}
        r = await gql(app.state.client, BLOCK, given, token=token)
    body = r.json()
    assert error_codes(body) == [code], body
    assert body.get("data") is None
    assert sql(database_url, "SELECT count(*) FROM address_blocks") == [(0,)]
    assert sql(database_url, "SELECT count(*) FROM security_events") == [(0,)]
    return body["errors"][0]  # type: ignore[no-any-return]


@pytest.mark.parametrize("cidr", ["not-an-address", "203.0.113.0/33", "203.0.113.300", "", "1" * 200])
async def test_invalid_cidr(database_url: str, signing_key: str, cidr: str) -> None:
    error = await refused(database_url, signing_key, "BAD_USER_INPUT", cidr=cidr)
    assert error["extensions"]["field"] == "cidr"


@pytest.mark.parametrize("cidr", ["0.0.0.0/0", "::/0", "::ffff:0.0.0.0/96"])
async def test_every_address_is_refused(database_url: str, signing_key: str, cidr: str) -> None:
    error = await refused(database_url, signing_key, "BAD_USER_INPUT", cidr=cidr)
    assert "every address" in error["message"]


@pytest.mark.parametrize("cidr", ["10.0.0.0/7", "2001::/31"])
async def test_too_wide_a_range(database_url: str, signing_key: str, cidr: str) -> None:
    error = await refused(database_url, signing_key, "BAD_USER_INPUT", cidr=cidr)
    assert "at most a /" in error["message"]


@pytest.mark.parametrize("cidr", [ADMIN_IP, "198.51.100.0/24", f"::ffff:{ADMIN_IP}"])
async def test_a_block_of_the_callers_own_address(database_url: str, signing_key: str, cidr: str) -> None:
    error = await refused(database_url, signing_key, "BAD_USER_INPUT", cidr=cidr)
    assert "your own address" in error["message"]


async def test_expiry_in_the_past(database_url: str, signing_key: str) -> None:
    past = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    error = await refused(database_url, signing_key, "BAD_USER_INPUT", expiresAt=past)
    assert error["extensions"]["field"] == "expiresAt"


@pytest.mark.parametrize("reason", ["", "   "])
async def test_empty_reason(database_url: str, signing_key: str, reason: str) -> None:
    error = await refused(database_url, signing_key, "BAD_USER_INPUT", reason=reason)
    assert error["extensions"]["field"] == "reason"


async def test_too_long_a_reason(database_url: str, signing_key: str) -> None:
    error = await refused(database_url, signing_key, "BAD_USER_INPUT", reason="x" * 501)
    assert error["extensions"]["field"] == "reason"


async def test_nul_in_the_reason(database_url: str, signing_key: str) -> None:
    await refused(database_url, signing_key, "BAD_USER_INPUT", reason="a\x00b")


async def test_viewer_without_security_manage(database_url: str, signing_key: str) -> None:
    t = await make_tenant(database_url, role="viewer")
    async with gateway(database_url, signing_key) as app:
        token = (await login(app.state.client, t))["accessToken"]
        r = await gql(app.state.client, BLOCK, {"cidr": "203.0.113.0/24", "reason": "x"}, token=token)
        assert error_codes(r.json()) == ["FORBIDDEN"]
        assert r.json()["errors"][0]["extensions"]["requiredScopes"] == [["security:manage"]]
        r = await gql(app.state.client, BLOCKED, token=token)
        assert error_codes(r.json()) == ["FORBIDDEN"]
    assert sql(database_url, "SELECT count(*) FROM address_blocks") == [(0,)]


async def test_unblock_of_another_tenants_block_is_not_found(database_url: str, signing_key: str) -> None:
    a = await make_tenant(database_url)
    b = await make_tenant(database_url, slug="globex", email="owner@globex.test")
    async with gateway(database_url, signing_key) as app:
        a_token = (await login(app.state.client, a))["accessToken"]
        b_token = (await login(app.state.client, b))["accessToken"]
        made = await block(app.state.client, a_token, "203.0.113.0/24")
        for block_id in (made["id"], "00000000-0000-0000-0000-000000000000", "x" * 300):
            r = await gql(app.state.client, UNBLOCK, {"id": block_id}, token=b_token)
            assert error_codes(r.json()) == ["NOT_FOUND"], r.json()
    assert sql(database_url, "SELECT lifted_at FROM address_blocks") == [(None,)]


async def test_a_range_already_blocked(database_url: str, signing_key: str) -> None:
    t: Tenant = await make_tenant(database_url)
    async with gateway(database_url, signing_key) as app:
        token = (await login(app.state.client, t))["accessToken"]
        await block(app.state.client, token, "203.0.113.0/24")
        r = await gql(app.state.client, BLOCK, {"cidr": "203.0.113.9/24", "reason": "again"}, token=token)
        assert error_codes(r.json()) == ["CONFLICT"]
    assert sql(database_url, "SELECT count(*) FROM address_blocks") == [(1,)]
