"""Webhook delivery by the gateway's worker to real receivers (uvicorn in a thread) that verify every
request with the `standardwebhooks` library's verifier: signed messages, replays detectable, nothing lost
while a receiver is down, 500s retried, slow and silent receivers kept off the request path, addresses
refused after DNS, and a webhook that keeps failing disabled with an event (C-132, C-143)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from gateway.app import create_app
from gateway.settings import DEV_DATA_KEY
from gateway.webhooks import RetryPolicy, WebhookSender
from identity.outbound import OutboundPolicy
from identity.secrets import SecretBox
from identity.security_events import SecurityEventKind
from identity.webhooks import WebhookPolicy, body_of, new_secret, signed_headers
from store.db import Database
from tests.conftest import Tenant, login, make_settings, running, sql
from tests.http_upstreams import serving
from tests.services import free_port
from tests.webhook_helpers import (
    FAST,
    create_key,
    create_webhook,
    eventually,
    receiving,
    record_events,
    webhook_gateway,
    webhooks,
)
from tests.webhook_receiver import Receiver

gateway = webhook_gateway


@pytest.fixture
def receiver() -> Iterator[tuple[Receiver, str]]:
    with receiving("/hooks/portcullis") as found:
        yield found


def deliveries(database_url: str) -> list[Any]:
    return sql(
        database_url,
        "SELECT id, event_id, status, attempts, last_status_code, last_error FROM webhook_deliveries ORDER BY id",
    )


async def test_c143_a_receiver_verifies_every_delivery(
    database_url: str, signing_key: str, tenant: Tenant, receiver: tuple[Receiver, str]
) -> None:
    r, url = receiver
    async with gateway(database_url, signing_key) as (_, client):
        owner = (await login(client, tenant))["accessToken"]
        hook_id, r.secret = await create_webhook(client, owner, url, ["API_KEY_WITHOUT_EXPIRY"])
        _, other_secret = await create_webhook(client, owner, url + "/other", ["MFA_DISABLED"])
        await create_key(client, owner, "ci")
        [arrival] = await eventually(lambda: r.accepted)
        [delivery] = await eventually(lambda: [d for d in deliveries(database_url) if d[2] == "delivered"], within=5)
        listed = (await webhooks(client, owner))[0]
    assert r.rejected == []
    assert arrival.message_id == delivery[0]
    payload = arrival.payload
    assert payload["type"] == "security_event.api_key_without_expiry"
    assert payload["data"]["kind"] == "api_key_without_expiry"
    assert payload["data"]["id"] == delivery[1]
    assert payload["data"]["organizationId"] == tenant.org_id
    assert payload["data"]["actorId"] == tenant.user_id
    assert arrival.headers["content-type"] == "application/json"
    assert abs(int(arrival.headers["webhook-timestamp"]) - datetime.now(UTC).timestamp()) < 60
    assert arrival.headers["webhook-signature"].startswith("v1,")
    [shown] = listed["deliveries"]
    assert listed["id"] == hook_id
    assert shown["status"] == "DELIVERED"
    assert shown["attempts"] == 1
    assert shown["lastStatusCode"] == 204
    assert shown["eventType"] == "security_event.api_key_without_expiry"
    assert shown["nextAttemptAt"] is None
    assert other_secret != r.secret  # each webhook signs with its own secret; the other got nothing
    assert len(deliveries(database_url)) == 1


async def test_c143_a_replay_is_detectable(
    database_url: str, signing_key: str, tenant: Tenant, receiver: tuple[Receiver, str]
) -> None:
    r, url = receiver
    async with gateway(database_url, signing_key) as (_, client):
        owner = (await login(client, tenant))["accessToken"]
        _, r.secret = await create_webhook(client, owner, url)
        await create_key(client, owner, "ci")
        [arrival] = await eventually(lambda: r.accepted)
    assert r.secret is not None
    async with httpx.AsyncClient() as http:
        # the same request again, byte for byte: its signature still verifies, its id gives it away
        again = await http.post(url, content=arrival.body, headers=arrival.headers)
        assert again.status_code == 200
        assert [a.message_id for a in r.replays] == [arrival.message_id]
        assert len(r.accepted) == 1
        # a captured message with a newer timestamp put in: the signature no longer matches
        moved = {**arrival.headers, "webhook-timestamp": str(int(datetime.now(UTC).timestamp()) + 1)}
        assert (await http.post(url, content=arrival.body, headers=moved)).status_code == 401
        # one properly signed ten minutes ago: the library's verifier refuses it as too old
        old = signed_headers(r.secret, "msg_old", arrival.body, datetime.now(UTC) - timedelta(minutes=10))
        assert (await http.post(url, content=arrival.body, headers=old)).status_code == 401
        # signed with another secret
        forged = signed_headers("whsec_" + "A" * 43 + "=", "msg_forged", arrival.body, datetime.now(UTC))
        assert (await http.post(url, content=arrival.body, headers=forged)).status_code == 401
    assert r.rejected == ["No matching signature found", "Message timestamp too old", "No matching signature found"]
    assert len(r.accepted) == 1


async def test_c143_nothing_is_lost_while_the_receiver_is_down(
    database_url: str, signing_key: str, tenant: Tenant
) -> None:
    r = Receiver()
    port = free_port()
    url = f"http://127.0.0.1:{port}/hooks"
    async with gateway(database_url, signing_key) as (_, client):
        owner = (await login(client, tenant))["accessToken"]
        _, r.secret = await create_webhook(client, owner, url)
        made = await record_events(database_url, tenant.org_id, 6, SecurityEventKind.ACCOUNT_LOCKED)
        # down: every delivery is tried and retried, and stays pending
        await eventually(
            lambda: all(d[3] >= 3 for d in deliveries(database_url)) and len(deliveries(database_url)) == 6
        )
        assert all(d[2] == "pending" and d[5] for d in deliveries(database_url))
        with serving(r, lifespan="off", port=port):
            await eventually(lambda: all(d[2] == "delivered" for d in deliveries(database_url)))
            await asyncio.sleep(0.5)  # time for a duplicate to show up, if one were coming
    assert sorted(a.payload["data"]["id"] for a in r.accepted) == sorted(made)
    assert sorted(r.ids()) == sorted(d[0] for d in deliveries(database_url))
    assert r.replays == []
    assert r.rejected == []


async def test_c143_a_500_is_retried(
    database_url: str, signing_key: str, tenant: Tenant, receiver: tuple[Receiver, str]
) -> None:
    r, url = receiver
    r.mode = "fail"
    async with gateway(database_url, signing_key) as (_, client):
        owner = (await login(client, tenant))["accessToken"]
        _, r.secret = await create_webhook(client, owner, url)
        await create_key(client, owner, "ci")
        await eventually(lambda: r.attempts >= 2)
        [pending] = (await webhooks(client, owner))[0]["deliveries"]
        assert pending["status"] == "PENDING"
        assert pending["lastStatusCode"] == 500
        assert pending["lastError"] == "answered 500"
        assert pending["nextAttemptAt"] is not None
        r.mode = "ok"
        await eventually(lambda: r.accepted)
        [done] = await eventually(lambda: [d for d in deliveries(database_url) if d[2] == "delivered"], within=5)
    assert done[3] >= 3
    assert done[4] == 204
    assert r.replays == []


async def test_c143_slow_and_silent_receivers_never_slow_a_request(
    database_url: str, signing_key: str, tenant: Tenant
) -> None:
    slow = Receiver(mode="slow", delay=4.0)
    done = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65536)
        await done.wait()  # reads the request and never answers
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    silent_url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/hooks"
    try:
        with serving(slow, lifespan="off") as slow_url:
            async with gateway(database_url, signing_key, webhook_timeout_seconds=1.5) as (_, client):
                owner = (await login(client, tenant))["accessToken"]
                _, slow.secret = await create_webhook(client, owner, slow_url + "/hooks")
                await create_webhook(client, owner, silent_url)
                baseline = min([await create_key(client, owner, f"warm {i}") for i in range(3)])
                timings = [await create_key(client, owner, f"key {i}") for i in range(8)]
                await eventually(lambda: all(d[3] >= 2 for d in deliveries(database_url)))
                timings += [await create_key(client, owner, f"more {i}") for i in range(4)]
    finally:
        done.set()
        server.close()
    # every mutation answered in request time, never in the receivers' time (1.5 s timeout, 4 s answer)
    assert max(timings) < 0.9, (baseline, timings)
    errors = {d[5] for d in deliveries(database_url) if d[3] >= 2}
    assert errors == {"no answer within 1.5s"}


async def test_c132_an_address_refused_after_dns_is_never_contacted(
    database_url: str, signing_key: str, tenant: Tenant, receiver: tuple[Receiver, str]
) -> None:
    r, url = receiver
    port = int(url.split(":")[2].split("/")[0])
    answers = iter([["93.184.216.34"]])  # public when the webhook is created, then loopback (rebinding)

    async def resolver(host: str, _port: int) -> list[str]:
        assert host == "hooks.customer.test"
        return next(answers, ["127.0.0.1"])

    app = create_app(make_settings(database_url, signing_key, **FAST))
    app.state.services.webhooks.outbound = OutboundPolicy.of(enabled=True, require_https=False, resolver=resolver)
    async with running(app) as client:
        owner = (await login(client, tenant))["accessToken"]
        _, r.secret = await create_webhook(client, owner, f"http://hooks.customer.test:{port}/hooks")
        await create_key(client, owner, "ci")
        await eventually(lambda: any(d[3] >= 2 for d in deliveries(database_url)))
    [d] = deliveries(database_url)
    assert d[2] == "pending"
    assert d[5] == "the URL's address is not one the gateway may send to"
    assert r.attempts == 0


async def test_a_webhook_that_keeps_failing_is_disabled_with_an_event(
    database_url: str, signing_key: str, tenant: Tenant, receiver: tuple[Receiver, str]
) -> None:
    r, url = receiver
    r.mode = "fail"
    settings = {"webhook_retry_schedule_seconds": "0.1", "webhook_disable_after_failures": 2}
    async with gateway(database_url, signing_key, **settings) as (_, client):
        owner = (await login(client, tenant))["accessToken"]
        hook_id, r.secret = await create_webhook(client, owner, url, ["API_KEY_WITHOUT_EXPIRY"])
        watcher_id, _ = await create_webhook(client, owner, url + "/watch", ["WEBHOOK_DISABLED"])
        await create_key(client, owner, "one")
        await eventually(lambda: [d for d in deliveries(database_url) if d[2] == "failed"])
        assert (await webhooks(client, owner))[0]["enabled"] is True  # one failure in a row is not enough
        await create_key(client, owner, "two")
        listed = await eventually(lambda: _disabled(client, owner, hook_id))
        await create_key(client, owner, "three")  # a disabled webhook gets no delivery
    assert listed["disabledAt"] is not None
    assert [d["attempts"] for d in listed["deliveries"]] == [2, 2]
    events = sql(
        database_url,
        "SELECT kind, severity, subject_id FROM security_events WHERE kind = 'webhook_disabled'",
    )
    assert [tuple(e) for e in events] == [("webhook_disabled", "high", hook_id)]
    hooks_of_deliveries = sql(database_url, "SELECT webhook_id, event_kind FROM webhook_deliveries ORDER BY id")
    assert [tuple(h) for h in hooks_of_deliveries] == [
        (hook_id, "api_key_without_expiry"),
        (hook_id, "api_key_without_expiry"),
        (watcher_id, "webhook_disabled"),
    ]


async def _disabled(client: Any, owner: str, hook_id: str) -> dict[str, Any] | None:
    found = [w for w in await webhooks(client, owner) if w["id"] == hook_id and not w["enabled"]]
    return found[0] if found else None


def test_the_signed_body_is_stable() -> None:
    """Every attempt sends the same bytes: only the timestamp and the signature change."""
    payload = {"type": "t", "timestamp": "x", "data": {"b": 1, "a": [1, 2]}}
    assert body_of(payload) == b'{"data":{"a":[1,2],"b":1},"timestamp":"x","type":"t"}'
    assert body_of(dict(reversed(payload.items()))) == body_of(payload)


def test_the_default_schedule_is_the_documented_one(database_url: str, signing_key: str) -> None:
    retry = RetryPolicy.of(make_settings(database_url, signing_key))
    assert retry.max_attempts == 8
    assert [retry.delay(n) for n in range(1, 8)] == [5, 30, 120, 600, 3600, 21_600, 43_200]
    assert retry.lease_seconds == 21


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("webhook_retry_schedule_seconds", "0"),
        ("webhook_retry_schedule_seconds", "5,-1"),
        ("webhook_retry_schedule_seconds", "5,soon"),
        ("webhook_retry_schedule_seconds", ""),
        ("security_alert_email_severities", "high,urgent"),
        ("webhook_timeout_seconds", "0"),
        ("webhook_disable_after_failures", "0"),
    ],
)
def test_unusable_settings_are_refused(database_url: str, signing_key: str, name: str, value: str) -> None:
    with pytest.raises(ValidationError):
        make_settings(database_url, signing_key, **{name: value})


async def test_c143_a_delivery_held_by_a_process_that_died_is_sent_once_its_lease_lapses(
    database_url: str, signing_key: str, tenant: Tenant, receiver: tuple[Receiver, str]
) -> None:
    """A process claims a delivery and dies before sending it: the claim keeps every other process off it
    until its lease lapses; then one sends it, with the same `webhook-id`."""
    r, url = receiver
    r.secret = new_secret()
    box = SecretBox(DEV_DATA_KEY, purpose="webhook")
    sql(
        database_url,
        "INSERT INTO webhooks (id, organization_id, url, event_kinds, secret_encrypted, created_at) "
        "VALUES (:i, :o, :u, :k, :s, :t)",
        i="0f0e0d0c-0000-4000-8000-000000000001",
        o=tenant.org_id,
        u=url,
        k='["account_locked"]',
        s=box.encrypt(r.secret),
        t=datetime.now(UTC),
    )
    await record_events(database_url, tenant.org_id, 1, SecurityEventKind.ACCOUNT_LOCKED)
    [(delivery_id,)] = sql(database_url, "SELECT id FROM webhook_deliveries")
    db = Database(database_url)
    try:
        dead = WebhookSender(
            db,
            WebhookPolicy(OutboundPolicy.of(enabled=False, require_https=False), box),
            RetryPolicy(timeout_seconds=1.0),
        )
        claimed = await dead.claim(delivery_id)
    finally:
        await db.dispose()
    assert claimed is not None
    async with gateway(database_url, signing_key):
        await asyncio.sleep(1.5)
        assert r.accepted == []  # the lease (3 s) still holds
        [arrival] = await eventually(lambda: r.accepted, within=10)
        sent_at = datetime.now(UTC)
        await eventually(lambda: deliveries(database_url)[0][2] == "delivered", within=5)
    assert arrival.message_id == delivery_id
    assert sent_at >= claimed.lease_until
    [row] = deliveries(database_url)
    assert row[3] == 2  # the dead process's attempt, and the one that arrived
    assert r.replays == []
