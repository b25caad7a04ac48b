"""Audit streams in shared mode (one PostgreSQL, one Redis): several gateways, as several processes would
be, each running a stream sender over the same streams. While the destination is down nothing is lost; after
it is back, and the gateways restarted, it receives every entry of the chain once, in chain order (C-143)."""

from __future__ import annotations

import asyncio
import os
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest

from gateway.app import create_app
from gateway.cli.audit import verify_stream
from identity.tokens import KeyRing
from tests.audit_stream_helpers import FAST, create_stream, head, make_entries
from tests.audit_stream_receivers import StreamReceiver
from tests.conftest import Tenant, login, make_settings, running, sql
from tests.gateway.test_mail import ROOT, gateway_process
from tests.http_upstreams import serving
from tests.store.test_audit import event, write
from tests.webhook_helpers import eventually

QUICK = {**FAST, "audit_stream_poll_seconds": 0.01}


def exactly_once_in_order(r: StreamReceiver, database_url: str, chain: str) -> None:
    assert r.sequences() == list(range(1, head(database_url, chain) + 1))


async def test_c143_two_gateways_restarted_deliver_every_entry_once_in_order(
    postgresql_url: str, redis_url: str, signing_key: str, shared_tenant: Tenant, tmp_path: Path
) -> None:
    r = StreamReceiver(kind="webhook", mode="fail")
    org = shared_tenant.org_id

    def gateway() -> object:
        return create_app(make_settings(postgresql_url, signing_key, redis_url=redis_url, **QUICK))

    with serving(r, lifespan="off") as base:
        one, two = gateway(), gateway()
        async with running(one) as c1, running(two) as c2:
            owner = (await login(c1, shared_tenant))["accessToken"]
            _, r.secret = await create_stream(c1, owner, "WEBHOOK", base + "/audit")
            await make_entries(c1, owner, 5, "one")
            await make_entries(c2, owner, 5, "two")
            await write(postgresql_url, *(event(org) for _ in range(20)))
            await eventually(lambda: len(r.requests) >= 5)
        assert r.stored == []
        # both gateways stopped; more entries while none runs
        await write(postgresql_url, *(event(org) for _ in range(10)))
        r.mode = "ok"
        three, four = gateway(), gateway()
        async with running(three), running(four):
            await eventually(lambda: r.sequences() and r.sequences()[-1] >= head(postgresql_url, org), within=30)
            await asyncio.sleep(0.5)  # time for a duplicate to show up, if one were coming
            sent = (three.state.audit_streams.delivered, four.state.audit_streams.delivered)  # type: ignore[attr-defined]
    exactly_once_in_order(r, postgresql_url, org)
    assert sum(sent) == head(postgresql_url, org)
    assert len(set(r.webhook_ids)) == len(r.webhook_ids)
    assert r.rejected == []
    [(delivered, failures)] = sql(postgresql_url, "SELECT delivered_sequence, consecutive_failures FROM audit_streams")
    assert delivered == head(postgresql_url, org)
    assert failures == 0
    path = tmp_path / "received.jsonl"
    path.write_text("\n".join(r.stored) + "\n")
    assert verify_stream(KeyRing(signing_key), path) == 0


def process_env(database_url: str, redis_url: str, signing_key: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PORTCULLIS_")}
    env.update(
        {
            "PORTCULLIS_ENV": "test",
            "PORTCULLIS_DATABASE_URL": database_url,
            "PORTCULLIS_REDIS_URL": redis_url,
            "PORTCULLIS_SIGNING_KEY": signing_key,
            "PORTCULLIS_AUDIT_STREAM_POLL_SECONDS": "0.02",
            "PORTCULLIS_AUDIT_STREAM_TIMEOUT_SECONDS": "2",
            "PORTCULLIS_AUDIT_STREAM_RETRY_SECONDS": "0.05",
            "PORTCULLIS_AUDIT_STREAM_RETRY_MAX_SECONDS": "0.3",
            "PORTCULLIS_AUDIT_STREAM_BATCH_SIZE": "9",
            "PYTHONPATH": str(ROOT),
        }
    )
    return env


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.slow
async def test_c143_two_gateway_processes_deliver_every_entry_once_in_order(
    postgresql_url: str, redis_url: str, signing_key: str, shared_tenant: Tenant, tmp_path: Path
) -> None:
    """Two real gateway processes (uvicorn) on one PostgreSQL and Redis, a JSON-lines destination down for a
    while, both processes restarted: the destination then receives the whole chain, once, in order."""
    r = StreamReceiver(kind="json_lines", mode="fail")
    org = shared_tenant.org_id
    env = process_env(postgresql_url, redis_url, signing_key)
    with serving(r, lifespan="off") as base:
        sql(
            postgresql_url,
            "INSERT INTO audit_streams (id, organization_id, kind, url, delivered_sequence, consecutive_failures, "
            "next_attempt_at, created_at) VALUES (:i, :o, 'json_lines', :u, 0, 0, :t, :t)",
            i=str(uuid.uuid4()),
            o=org,
            u=base + "/in",
            t=datetime.now(UTC),
        )
        with gateway_process(env, tmp_path / "one.log"), gateway_process(env, tmp_path / "two.log"):
            await write(postgresql_url, *(event(org) for _ in range(40)))
            await eventually(lambda: len(r.requests) >= 5, within=30)
        await write(postgresql_url, *(event(org) for _ in range(20)))
        r.mode = "ok"
        with gateway_process(env, tmp_path / "three.log"), gateway_process(env, tmp_path / "four.log"):
            await eventually(lambda: r.sequences() and r.sequences()[-1] >= head(postgresql_url, org), within=60)
            await asyncio.sleep(1.0)
    exactly_once_in_order(r, postgresql_url, org)
    assert head(postgresql_url, org) >= 60
