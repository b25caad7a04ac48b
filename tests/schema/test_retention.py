"""`Organization.retention` and `updateRetention`: plan defaults, settings within the plan's bounds, bad input
(below the minimum, above the maximum: every problem at once, nothing written), what a change records."""

from __future__ import annotations

import json
from typing import Any

from tests.conftest import Tenant, error_codes, gql, login, make_tenant, sql

FIELDS = "settings { kind days defaultDays minDays maxDays custom }"
READ = "{ organization { retention { " + FIELDS + " } } }"
UPDATE = "mutation($input: RetentionInput!) { updateRetention(input: $input) { " + FIELDS + " } }"


def by_kind(retention: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["kind"]: s for s in retention["settings"]}


async def test_plan_defaults_and_bounds(client, tenant: Tenant) -> None:
    token = (await login(client, tenant))["accessToken"]
    body = (await gql(client, READ, token=token)).json()
    settings = by_kind(body["data"]["organization"]["retention"])
    # the tenant is on PROFESSIONAL: a year of audit entries by default, up to three
    assert settings["AUDIT_ENTRIES"] == {
        "kind": "AUDIT_ENTRIES",
        "days": 365,
        "defaultDays": 365,
        "minDays": 90,
        "maxDays": 1095,
        "custom": False,
    }
    assert set(settings) == {"AUDIT_ENTRIES", "SESSIONS", "USAGE", "REPORTS", "SENT_MAIL", "SIGN_INS"}


async def test_free_plan_keeps_audit_entries_ninety_days(client, database_url) -> None:
    free = await make_tenant(database_url, slug="free", email="o@free.test", plan="free")
    token = (await login(client, free))["accessToken"]
    body = (await gql(client, READ, token=token)).json()
    assert by_kind(body["data"]["organization"]["retention"])["AUDIT_ENTRIES"]["maxDays"] == 90


async def test_update_within_bounds_is_stored_and_audited(client, database_url, tenant: Tenant) -> None:
    token = (await login(client, tenant))["accessToken"]
    body = (await gql(client, UPDATE, {"input": {"auditEntries": 1000, "sentMail": 7}}, token=token)).json()
    settings = by_kind(body["data"]["updateRetention"])
    assert settings["AUDIT_ENTRIES"]["days"] == 1000
    assert settings["AUDIT_ENTRIES"]["custom"] is True
    assert settings["SENT_MAIL"]["days"] == 7
    assert settings["REPORTS"]["custom"] is False
    [(details,)] = sql(database_url, "SELECT details FROM audit_log WHERE action = 'retention_updated'")
    changes = (json.loads(details) if isinstance(details, str) else details)["changes"]
    assert {"kind": "AUDIT_ENTRIES", "old": 365, "new": 1000} in changes
    assert {"kind": "SENT_MAIL", "old": 30, "new": 7} in changes
    # an omitted kind keeps its setting; null returns one to the plan's default
    body = (await gql(client, UPDATE, {"input": {"sentMail": None}}, token=token)).json()
    settings = by_kind(body["data"]["updateRetention"])
    assert settings["AUDIT_ENTRIES"]["days"] == 1000
    assert settings["SENT_MAIL"] == {**settings["SENT_MAIL"], "days": 30, "custom": False}
    again = by_kind((await gql(client, READ, token=token)).json()["data"]["organization"]["retention"])
    assert again == settings


async def test_settings_outside_the_plans_bounds_are_refused(client, database_url, tenant: Tenant) -> None:
    token = (await login(client, tenant))["accessToken"]
    # below the minimum (90 days of audit entries) and above the maximum (a year of sign-ins) at once
    body = (await gql(client, UPDATE, {"input": {"auditEntries": 30, "signIns": 400}}, token=token)).json()
    assert error_codes(body) == ["BAD_USER_INPUT"]
    problems = body["errors"][0]["extensions"]["problems"]
    assert len(problems) == 2
    assert "AUDIT_ENTRIES" in problems[0]
    assert "SIGN_INS" in problems[1]
    assert sql(database_url, "SELECT count(*) FROM retention_settings")[0][0] == 0
    # the refusal is recorded as such; nothing was changed
    results = [r for (r,) in sql(database_url, "SELECT result FROM audit_log WHERE action = 'retention_updated'")]
    assert "success" not in results
    # above the plan's maximum alone, and a negative number
    for wanted in ({"auditEntries": 1096}, {"usage": -1}):
        body = (await gql(client, UPDATE, {"input": wanted}, token=token)).json()
        assert error_codes(body) == ["BAD_USER_INPUT"], body


async def test_a_viewer_reads_but_cannot_change(client, database_url) -> None:
    viewer = await make_tenant(database_url, slug="initech", email="viewer@initech.test", role="viewer")
    token = (await login(client, viewer))["accessToken"]
    body = (await gql(client, READ, token=token)).json()
    assert body["data"]["organization"]["retention"]["settings"]
    body = (await gql(client, UPDATE, {"input": {"auditEntries": 100}}, token=token)).json()
    assert error_codes(body) == ["FORBIDDEN"]
