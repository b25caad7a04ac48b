"""Creating audit streams and causing audit entries in tests of audit streaming."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import httpx

from gateway.app import create_app
from identity.tokens import KeyRing
from resolvers.audit import checkpoint
from store.db import Database
from tests.conftest import gql, make_settings, running, sql

CREATE_STREAM = """
mutation($i: AuditStreamInput!) {
  createAuditStream(input: $i) { stream { id kind url state deliveredSequence } secret }
}
"""
STREAMS = """
{ organization { auditStreams {
    id kind url state deliveredSequence lastDeliveredAt consecutiveFailures lastError createdAt disabledAt
} } }
"""
ENABLE = "mutation($id: ID!) { enableAuditStream(id: $id) { state deliveredSequence consecutiveFailures } }"
RENAME_KEY = "mutation($i: CreateApiKeyInput!) { createApiKey(input: $i) { apiKey { id } } }"

# fast retries and polls: a minute of a destination's absence takes about a second
FAST = {
    "audit_stream_poll_seconds": 0.05,
    "audit_stream_timeout_seconds": 1.0,
    "audit_stream_retry_seconds": 0.05,
    "audit_stream_retry_max_seconds": 0.2,
    "audit_stream_batch_size": 7,
}


async def create_stream(
    client: httpx.AsyncClient, bearer: str, kind: str, url: str, **extra: Any
) -> tuple[str, str | None]:
    """The new stream's id and (WEBHOOK) signing secret; `extra`: more of `AuditStreamInput`."""
    body = (await gql(client, CREATE_STREAM, {"i": {"kind": kind, "url": url, **extra}}, token=bearer)).json()
    assert "errors" not in body, body
    created = body["data"]["createAuditStream"]
    return created["stream"]["id"], created["secret"]


async def streams(client: httpx.AsyncClient, token: str) -> list[dict[str, Any]]:
    body = (await gql(client, STREAMS, token=token)).json()
    assert "errors" not in body, body
    return body["data"]["organization"]["auditStreams"]  # type: ignore[no-any-return]


async def make_entries(client: httpx.AsyncClient, token: str, n: int, prefix: str = "key") -> None:
    """`n` audit entries (and as many keys) through the API."""
    for i in range(n):
        variables = {"i": {"name": f"{prefix} {i}", "scopes": ["members:read"]}}
        body = (await gql(client, RENAME_KEY, variables, token=token)).json()
        assert "errors" not in body, body


def head(database_url: str, chain: str) -> int:
    return int(sql(database_url, "SELECT max(sequence) FROM audit_log WHERE chain = :c", c=chain)[0][0] or 0)


async def write_checkpoint(database_url: str, signing_key: str) -> None:
    db = Database(database_url)
    try:
        async with db.transaction() as session:
            await checkpoint(session, KeyRing(signing_key), now=datetime.now(UTC))
    finally:
        await db.dispose()


@contextlib.asynccontextmanager
async def stream_gateway(
    database_url: str, signing_key: str, **overrides: Any
) -> AsyncIterator[tuple[Any, httpx.AsyncClient]]:
    app = create_app(make_settings(database_url, signing_key, **{**FAST, **overrides}))
    async with running(app) as client:
        yield app, client
