"""Security events through GraphQL: what causes them, reading them (filters, pages), acknowledging and
resolving them with a note, who may do what, another tenant's ids, and the email alerts."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from gateway.app import create_app
from identity.security_events import SecurityEventKind, Severity, record_security_event
from store.db import Database
from tests.conftest import Tenant, error_codes, gql, login, make_settings, make_tenant, running, sql
from tests.invitations import join
from tests.mail import mails_to
from tests.schema.test_mfa import DISABLE, Clock, code, enroll
from tests.webhook_helpers import CREATE_WEBHOOK

EVENTS = """
query($f: SecurityEventFilter, $first: Int, $after: String) {
  securityEvents(filter: $f, first: $first, after: $after) {
    edges { cursor node { id kind severity status summary actorId subjectId clientIp details note
                          acknowledgedBy acknowledgedAt resolvedBy resolvedAt createdAt } }
    pageInfo { hasNextPage endCursor }
  }
}
"""
ACK = """mutation($id: ID!, $n: String) {
  acknowledgeSecurityEvent(id: $id, note: $n) { id status note acknowledgedBy acknowledgedAt }
}"""
RESOLVE = """mutation($id: ID!, $n: String) {
  resolveSecurityEvent(id: $id, note: $n) { id status note resolvedBy resolvedAt acknowledgedBy }
}"""
CREATE_KEY = """
mutation($i: CreateApiKeyInput!) { createApiKey(input: $i) { apiKey { id } secret } }
"""
ROLE = "mutation($m: ID!, $r: String!) { updateMemberRole(membershipId: $m, role: $r) { id role } }"
AUDIT = """query($a: String) {
  auditLogs(filter: {action: $a, result: "success"}) { edges { node { action resourceId details actorId } } }
}"""
PASSWORD = "member passphrase long enough"
WRONG_LOGIN = 'mutation($e: String!) { login(email: $e, password: "not the password") { accessToken } }'


async def events(client: httpx.AsyncClient, token: str, f: dict[str, Any] | None = None, **page: Any) -> dict[str, Any]:
    body = (await gql(client, EVENTS, {"f": f, **page}, token=token)).json()
    assert "errors" not in body, body
    return body["data"]["securityEvents"]  # type: ignore[no-any-return]


def nodes(conn: dict[str, Any]) -> list[dict[str, Any]]:
    return [e["node"] for e in conn["edges"]]


async def record(database_url: str, org_id: str, kind: SecurityEventKind, severity: Severity, summary: str) -> str:
    db = Database(database_url)
    try:
        async with db.transaction() as session:
            event = await record_security_event(
                session, organization_id=org_id, kind=kind, severity=severity, summary=summary
            )
            return event.id
    finally:
        await db.dispose()


async def test_causes_write_events_with_actor_and_subject(
    client: httpx.AsyncClient, tenant: Tenant, database_url: str
) -> None:
    owner = (await login(client, tenant))["accessToken"]
    forever = (await gql(client, CREATE_KEY, {"i": {"name": "ci", "scopes": ["members:read"]}}, token=owner)).json()
    key_id = forever["data"]["createApiKey"]["apiKey"]["id"]
    later = (datetime.now(UTC) + timedelta(days=30)).isoformat()
    dated = {"name": "dated", "scopes": ["members:read"], "expiresAt": later}
    assert "errors" not in (await gql(client, CREATE_KEY, {"i": dated}, token=owner)).json()
    admin = await join(client, database_url, owner, "admin@acme.test", "admin", PASSWORD)
    viewer = await join(client, database_url, owner, "viewer@acme.test", "viewer", PASSWORD)
    body = (await gql(client, ROLE, {"m": viewer.membership_id, "r": "owner"}, token=owner)).json()
    assert "errors" not in body, body

    found = nodes(await events(client, owner))
    kinds = [(e["kind"], e["severity"], e["subjectId"]) for e in found]
    assert kinds == [
        ("PRIVILEGED_ROLE_GRANTED", "HIGH", viewer.user_id),  # newest first
        ("PRIVILEGED_ROLE_GRANTED", "MEDIUM", admin.user_id),
        ("API_KEY_WITHOUT_EXPIRY", "MEDIUM", key_id),
    ]
    assert found[0]["actorId"] == tenant.user_id
    assert found[0]["details"] == {"role": "owner", "how": "role_change"}
    assert found[1]["details"] == {"role": "admin", "how": "invitation"}
    assert found[1]["actorId"] == tenant.user_id  # who invited
    assert found[2]["actorId"] == tenant.user_id
    assert found[2]["clientIp"] == "203.0.113.7"
    assert all(e["status"] == "OPEN" for e in found)


async def test_filters_and_pages(client: httpx.AsyncClient, tenant: Tenant, database_url: str) -> None:
    owner = (await login(client, tenant))["accessToken"]
    made = []
    for i in range(7):
        kind = SecurityEventKind.ACCOUNT_LOCKED if i % 2 else SecurityEventKind.POLICY_CHANGED
        severity = Severity.HIGH if i % 3 == 0 else Severity.LOW
        made.append(await record(database_url, tenant.org_id, kind, severity, f"event {i}"))
    newest_first = list(reversed(made))

    seen: list[str] = []
    after = None
    while True:
        conn = await events(client, owner, first=3, after=after)
        seen += [n["id"] for n in nodes(conn)]
        if not conn["pageInfo"]["hasNextPage"]:
            break
        after = conn["pageInfo"]["endCursor"]
    assert seen == newest_first

    locked = nodes(await events(client, owner, {"kind": "ACCOUNT_LOCKED"}))
    assert [n["id"] for n in locked] == [made[i] for i in (5, 3, 1)]
    high = nodes(await events(client, owner, {"severity": "HIGH"}))
    assert [n["id"] for n in high] == [made[i] for i in (6, 3, 0)]
    both = nodes(await events(client, owner, {"severity": "HIGH", "kind": "POLICY_CHANGED"}))
    assert [n["id"] for n in both] == [made[6], made[0]]

    await gql(client, ACK, {"id": made[2]}, token=owner)
    acked = nodes(await events(client, owner, {"status": "ACKNOWLEDGED"}))
    assert [n["id"] for n in acked] == [made[2]]
    assert len(nodes(await events(client, owner, {"status": "OPEN"}))) == 6

    sql(
        database_url,
        "UPDATE security_events SET created_at = :t WHERE id = :i",
        t=datetime.now(UTC) - timedelta(days=3),
        i=made[0],
    )
    since = (datetime.now(UTC) - timedelta(days=1)).isoformat()
    recent = nodes(await events(client, owner, {"since": since}))
    assert made[0] not in [n["id"] for n in recent]
    assert len(recent) == 6
    old = nodes(await events(client, owner, {"until": since}))
    assert [n["id"] for n in old] == [made[0]]

    for bad in ({"first": 0}, {"first": 201}, {"after": "not-a-cursor"}):
        body = (await gql(client, EVENTS, bad, token=owner)).json()
        assert error_codes(body) == ["BAD_USER_INPUT"], body
    backwards = {"since": since, "until": (datetime.now(UTC) - timedelta(days=2)).isoformat()}
    assert error_codes((await gql(client, EVENTS, {"f": backwards}, token=owner)).json()) == ["BAD_USER_INPUT"]


async def test_acknowledge_then_resolve_with_notes_and_who(
    client: httpx.AsyncClient, tenant: Tenant, database_url: str
) -> None:
    owner = (await login(client, tenant))["accessToken"]
    admin = await join(client, database_url, owner, "admin@acme.test", "admin", PASSWORD)
    event_id = await record(database_url, tenant.org_id, SecurityEventKind.ACCOUNT_LOCKED, Severity.MEDIUM, "locked")

    body = (await gql(client, ACK, {"id": event_id, "n": "looking into it"}, token=admin.access_token)).json()
    acked = body["data"]["acknowledgeSecurityEvent"]
    assert acked["status"] == "ACKNOWLEDGED"
    assert acked["note"] == "looking into it"
    assert acked["acknowledgedBy"] == admin.user_id
    assert acked["acknowledgedAt"]
    again = (await gql(client, ACK, {"id": event_id}, token=owner)).json()
    assert error_codes(again) == ["CONFLICT"], again

    body = (await gql(client, RESOLVE, {"id": event_id, "n": "the user forgot the password"}, token=owner)).json()
    resolved = body["data"]["resolveSecurityEvent"]
    assert resolved["status"] == "RESOLVED"
    assert resolved["note"] == "the user forgot the password"
    assert resolved["resolvedBy"] == tenant.user_id
    assert resolved["acknowledgedBy"] == admin.user_id
    # a second resolution never overwrites the first one's record
    twice = (await gql(client, RESOLVE, {"id": event_id, "n": "overwrite"}, token=admin.access_token)).json()
    assert error_codes(twice) == ["CONFLICT"], twice
    assert error_codes((await gql(client, ACK, {"id": event_id}, token=owner)).json()) == ["CONFLICT"]
    [row] = nodes(await events(client, owner, {"kind": "ACCOUNT_LOCKED"}))
    assert row["resolvedBy"] == tenant.user_id
    assert row["note"] == "the user forgot the password"

    # an open event may be resolved straight away
    other = await record(database_url, tenant.org_id, SecurityEventKind.POLICY_CHANGED, Severity.LOW, "policy")
    body = (await gql(client, RESOLVE, {"id": other}, token=owner)).json()
    assert body["data"]["resolveSecurityEvent"]["status"] == "RESOLVED"

    entries = (await gql(client, AUDIT, {"a": "security_event_acknowledged"}, token=owner)).json()
    [ack_entry] = [e["node"] for e in entries["data"]["auditLogs"]["edges"]]
    assert ack_entry["resourceId"] == event_id
    assert ack_entry["actorId"] == admin.user_id
    assert ack_entry["details"]["note"] == "looking into it"
    entries = (await gql(client, AUDIT, {"a": "security_event_resolved"}, token=owner)).json()
    assert {e["node"]["resourceId"] for e in entries["data"]["auditLogs"]["edges"]} == {event_id, other}

    too_long = (await gql(client, ACK, {"id": other, "n": "x" * 2001}, token=owner)).json()
    assert error_codes(too_long) == ["BAD_USER_INPUT"]


async def test_another_tenants_event_is_not_found(client: httpx.AsyncClient, tenant: Tenant, database_url: str) -> None:
    other = await make_tenant(database_url, slug="globex", email="owner@globex.test")
    theirs = await record(database_url, other.org_id, SecurityEventKind.MFA_DISABLED, Severity.HIGH, "theirs")
    owner = (await login(client, tenant))["accessToken"]
    for mutation in (ACK, RESOLVE):
        body = (await gql(client, mutation, {"id": theirs, "n": "mine now"}, token=owner)).json()
        assert error_codes(body) == ["NOT_FOUND"], body
    for unknown in ("0" * 36, "x" * 100, ""):
        assert error_codes((await gql(client, ACK, {"id": unknown}, token=owner)).json()) == ["NOT_FOUND"]
    assert nodes(await events(client, owner)) == []
    [row] = sql(database_url, "SELECT status, note FROM security_events WHERE id = :i", i=theirs)
    assert tuple(row) == ("open", None)


async def test_a_viewer_cannot_read_or_act(client: httpx.AsyncClient, tenant: Tenant, database_url: str) -> None:
    owner = (await login(client, tenant))["accessToken"]
    viewer = await join(client, database_url, owner, "viewer@acme.test", "viewer", PASSWORD)
    event_id = await record(database_url, tenant.org_id, SecurityEventKind.ACCOUNT_LOCKED, Severity.LOW, "x")
    body = (await gql(client, EVENTS, token=viewer.access_token)).json()
    assert error_codes(body) == ["FORBIDDEN"]
    assert body["data"] is None
    for mutation in (ACK, RESOLVE):
        assert error_codes((await gql(client, mutation, {"id": event_id}, token=viewer.access_token)).json()) == [
            "FORBIDDEN"
        ]
    [row] = sql(database_url, "SELECT status FROM security_events WHERE id = :i", i=event_id)
    assert row[0] == "open"


async def test_a_lockout_is_an_event_of_the_organization_signed_into(
    client: httpx.AsyncClient, tenant: Tenant, database_url: str
) -> None:
    for _ in range(7):  # the fifth failure locks; the later ones are refused without locking again
        await gql(client, WRONG_LOGIN, {"e": tenant.email})
    rows = sql(
        database_url,
        "SELECT kind, severity, client_ip, details FROM security_events WHERE organization_id = :o",
        o=tenant.org_id,
    )
    assert [tuple(r[:3]) for r in rows] == [("account_locked", "medium", "203.0.113.7")]
    details = rows[0][3] if isinstance(rows[0][3], dict) else json.loads(rows[0][3])
    assert details["account"] == tenant.email
    assert details["lockCount"] == 1


async def test_turning_mfa_off_is_an_event(
    app: Any, client: httpx.AsyncClient, tenant: Tenant, database_url: str
) -> None:
    clock = Clock((time.time() // 30) * 30 + 5)
    app.state.services.totp.clock = clock
    enrolled = await enroll(client, tenant, clock)
    body = (await gql(client, DISABLE, {"c": code(enrolled.secret, clock)}, token=enrolled.token)).json()
    assert body["data"] == {"disableTotp": True}, body
    [event] = nodes(await events(client, (await login(client, tenant))["accessToken"], {"kind": "MFA_DISABLED"}))
    assert event["subjectId"] == tenant.user_id
    assert event["actorId"] == tenant.user_id


async def test_high_events_mail_owners_and_admins(client: httpx.AsyncClient, tenant: Tenant, database_url: str) -> None:
    owner = (await login(client, tenant))["accessToken"]
    await join(client, database_url, owner, "admin@acme.test", "admin", PASSWORD)
    viewer = await join(client, database_url, owner, "viewer@acme.test", "viewer", PASSWORD)
    assert await mails_to(database_url, tenant.email, "security_alert") == []  # an admin's grant is medium

    body = (await gql(client, ROLE, {"m": viewer.membership_id, "r": "owner"}, token=owner)).json()
    assert "errors" not in body, body
    [to_owner] = await mails_to(database_url, tenant.email, "security_alert")
    [to_admin] = await mails_to(database_url, "admin@acme.test", "security_alert")
    assert to_owner.subject == "[HIGH] Security event in Acme: privileged role granted"
    assert "The owner role was granted" in to_owner.text
    assert to_admin.organization_id == tenant.org_id
    # the new owner is one already in the change's transaction, and is told too
    assert len(await mails_to(database_url, "viewer@acme.test", "security_alert")) == 1


@pytest.fixture
async def quiet(database_url: str, signing_key: str) -> Any:
    app = create_app(make_settings(database_url, signing_key, security_alert_email_severities=""))
    async with running(app) as client:
        yield client


async def test_alert_mail_can_be_turned_off(quiet: httpx.AsyncClient, tenant: Tenant, database_url: str) -> None:
    owner = (await login(quiet, tenant))["accessToken"]
    viewer = await join(quiet, database_url, owner, "viewer@acme.test", "viewer", PASSWORD)
    assert "errors" not in (await gql(quiet, ROLE, {"m": viewer.membership_id, "r": "owner"}, token=owner)).json()
    assert len(nodes(await events(quiet, owner, {"severity": "HIGH"}))) == 1
    assert await mails_to(database_url, tenant.email, "security_alert") == []


async def test_of_two_resolving_at_once_one_wins(client: httpx.AsyncClient, tenant: Tenant, database_url: str) -> None:
    owner = (await login(client, tenant))["accessToken"]
    admin = await join(client, database_url, owner, "admin@acme.test", "admin", PASSWORD)
    event_id = await record(database_url, tenant.org_id, SecurityEventKind.ACCOUNT_LOCKED, Severity.LOW, "x")
    bodies = await asyncio.gather(
        *(
            gql(client, RESOLVE, {"id": event_id, "n": who}, token=token)
            for who, token in (("owner", owner), ("admin", admin.access_token)) * 3
        )
    )
    answers = [b.json() for b in bodies]
    won = [a["data"]["resolveSecurityEvent"] for a in answers if a.get("data")]
    assert len(won) == 1
    assert sorted(error_codes(a) for a in answers if not a.get("data")) == [["CONFLICT"]] * 5
    [row] = sql(database_url, "SELECT resolved_by, note FROM security_events WHERE id = :i", i=event_id)
    assert row[1] == won[0]["note"]
    assert row[0] == won[0]["resolvedBy"]


async def test_an_api_key_acts_for_its_holder(client: httpx.AsyncClient, tenant: Tenant, database_url: str) -> None:
    owner = (await login(client, tenant))["accessToken"]
    scopes = ["security:read", "security:manage"]
    body = (await gql(client, CREATE_KEY, {"i": {"name": "soc", "scopes": scopes}}, token=owner)).json()
    secret = body["data"]["createApiKey"]["secret"]
    key = {"X-API-Key": secret}
    event_id = await record(database_url, tenant.org_id, SecurityEventKind.ACCOUNT_LOCKED, Severity.LOW, "x")
    acked = (await gql(client, ACK, {"id": event_id, "n": "from the SOC"}, headers=key)).json()
    assert acked["data"]["acknowledgeSecurityEvent"]["acknowledgedBy"] == tenant.user_id, acked
    hook = {"i": {"url": "https://hooks.example.com/soc", "events": ["ACCOUNT_LOCKED"]}}
    created = (await gql(client, CREATE_WEBHOOK, hook, headers=key)).json()
    assert created["data"]["createWebhook"]["secret"].startswith("whsec_"), created
    [row] = sql(database_url, "SELECT created_by FROM webhooks")
    assert row[0] == tenant.user_id
