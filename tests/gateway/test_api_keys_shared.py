"""API keys in shared mode: processes on one PostgreSQL and one Redis.

C-118 across instances: a key revoked through one process is refused by the others within a second;
a rotated key's old secret stops on every process at the end of its grace period; the key's own
per-minute limit is counted once for all processes."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from tests.conftest import (
    Tenant,
    error_codes,
    gql,
    login,
    refused_within,
    shared_apps,
)
from tests.gateway.test_shared_mode import gateway_env, gateway_processes
from tests.schema.test_api_keys import ORG, REVOKE, ROTATE, new_key, with_key

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


async def test_c118_revocation_reaches_the_other_app(
    postgresql_url: str, redis_url: str, signing_key: str, shared_tenant: Tenant
) -> None:
    async with shared_apps(postgresql_url, redis_url, signing_key, shared_tenant) as (c1, c2, token, *_):
        key_id, key = await new_key(c1, token)
        for _ in range(2):  # the second answer comes from app two's cache
            assert (await gql(c2, ORG, headers=with_key(key))).status_code == 200
        assert (await gql(c1, REVOKE, {"id": key_id}, token=token)).json()["data"]["revokeApiKey"]["revokedAt"]
        await refused_within(lambda: gql(c2, ORG, headers=with_key(key)))


async def test_rotation_grace_ends_on_both_apps(
    postgresql_url: str, redis_url: str, signing_key: str, shared_tenant: Tenant
) -> None:
    async with shared_apps(postgresql_url, redis_url, signing_key, shared_tenant) as (c1, c2, token, *_):
        key_id, old = await new_key(c1, token)
        assert (await gql(c2, ORG, headers=with_key(old))).status_code == 200
        new = (await gql(c1, ROTATE, {"id": key_id, "g": 1}, token=token)).json()["data"]["rotateApiKey"]["secret"]
        for c in (c1, c2):
            assert (await gql(c, ORG, headers=with_key(old))).status_code == 200
            assert (await gql(c, ORG, headers=with_key(new))).status_code == 200
        await asyncio.sleep(1.05)
        for c in (c1, c2):
            assert (await gql(c, ORG, headers=with_key(old))).status_code == 401
            assert (await gql(c, ORG, headers=with_key(new))).status_code == 200


async def test_key_rate_limit_is_shared_between_apps(
    postgresql_url: str, redis_url: str, signing_key: str, shared_tenant: Tenant
) -> None:
    async with shared_apps(postgresql_url, redis_url, signing_key, shared_tenant) as (c1, c2, token, *_):
        _, key = await new_key(c1, token, rateLimitPerMinute=4)
        statuses = [(await gql(c, ORG, headers=with_key(key))).status_code for c in (c1, c2, c1, c2, c1, c2)]
        assert statuses == [200, 200, 200, 200, 429, 429]
        r = await gql(c2, ORG, headers=with_key(key))
        assert int(r.headers["retry-after"]) >= 1
        assert error_codes(r.json()) == ["RATE_LIMITED"]


@pytest.mark.slow
async def test_api_keys_across_uvicorn_processes(
    postgresql_url: str, redis_url: str, signing_key: str, shared_tenant: Tenant, tmp_path: Path
) -> None:
    """Two real gateway processes: revoked through 1, refused by 2 within one second; a rotated key's old
    secret stops working on both at the end of the grace period."""
    env = gateway_env(postgresql_url, redis_url, signing_key)
    with gateway_processes(2, env, tmp_path) as (url1, url2):
        async with httpx.AsyncClient(base_url=url1) as c1, httpx.AsyncClient(base_url=url2) as c2:
            token = (await login(c1, shared_tenant))["accessToken"]
            key_id, key = await new_key(c1, token)
            for _ in range(2):
                assert (await gql(c2, ORG, headers=with_key(key))).status_code == 200
            assert (await gql(c1, REVOKE, {"id": key_id}, token=token)).status_code == 200
            await refused_within(lambda: gql(c2, ORG, headers=with_key(key)))
            assert (await gql(c1, ORG, headers=with_key(key))).status_code == 401

            rotating_id, old = await new_key(c1, token, name="rotating")
            for c in (c1, c2):
                assert (await gql(c, ORG, headers=with_key(old))).status_code == 200
            rotated = (await gql(c1, ROTATE, {"id": rotating_id, "g": 2}, token=token)).json()
            new = rotated["data"]["rotateApiKey"]["secret"]
            for c in (c1, c2):
                assert (await gql(c, ORG, headers=with_key(old))).status_code == 200
            await asyncio.sleep(2.05)
            for c in (c1, c2):
                assert (await gql(c, ORG, headers=with_key(old))).status_code == 401
                assert (await gql(c, ORG, headers=with_key(new))).status_code == 200
