"""Two gateway apps in shared mode (one PostgreSQL, one Redis), as two processes would be, each running its
webhook delivery worker on the same outbox: every delivery reaches the receiver exactly once (C-143)."""

from __future__ import annotations

import asyncio

from gateway.app import create_app
from identity.security_events import SecurityEventKind
from tests.conftest import Tenant, login, make_settings, running, sql
from tests.http_upstreams import serving
from tests.webhook_helpers import FAST, create_key, create_webhook, eventually, record_events
from tests.webhook_receiver import Receiver


async def test_c143_two_processes_never_send_a_delivery_twice(
    postgresql_url: str, redis_url: str, signing_key: str, shared_tenant: Tenant
) -> None:
    receiver = Receiver()
    quick = {**FAST, "webhook_poll_seconds": 0.01}
    one = create_app(make_settings(postgresql_url, signing_key, redis_url=redis_url, **quick))
    two = create_app(make_settings(postgresql_url, signing_key, redis_url=redis_url, **quick))
    with serving(receiver, lifespan="off") as url:
        async with running(one) as c1, running(two) as c2:
            owner = (await login(c1, shared_tenant))["accessToken"]
            _, receiver.secret = await create_webhook(c1, owner, url + "/hooks")
            # written outside both apps: neither is woken, both find them due at their next poll, at once
            made = await record_events(postgresql_url, shared_tenant.org_id, 40, SecurityEventKind.ACCOUNT_LOCKED)
            # and some through each app, which wake their own worker
            for i in range(5):
                await create_key(c1, owner, f"one {i}")
                await create_key(c2, owner, f"two {i}")
            await eventually(lambda: len(receiver.accepted) >= 50, within=30)
            await asyncio.sleep(1.0)  # time for a duplicate to show up, if one were coming
            sent = (one.state.webhook_delivery.delivered, two.state.webhook_delivery.delivered)
    rows = sql(postgresql_url, "SELECT id, status, attempts FROM webhook_deliveries")
    assert sum(sent) == 50
    assert min(sent) > 0, sent  # both workers took part
    assert len(rows) == 50
    assert {r[1] for r in rows} == {"delivered"}
    assert {r[2] for r in rows} == {1}  # each claimed once: no lease was ever taken twice
    assert sorted(receiver.ids()) == sorted(r[0] for r in rows)
    assert receiver.replays == []
    assert receiver.rejected == []
    assert set(made) <= {a.payload["data"]["id"] for a in receiver.accepted}
