"""Shared mode: a plan change made through one gateway process applies at once on the others, even
where they hold the session (and its plan) in their caches."""

from __future__ import annotations

import asyncio

import pytest

from tests.conftest import Tenant, error_codes, gql, shared_apps
from tests.schema.test_quotas import CHANGE_PLAN, DEEP

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


async def test_change_plan_reaches_the_other_process(
    postgresql_url: str, redis_url: str, signing_key: str, shared_tenant: Tenant
) -> None:
    async with shared_apps(postgresql_url, redis_url, signing_key, shared_tenant) as (c1, c2, token, *_):
        downgraded = (await gql(c1, CHANGE_PLAN, {"plan": "FREE"}, token=token)).json()
        assert downgraded["data"]["changePlan"]["plan"] == "FREE"
        # process two caches the session with the FREE plan: depth 11 is over FREE's 10
        for _ in range(2):
            assert error_codes((await gql(c2, DEEP, token=token)).json()) == ["OPERATION_TOO_COMPLEX"]
        assert (await gql(c1, CHANGE_PLAN, {"plan": "STARTER"}, token=token)).json()["data"]["changePlan"]
        # the announcement travels through Redis: allow it a moment, but no cache lifetime
        for _ in range(50):
            body = (await gql(c2, DEEP, token=token)).json()
            if body.get("data"):
                break
            assert error_codes(body) == ["OPERATION_TOO_COMPLEX"]
            await asyncio.sleep(0.02)
        else:
            pytest.fail("process two still applies the FREE plan a second later")
