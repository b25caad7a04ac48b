"""Creating webhooks and causing events in tests of webhook delivery."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx

from gateway.app import create_app
from identity.security_events import SecurityEventKind, Severity, record_security_event
from store.db import Database
from tests.conftest import gql, make_settings, running
from tests.http_upstreams import serving
from tests.webhook_receiver import Receiver

CREATE_WEBHOOK = """
mutation($i: WebhookInput!) {
  createWebhook(input: $i) { webhook { id url description events enabled createdAt } secret }
}
"""
WEBHOOKS = """
{ organization { webhooks { id url events enabled disabledAt
    deliveries(first: 50) {
      id eventId eventType status attempts lastStatusCode lastError nextAttemptAt deliveredAt
    } } } }
"""
CREATE_KEY = "mutation($i: CreateApiKeyInput!) { createApiKey(input: $i) { apiKey { id } } }"

# fast retries, so a minute of a receiver's absence takes about a second
FAST = {
    "webhook_poll_seconds": 0.05,
    "webhook_timeout_seconds": 1.0,
    "webhook_retry_schedule_seconds": ",".join(["0.2"] * 30),
}


async def create_webhook(
    client: httpx.AsyncClient, token: str, url: str, events: list[str] | None = None
) -> tuple[str, str]:
    """The new webhook's id and signing secret."""
    variables = {"i": {"url": url, "events": events or ["API_KEY_WITHOUT_EXPIRY", "ACCOUNT_LOCKED"]}}
    body = (await gql(client, CREATE_WEBHOOK, variables, token=token)).json()
    assert "errors" not in body, body
    created = body["data"]["createWebhook"]
    return created["webhook"]["id"], created["secret"]


async def webhooks(client: httpx.AsyncClient, token: str) -> list[dict[str, Any]]:
    body = (await gql(client, WEBHOOKS, token=token)).json()
    assert "errors" not in body, body
    return body["data"]["organization"]["webhooks"]  # type: ignore[no-any-return]


async def record_events(database_url: str, org_id: str, n: int, kind: SecurityEventKind) -> list[str]:
    """`n` events written as any cause writes them (with their deliveries), outside the app."""
    db = Database(database_url)
    ids = []
    try:
        for i in range(n):
            async with db.transaction() as session:
                event = await record_security_event(
                    session, organization_id=org_id, kind=kind, severity=Severity.LOW, summary=f"event {i}"
                )
                ids.append(event.id)
    finally:
        await db.dispose()
    return ids


async def create_key(client: httpx.AsyncClient, token: str, name: str) -> float:
    """Create a key without expiry (an event); the seconds the request took."""
    started = time.perf_counter()
    body = (await gql(client, CREATE_KEY, {"i": {"name": name, "scopes": ["members:read"]}}, token=token)).json()
    elapsed = time.perf_counter() - started
    assert "errors" not in body, body
    return elapsed


async def eventually(check: Callable[[], Any], within: float = 15.0, interval: float = 0.05) -> Any:
    """Poll `check()` (sync or async) until it returns something truthy; that value."""
    deadline = time.monotonic() + within
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        assert time.monotonic() < deadline, "timed out waiting"
        await asyncio.sleep(interval)


@contextlib.asynccontextmanager
async def webhook_gateway(
    database_url: str, signing_key: str, **overrides: Any
) -> AsyncIterator[tuple[Any, httpx.AsyncClient]]:
    """A running gateway whose webhook sender retries fast (`FAST`): the app and its client."""
    app = create_app(make_settings(database_url, signing_key, **{**FAST, **overrides}))
    async with running(app) as client:
        yield app, client


@contextlib.contextmanager
def receiving(path: str) -> Iterator[tuple[Receiver, str]]:
    """A real receiver that verifies every delivery, served on a free port, and the URL it answers at."""
    r = Receiver()
    with serving(r, lifespan="off") as url:
        yield r, url + path
