"""Address blocks in shared mode (one PostgreSQL, one Redis): a block made through one gateway process is
refused by the others within a second, whether a tenant made it, the operator's command did, or an abuse
signal counted on several processes at once."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway import cli
from gateway.app import create_app
from tests.conftest import Tenant, gql, login, make_settings, running, sql
from tests.gateway.test_address_blocks import ADMIN_IP, BLOCKED_IP, LOGIN, assert_blocked, block, client_at
from tests.gateway.test_shared_mode import gateway_env, gateway_processes
from tests.schema.test_api_keys import ORG

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


async def blocked_within(request: Callable[[], Awaitable[httpx.Response]], within: float = 1.0) -> float:
    """Poll `request()` until it answers 403 ADDRESS_BLOCKED; the seconds that took."""
    started = time.monotonic()
    while True:
        r = await request()
        elapsed = time.monotonic() - started
        if r.status_code == 403:
            assert_blocked(r)
            return elapsed
        assert r.status_code == 200, r.text
        assert elapsed < within, f"still accepted {elapsed:.2f}s later"
        await asyncio.sleep(0.02)


async def accepted_within(request: Callable[[], Awaitable[httpx.Response]], within: float = 1.0) -> None:
    started = time.monotonic()
    while (r := await request()).status_code != 200:
        assert_blocked(r)
        assert time.monotonic() - started < within, "still refused"
        await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def two_apps(url: str, redis_url: str, signing_key: str, **overrides: Any) -> AsyncIterator[tuple[Any, Any]]:
    one = create_app(make_settings(url, signing_key, redis_url=redis_url, **overrides))
    two = create_app(make_settings(url, signing_key, redis_url=redis_url, **overrides))
    async with running(one, client_ip=ADMIN_IP) as c1, running(two, client_ip=ADMIN_IP) as c2:
        one.state.client, two.state.client = c1, c2
        yield one, two


async def test_a_tenant_block_reaches_the_other_app_within_a_second(
    postgresql_url: str, redis_url: str, signing_key: str, shared_tenant: Tenant
) -> None:
    async with two_apps(postgresql_url, redis_url, signing_key) as (one, two), client_at(two, BLOCKED_IP) as there:
        admin = (await login(one.state.client, shared_tenant))["accessToken"]
        token = (await login(there, shared_tenant))["accessToken"]
        assert (await gql(there, ORG, token=token)).status_code == 200
        made = await block(one.state.client, admin, BLOCKED_IP)
        await blocked_within(lambda: gql(there, ORG, token=token))
        r = await gql(there, LOGIN, {"e": shared_tenant.email, "p": shared_tenant.password})
        assert r.status_code == 403
        unblock = "mutation U($id: ID!) { unblockAddress(id: $id) }"
        assert (await gql(one.state.client, unblock, {"id": made["id"]}, token=admin)).json()["data"]
        await accepted_within(lambda: gql(there, ORG, token=token))


@pytest.fixture
def operator_env(postgresql_url: str, redis_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The command sees the shared database and Redis, and nothing else from the surroundings."""
    for name in list(os.environ):
        if name.startswith("PORTCULLIS_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PORTCULLIS_ENV", "dev")
    monkeypatch.setenv("PORTCULLIS_DATABASE_URL", postgresql_url)
    monkeypatch.setenv("PORTCULLIS_REDIS_URL", redis_url)


async def run(*args: str) -> int:
    return await asyncio.to_thread(cli.main, list(args))


async def test_a_platform_block_from_the_command_line_reaches_every_app_within_a_second(
    postgresql_url: str, redis_url: str, signing_key: str, shared_tenant: Tenant, operator_env: None, capsys: Any
) -> None:
    async with (
        two_apps(postgresql_url, redis_url, signing_key) as (one, two),
        client_at(one, BLOCKED_IP) as there_one,
        client_at(two, BLOCKED_IP) as there_two,
    ):
        assert await run("blocks", "add", "203.0.113.0/24", "--reason", "botnet") == 0
        out = capsys.readouterr().out
        assert out.startswith("blocked 203.0.113.0/24 platform-wide: ")
        block_id = out.split()[-1]
        for there in (there_one, there_two):
            await blocked_within(lambda there=there: gql(there, "{ __typename }"))
        assert await run("blocks", "list") == 0
        assert "203.0.113.0/24  platform  manual  until lifted  botnet" in capsys.readouterr().out
        assert await run("blocks", "remove", block_id) == 0
        assert capsys.readouterr().out.strip() == f"lifted {block_id}"
        for there in (there_one, there_two):
            await accepted_within(lambda there=there: gql(there, "{ __typename }"))
    assert sql(postgresql_url, "SELECT chain, action FROM audit_log WHERE action LIKE 'address_%' ORDER BY at") == [
        ("platform", "address_blocked"),
        ("platform", "address_unblocked"),
    ]


async def test_bad_command_line_input(operator_env: None, capsys: Any) -> None:
    assert await run("blocks", "add", "0.0.0.0/0", "--reason", "everyone") == 2
    assert "every address" in capsys.readouterr().err
    assert await run("blocks", "add", "203.0.113.0/24", "--reason", "x", "--expires-at", "tomorrow") == 2
    assert await run("blocks", "remove", "00000000-0000-0000-0000-000000000000") == 1


async def test_abuse_counted_across_apps_blocks_on_every_app(
    postgresql_url: str, redis_url: str, signing_key: str, shared_tenant: Tenant
) -> None:
    bad = {"Authorization": "Bearer not-a-valid-token"}
    async with (
        two_apps(postgresql_url, redis_url, signing_key, block_invalid_credentials=4) as (one, two),
        client_at(one, BLOCKED_IP) as there_one,
        client_at(two, BLOCKED_IP) as there_two,
    ):
        # two invalid credentials on each app: the fourth, wherever it lands, blocks the address
        for there in (there_one, there_two, there_one):
            assert (await gql(there, ORG, headers=bad)).status_code == 401
        assert (await gql(there_two, "{ __typename }")).status_code == 200
        assert (await gql(there_two, ORG, headers=bad)).status_code == 401
        for there in (there_two, there_one):
            await blocked_within(lambda there=there: gql(there, "{ __typename }"))
    rows = sql(postgresql_url, "SELECT cidr, signal FROM address_blocks")
    assert rows == [(f"{BLOCKED_IP}/32", "invalid_credentials")]


@pytest.mark.slow
async def test_a_block_is_refused_by_a_second_gateway_process_within_a_second(
    postgresql_url: str, redis_url: str, signing_key: str, shared_tenant: Tenant, tmp_path: Path
) -> None:
    """Two real gateway processes behind a (trusted) proxy on the loopback: a tenant's block made through the
    first is refused by the second within a second, and so is its lifting."""
    env = gateway_env(postgresql_url, redis_url, signing_key, TRUSTED_PROXIES="127.0.0.1/32")
    admin, blocked = {"X-Forwarded-For": ADMIN_IP}, {"X-Forwarded-For": BLOCKED_IP}
    with gateway_processes(2, env, tmp_path) as (url1, url2):
        async with httpx.AsyncClient(base_url=url1) as c1, httpx.AsyncClient(base_url=url2) as c2:
            r = await gql(c1, LOGIN, {"e": shared_tenant.email, "p": shared_tenant.password}, headers=admin)
            admin_token = r.json()["data"]["login"]["accessToken"]
            r = await gql(c2, LOGIN, {"e": shared_tenant.email, "p": shared_tenant.password}, headers=blocked)
            token = r.json()["data"]["login"]["accessToken"]
            assert (await gql(c2, ORG, token=token, headers=blocked)).status_code == 200
            r = await gql(
                c1,
                'mutation { blockAddress(cidr: "203.0.113.7", reason: "stuffing") { id } }',
                token=admin_token,
                headers=admin,
            )
            block_id = r.json()["data"]["blockAddress"]["id"]
            took = await blocked_within(lambda: gql(c2, ORG, token=token, headers=blocked))
            assert took < 1.0
            assert (await gql(c2, ORG, token=token, headers=admin)).status_code == 200
            unblock = "mutation U($id: ID!) { unblockAddress(id: $id) }"
            assert (await gql(c1, unblock, {"id": block_id}, token=admin_token, headers=admin)).status_code == 200
            await accepted_within(lambda: gql(c2, ORG, token=token, headers=blocked))
