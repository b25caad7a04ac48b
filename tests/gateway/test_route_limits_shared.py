"""The public routes' per-address limits in shared mode: gateway processes on one PostgreSQL and one
Redis spend one budget per route and address."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from gateway.app import create_app
from tests.conftest import _truncate, make_settings, running
from tests.gateway.test_route_limits import LIMIT, ROUTES, assert_route_limited, client_at, send

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


@pytest.fixture
def database(postgresql_url: str) -> Iterator[str]:
    """The shared PostgreSQL, emptied afterwards of what the routes wrote (sign-in failures, refusals)."""
    yield postgresql_url
    _truncate(postgresql_url)


@pytest.mark.parametrize(("setting", "policy", "method", "path", "status"), ROUTES)
async def test_two_processes_share_each_route_budget(
    database: str, redis_url: str, signing_key: str, setting: str, policy: str, method: str, path: str, status: int
) -> None:
    # an address of its own: Redis outlives the test, and other tests' counts must not reach this one
    address = f"2001:db8::{uuid.uuid4().hex[:4]}"
    settings = make_settings(database, signing_key, redis_url=redis_url, **{setting: LIMIT})
    one, two = create_app(settings), create_app(settings)
    async with running(one, client_ip=address) as c1, running(two, client_ip=address) as c2:
        assert (await send(c1, method, path)).status_code == status
        assert (await send(c2, method, path)).status_code == status
        assert (await send(c1, method, path)).status_code == status
        assert_route_limited(await send(c2, method, path), policy, LIMIT)
        assert_route_limited(await send(c1, method, path), policy, LIMIT)
        async with client_at(two, f"2001:db8::{uuid.uuid4().hex[:4]}:1") as elsewhere:
            assert (await send(elsewhere, method, path)).status_code == status
