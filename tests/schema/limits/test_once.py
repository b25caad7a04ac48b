"""Fields whose work grows with the data run at most once per operation (C-130): `verifyAuditChain` and
`generateReport` aliased or spread twice are refused before anything executes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

import store.audit
from tests.conftest import Tenant, gql, login, sql

VERIFY = "verifyAuditChain { ok checked }"


@pytest.fixture
def verifications(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every chain verification that starts (the real one runs)."""
    calls: list[Any] = []
    original = store.audit.verify

    async def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs)
        return await original(*args, **kwargs)

    monkeypatch.setattr(store.audit, "verify", spy)
    return calls


def assert_once(r: httpx.Response, field: str, measured: int) -> None:
    assert r.status_code == 400, r.text
    body = r.json()
    assert "data" not in body
    [error] = body["errors"]
    assert error["extensions"] == {
        "code": "OPERATION_TOO_COMPLEX",
        "limit": "oncePerOperation",
        "field": field,
        "maximum": 1,
        "measured": measured,
    }
    assert field in error["message"]


@pytest.mark.parametrize(
    ("query", "measured"),
    [
        (f"{{ a: {VERIFY} b: {VERIFY} }}", 2),
        (f"{{ {VERIFY} again: {VERIFY} }}", 2),
        (f"{{ ...V x: verifyAuditChain {{ ok }} }} fragment V on Query {{ {VERIFY} }}", 2),
        (
            f"{{ ... on Query {{ a: {VERIFY} }} ...V ...W }} fragment V on Query {{ b: {VERIFY} }} "
            f"fragment W on Query {{ ...V c: {VERIFY} }}",
            3,
        ),
        (f"{{ a: {VERIFY} b: verifyAuditChain @skip(if: true) {{ ok }} }}", 2),
        ("{ " + " ".join(f"v{i}: {VERIFY}" for i in range(20)) + " }", 20),
    ],
)
async def test_verify_audit_chain_twice_is_refused(
    client, tenant: Tenant, verifications: list[Any], query: str, measured: int
) -> None:
    """C-130: two (or twenty) verifications in one document, through aliases, fragments and inline
    fragments, whatever `@skip` says: 400 OPERATION_TOO_COMPLEX naming the field, nothing verified."""
    auth = await login(client, tenant)
    assert_once(await gql(client, query, token=auth["accessToken"]), "verifyAuditChain", measured)
    assert verifications == []


async def test_one_verification_under_one_key_runs_once(client, tenant: Tenant, verifications: list[Any]) -> None:
    """Selections that share a response key merge into one execution: allowed, and verified once."""
    auth = await login(client, tenant)
    query = f"{{ {VERIFY} ...V }} fragment V on Query {{ verifyAuditChain {{ checked }} }}"
    body = (await gql(client, query, token=auth["accessToken"])).json()
    assert body["data"]["verifyAuditChain"]["ok"] is True, body
    assert len(verifications) == 1


async def test_generate_report_twice_is_refused(client, tenant: Tenant, database_url: str) -> None:
    """C-130: two aliased `generateReport` in one mutation: refused whole, no report written."""
    auth = await login(client, tenant)
    end = datetime.now(UTC)
    start = end - timedelta(days=1)
    span = f'from: "{start.isoformat()}", to: "{end.isoformat()}"'
    query = (
        f"mutation {{ a: generateReport(kind: COMPLIANCE, {span}) {{ id }} "
        f"b: generateReport(kind: SECURITY, {span}) {{ id }} }}"
    )
    assert_once(await gql(client, query, token=auth["accessToken"]), "generateReport", 2)
    assert sql(database_url, "SELECT count(*) FROM reports")[0][0] == 0
