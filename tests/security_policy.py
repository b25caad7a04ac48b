"""Changing an organization's security policy in tests, the way its owner does: `updateSecurityPolicy`."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from tests.conftest import gql


def mode_settings(database_url: str, request: pytest.FixtureRequest) -> dict[str, Any]:
    """Each policy test runs in both modes: embedded on SQLite (in-process state), shared on PostgreSQL with
    Redis beside it (the policy cache, sessions and limits as several processes would hold them)."""
    if database_url.startswith("postgresql"):
        return {"redis_url": request.getfixturevalue("redis_url")}
    return {}


POLICY_FIELDS = """
passwordMinLength passwordHistory passwordMaxAgeDays breachedPasswordCheck sessionIdleTimeoutMinutes
sessionMaxLifetimeHours maxConcurrentSessions concurrentSessionAction freshAuthMinutes allowedSignInMethods
breakGlassOwners requireMfa apiKeyMaxLifetimeDays ipAllowlist mediumRiskAction highRiskAction
"""
UPDATE_POLICY = "mutation($input: SecurityPolicyInput!) { updateSecurityPolicy(input: $input) {" + POLICY_FIELDS + "} }"
READ_POLICY = "{ organization { securityPolicy {" + POLICY_FIELDS + "} } }"
CREATE_KEY = """
mutation($input: CreateApiKeyInput!) { createApiKey(input: $input) { apiKey { id expiresAt } secret } }
"""
ROTATE_KEY = "mutation($id: ID!) { rotateApiKey(id: $id) { apiKey { id expiresAt } secret } }"
ME = "{ me { user { id } authMethod } }"


async def update_policy(client: httpx.AsyncClient, token: str, **values: Any) -> dict[str, Any]:
    """`updateSecurityPolicy` with `values` (GraphQL names); the whole answer."""
    r = await gql(client, UPDATE_POLICY, {"input": values}, token=token)
    return r.json()  # type: ignore[no-any-return]


async def set_policy(client: httpx.AsyncClient, token: str, **values: Any) -> dict[str, Any]:
    """`updateSecurityPolicy` that must succeed: the policy it answers."""
    body = await update_policy(client, token, **values)
    assert (body.get("data") or {}).get("updateSecurityPolicy"), body
    return body["data"]["updateSecurityPolicy"]  # type: ignore[no-any-return]


async def create_key(
    client: httpx.AsyncClient, token: str, *, days: float | None = 30, **fields: Any
) -> dict[str, Any]:
    expires = None if days is None else (datetime.now(UTC) + timedelta(days=days)).isoformat()
    variables = {"input": {"name": "ci", "scopes": ["organization:read"], "expiresAt": expires, **fields}}
    return (await gql(client, CREATE_KEY, variables, token=token)).json()  # type: ignore[no-any-return]


def key_headers(secret: str) -> dict[str, str]:
    return {"Authorization": f"ApiKey {secret}"}
