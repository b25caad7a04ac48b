"""Two gateway apps in shared mode (one PostgreSQL, one Redis), as two processes would be, each running its
webhook delivery worker on the same outbox: every delivery reaches the receiver exactly once (C-143)."""

from __future__ import annotations

import asyncio
import os
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest

from gateway.app import create_app
from gateway.settings import DEV_DATA_KEY
from identity.secrets import SecretBox
from identity.security_events import SecurityEventKind
from identity.webhooks import new_secret
from tests.conftest import Tenant, login, make_settings, running, sql
from tests.gateway.test_mail import ROOT, gateway_process
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


def process_env(database_url: str, redis_url: str, signing_key: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PORTCULLIS_")}
    env.update(
        {
            "PORTCULLIS_ENV": "test",
            "PORTCULLIS_DATABASE_URL": database_url,
            "PORTCULLIS_REDIS_URL": redis_url,
            "PORTCULLIS_SIGNING_KEY": signing_key,
            "PORTCULLIS_WEBHOOK_POLL_SECONDS": "0.02",
            "PORTCULLIS_WEBHOOK_TIMEOUT_SECONDS": "2",
            "PORTCULLIS_WEBHOOK_RETRY_SCHEDULE_SECONDS": "0.2,0.2,0.2,0.2,0.2",
            "PYTHONPATH": str(ROOT),
        }
    )
    return env


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.slow
async def test_c143_two_gateway_processes_send_each_delivery_once(
    postgresql_url: str, redis_url: str, signing_key: str, shared_tenant: Tenant, tmp_path: Path
) -> None:
    """Two real gateway processes (uvicorn) on one PostgreSQL and Redis: deliveries committed from outside
    are found by both workers at once, and each reaches the receiver once."""
    receiver = Receiver(secret=new_secret())
    box = SecretBox(DEV_DATA_KEY, purpose="webhook")
    env = process_env(postgresql_url, redis_url, signing_key)
    with serving(receiver, lifespan="off") as url:
        sql(
            postgresql_url,
            "INSERT INTO webhooks (id, organization_id, url, event_kinds, secret_encrypted, created_at) "
            "VALUES (:i, :o, :u, :k, :s, :t)",
            i=str(uuid.uuid4()),
            o=shared_tenant.org_id,
            u=url + "/hooks",
            k='["account_locked"]',
            s=box.encrypt(receiver.secret or ""),
            t=datetime.now(UTC),
        )
        with gateway_process(env, tmp_path / "one.log"), gateway_process(env, tmp_path / "two.log"):
            made = await record_events(postgresql_url, shared_tenant.org_id, 60, SecurityEventKind.ACCOUNT_LOCKED)
            await eventually(lambda: len(receiver.accepted) >= 60, within=60)
            await asyncio.sleep(1.0)
    rows = sql(postgresql_url, "SELECT id, status, attempts FROM webhook_deliveries")
    assert len(rows) == 60
    assert {(r[1], r[2]) for r in rows} == {("delivered", 1)}
    assert sorted(receiver.ids()) == sorted(r[0] for r in rows)
    assert sorted(a.payload["data"]["id"] for a in receiver.accepted) == sorted(made)
    assert receiver.replays == []
    assert receiver.rejected == []
