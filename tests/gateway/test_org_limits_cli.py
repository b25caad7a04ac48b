"""`portcullis org limits`: showing, overriding and resetting one tenant's plan limits, on SQLite and
PostgreSQL, and what the gateway then enforces."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from redis.asyncio import Redis

from gateway import cli
from gateway.app import create_app
from identity.revocation import CHANNEL
from tests.conftest import Tenant, error_codes, gql, login, make_settings, make_tenant, running, sql
from tests.gateway import test_cli
from tests.schema.test_quotas import add_member, create_key, quotas

env = test_cli.env  # the command sees the test database and nothing from the surroundings


def overrides(url: str, org_id: str) -> dict[str, Any]:
    raw = sql(url, "SELECT limit_overrides FROM organizations WHERE id = :o", o=org_id)[0][0]
    return raw if isinstance(raw, dict) else json.loads(raw)  # type: ignore[no-any-return]


async def run(*args: str) -> int:
    return await asyncio.to_thread(cli.main, ["org", "limits", *args])


def table(out: str) -> dict[str, list[str]]:
    return {line.split()[0]: line.split()[1:] for line in out.splitlines()[2:]}


async def test_show_lists_every_resource_with_plan_override_limit_and_use(env, database_url: str, capsys) -> None:
    await make_tenant(database_url, slug="acme", plan="starter")
    assert await run("acme") == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "organization acme (plan starter)"
    rows = table(out)
    assert list(rows) == [
        "MEMBERS",
        "API_KEYS",
        "REQUESTS_PER_MINUTE",
        "REQUESTS_PER_DAY",
        "COST_PER_MINUTE",
        "REPORTS_PER_MONTH",
        "CHILD_ORGANIZATIONS",
    ]
    assert rows["MEMBERS"] == ["10", "-", "10", "1"]
    assert rows["REQUESTS_PER_DAY"] == ["10,000", "-", "10,000", "-"]


async def test_set_overrides_and_the_gateway_enforces_them_for_that_tenant_only(
    env, database_url: str, signing_key: str, capsys
) -> None:
    a = await make_tenant(database_url, slug="a", email="owner@a.test", plan="free")
    b = await make_tenant(database_url, slug="b", email="owner@b.test", plan="free")
    assert await run("a", "--set", "MEMBERS=1", "api_keys=unlimited", "--set", "REQUESTS_PER_MINUTE=100000") == 0
    rows = table(capsys.readouterr().out)
    assert rows["MEMBERS"] == ["3", "1", "1", "1"]
    assert rows["API_KEYS"] == ["2", "unlimited", "unlimited", "0"]
    assert overrides(database_url, a.org_id) == {"MEMBERS": 1, "API_KEYS": None, "REQUESTS_PER_MINUTE": 100000}
    assert overrides(database_url, b.org_id) == {}

    app = create_app(make_settings(database_url, signing_key))
    async with running(app) as client:
        ta, tb = (await login(client, a))["accessToken"], (await login(client, b))["accessToken"]
        assert error_codes(await add_member(client, ta, "x@a.test")) == ["QUOTA_EXCEEDED"]
        for i in range(3):
            assert (await create_key(client, ta, f"k{i}")).get("data")
        assert (await quotas(client, ta))["API_KEYS"]["limit"] is None
        # B keeps its plan's limits
        assert (await add_member(client, tb, "x@b.test")).get("data")
        for i in range(2):
            assert (await create_key(client, tb, f"k{i}")).get("data")
        assert error_codes(await create_key(client, tb, "k2")) == ["QUOTA_EXCEEDED"]
        rows_b = await quotas(client, tb)
        assert (rows_b["MEMBERS"]["limit"], rows_b["API_KEYS"]["limit"]) == (3, 2)


async def test_an_override_of_zero_admits_nothing(env, database_url: str, signing_key: str, capsys) -> None:
    """0 is a real limit, not "no override": nothing more is admitted."""
    t = await make_tenant(database_url, slug="zero", email="owner@zero.test", plan="enterprise")
    assert await run("zero", "--set", "API_KEYS=0", "MEMBERS=0") == 0
    assert table(capsys.readouterr().out)["API_KEYS"] == ["unlimited", "0", "0", "0"]
    app = create_app(make_settings(database_url, signing_key))
    async with running(app) as client:
        token = (await login(client, t))["accessToken"]
        assert error_codes(await create_key(client, token)) == ["QUOTA_EXCEEDED"]
        assert error_codes(await add_member(client, token, "x@zero.test")) == ["QUOTA_EXCEEDED"]
        rows = await quotas(client, token)
        assert (rows["API_KEYS"]["limit"], rows["API_KEYS"]["remaining"]) == (0, 0)
        assert (rows["MEMBERS"]["limit"], rows["MEMBERS"]["used"], rows["MEMBERS"]["remaining"]) == (0, 1, 0)


@pytest.mark.parametrize(
    ("setting", "needle"),
    [
        ("MEMBERS=-1", "whole number"),
        ("MEMBERS=ten", "whole number"),
        ("MEMBERS=1.5", "whole number"),
        ("MEMBERS=", "whole number"),
        ("MEMBERS=\uff11", "whole number"),
        ("MEMBERS=2147483648", "whole number"),
        ("SEATS=3", "unknown resource 'SEATS'"),
        ("MEMBERS", "expected RESOURCE=N"),
    ],
    ids=["negative", "word", "fraction", "empty", "non-ascii-digit", "too-large", "unknown-resource", "no-value"],
)
async def test_a_bad_setting_is_refused_and_nothing_is_written(
    env, database_url: str, capsys, setting: str, needle: str
) -> None:
    t = await make_tenant(database_url, slug="acme")
    assert await run("acme", "--set", "API_KEYS=7") == 0
    capsys.readouterr()
    # a good setting beside the bad one is not written either
    assert await run("acme", "--set", "REPORTS_PER_MONTH=9", setting) == 2
    err = capsys.readouterr().err
    assert needle in err
    assert "nothing changed" in err
    assert overrides(database_url, t.org_id) == {"API_KEYS": 7}


async def test_reset_goes_back_to_the_plan(env, database_url: str, capsys) -> None:
    t = await make_tenant(database_url, slug="acme")
    assert await run("acme", "--set", "MEMBERS=unlimited", "CHILD_ORGANIZATIONS=1") == 0
    assert await run("acme", "--reset") == 0
    assert overrides(database_url, t.org_id) == {}
    assert table(capsys.readouterr().out)["MEMBERS"] == ["50", "-", "50", "1"]
    # --reset with --set: the settings replace every earlier override
    assert await run("acme", "--set", "MEMBERS=5") == 0
    assert await run("acme", "--reset", "--set", "API_KEYS=4") == 0
    assert overrides(database_url, t.org_id) == {"API_KEYS": 4}


async def test_unknown_organization(env, database_url: str, capsys) -> None:
    assert await run("nope", "--set", "MEMBERS=1") == 1
    assert "no organization 'nope'" in capsys.readouterr().err


@pytest.mark.redis
async def test_a_change_is_announced_to_every_gateway(env, database_url: str, redis_url: str, capsys) -> None:
    """Shared mode: running gateways drop the tenant's cached sessions and limits at once."""
    t = await make_tenant(database_url, slug="acme")
    env.setenv("PORTCULLIS_REDIS_URL", redis_url)
    redis = Redis.from_url(redis_url)
    pubsub = redis.pubsub()
    try:
        await pubsub.subscribe(CHANNEL)
        assert (await messages(pubsub, 1))[0]["type"] == "subscribe"
        assert await run("acme") == 0  # showing changes nothing, announces nothing
        assert await run("acme", "--set", "MEMBERS=7") == 0
        assert await run("acme", "--reset") == 0
        assert [m["data"] for m in await messages(pubsub, 2)] == [f"org:{t.org_id}".encode()] * 2
    finally:
        await pubsub.aclose()
        await redis.aclose()


async def messages(pubsub: Any, n: int, within: float = 5.0) -> list[dict[str, Any]]:
    """The next `n` messages on the subscription (fewer if they do not come within `within` seconds)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    got: list[dict[str, Any]] = []
    while len(got) < n and loop.time() < deadline:
        message = await pubsub.get_message(timeout=max(0.0, deadline - loop.time()))
        if message is not None:
            got.append(message)
    return got


async def test_a_tenant_in_a_running_gateway_sees_its_new_limits(
    env, database_url: str, signing_key: str, capsys, tenant: Tenant
) -> None:
    app = create_app(make_settings(database_url, signing_key))
    async with running(app) as client:
        token = (await login(client, tenant))["accessToken"]
        assert (await quotas(client, token))["MEMBERS"]["limit"] == 50
        assert await run(tenant.slug, "--set", "MEMBERS=1") == 0
        assert (await quotas(client, token))["MEMBERS"]["limit"] == 1
        assert error_codes(await add_member(client, token, "late@acme.test")) == ["QUOTA_EXCEEDED"]
        r = await gql(client, "{ organization { plan } }", token=token)
        assert r.json()["data"]["organization"]["plan"] == "PROFESSIONAL"
