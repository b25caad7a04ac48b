"""`Organization.securityPolicy` and `updateSecurityPolicy`: reading, partial updates, what a change records,
plan floors, API-key lifetimes, and every bad input refused (all problems at once, nothing written)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.conftest import CLIENT_IP, Tenant, error_codes, gql, login, make_tenant, sql
from tests.invitations import join
from tests.security_policy import READ_POLICY, ROTATE_KEY, UPDATE_POLICY, create_key, set_policy, update_policy

DEFAULTS = {
    "passwordMinLength": 12,
    "passwordHistory": 0,
    "passwordMaxAgeDays": None,
    "breachedPasswordCheck": True,
    "sessionIdleTimeoutMinutes": None,
    "sessionMaxLifetimeHours": None,
    "maxConcurrentSessions": None,
    "concurrentSessionAction": "END_OLDEST",
    "freshAuthMinutes": None,
    "allowedSignInMethods": ["PASSWORD", "SSO", "API_KEY"],
    "breakGlassOwners": [],
    "requireMfa": False,
    "apiKeyMaxLifetimeDays": None,
    "ipAllowlist": [],
    "mediumRiskAction": "ALLOW",
    "highRiskAction": "ALLOW",
}


def policy_rows(url: str) -> int:
    return int(sql(url, "SELECT count(*) FROM security_policies")[0][0])


async def test_default_policy_is_todays_behaviour(client, tenant: Tenant) -> None:
    token = (await login(client, tenant))["accessToken"]
    body = (await gql(client, READ_POLICY, token=token)).json()
    assert body["data"]["organization"]["securityPolicy"] == DEFAULTS


async def test_partial_update_keeps_omitted_settings_and_null_clears(client, database_url, tenant: Tenant) -> None:
    token = (await login(client, tenant))["accessToken"]
    first = await set_policy(
        client,
        token,
        sessionIdleTimeoutMinutes=30,
        sessionMaxLifetimeHours=8,
        ipAllowlist=["203.0.113.0/24", "2001:db8::/32", "203.0.113.7"],
        allowedSignInMethods=["PASSWORD", "API_KEY"],
        highRiskAction="REFUSE",
        concurrentSessionAction="REFUSE_NEW",
    )
    # single addresses are stored as networks, and a network already listed is not listed twice
    assert first["ipAllowlist"] == ["203.0.113.0/24", "2001:db8::/32", "203.0.113.7/32"]
    second = await set_policy(client, token, sessionIdleTimeoutMinutes=None, passwordHistory=5)
    assert second == {
        **DEFAULTS,
        "passwordHistory": 5,
        "sessionMaxLifetimeHours": 8,
        "ipAllowlist": first["ipAllowlist"],
        "allowedSignInMethods": ["PASSWORD", "API_KEY"],
        "highRiskAction": "REFUSE",
        "concurrentSessionAction": "REFUSE_NEW",
    }
    read = (await gql(client, READ_POLICY, token=token)).json()["data"]["organization"]["securityPolicy"]
    assert read == second


async def test_change_is_audited_with_old_and_new_values_and_raises_an_event(
    client, database_url, tenant: Tenant
) -> None:
    token = (await login(client, tenant))["accessToken"]
    await set_policy(client, token, sessionMaxLifetimeHours=8, passwordMinLength=14)
    [(details,)] = sql(database_url, "SELECT details FROM audit_log WHERE action = 'security_policy_update'")
    details = details if isinstance(details, dict) else json.loads(details)
    assert details["changes"] == [
        {"setting": "passwordMinLength", "old": 12, "new": 14},
        {"setting": "sessionMaxLifetimeHours", "old": None, "new": 8},
    ]
    [(kind, severity, actor, ip)] = sql(database_url, "SELECT kind, severity, actor_id, client_ip FROM security_events")
    assert (kind, severity, actor, ip) == ("policy_changed", "medium", tenant.user_id, CLIENT_IP)


async def test_require_mfa_is_the_organizations_own(client, database_url, tenant: Tenant) -> None:
    """`requireMfa` is organizations.require_mfa: requiring it needs MFA of a password caller first, as
    `updateOrganization` does."""
    token = (await login(client, tenant))["accessToken"]
    body = await update_policy(client, token, requireMfa=True)
    assert error_codes(body) == ["FORBIDDEN"]
    assert sql(database_url, "SELECT require_mfa FROM organizations")[0][0] in (False, 0)
    sql(database_url, "UPDATE users SET mfa_enabled = :t", t=True)
    assert (await set_policy(client, token, requireMfa=True))["requireMfa"] is True
    assert sql(database_url, "SELECT require_mfa FROM organizations")[0][0] in (True, 1)


# -- bad inputs: each refused with every problem named, nothing written ---------------------------------


async def refused(client, database_url, token: str, *, problem: str, **values: Any) -> list[str]:
    body = await update_policy(client, token, **values)
    assert error_codes(body) == ["BAD_USER_INPUT"], body
    problems: list[str] = body["errors"][0]["extensions"]["problems"]
    assert any(problem in p for p in problems), problems
    assert body["data"] is None
    assert policy_rows(database_url) == 0
    assert int(sql(database_url, "SELECT count(*) FROM security_events WHERE kind = 'policy_changed'")[0][0]) == 0
    return problems


async def test_idle_timeout_above_lifetime_is_refused(client, database_url, tenant: Tenant) -> None:
    token = (await login(client, tenant))["accessToken"]
    await refused(
        client,
        database_url,
        token,
        problem="sessionIdleTimeoutMinutes cannot exceed sessionMaxLifetimeHours",
        sessionIdleTimeoutMinutes=600,
        sessionMaxLifetimeHours=2,
    )


@pytest.mark.parametrize(
    ("values", "problem"),
    [
        ({"sessionIdleTimeoutMinutes": -5}, "sessionIdleTimeoutMinutes must be between 5 and"),
        ({"maxConcurrentSessions": 0}, "maxConcurrentSessions must be between 1 and 1000"),
        ({"sessionMaxLifetimeHours": 2_000_000_000}, "sessionMaxLifetimeHours must be between 1 and 2160"),
        ({"passwordMinLength": 4}, "passwordMinLength must be between 12 and 128"),
        ({"apiKeyMaxLifetimeDays": -1}, "apiKeyMaxLifetimeDays must be between 1 and 3650"),
        ({"passwordMinLength": None}, "passwordMinLength cannot be null"),
    ],
)
async def test_negative_absurd_or_null_numbers_are_refused(
    client, database_url, tenant: Tenant, values: dict[str, Any], problem: str
) -> None:
    token = (await login(client, tenant))["accessToken"]
    await refused(client, database_url, token, problem=problem, **values)


async def test_every_problem_is_named_at_once(client, database_url, tenant: Tenant) -> None:
    token = (await login(client, tenant))["accessToken"]
    problems = await refused(
        client,
        database_url,
        token,
        problem="maxConcurrentSessions",
        maxConcurrentSessions=-1,
        passwordHistory=99,
        ipAllowlist=["not-an-address"],
    )
    assert len(problems) == 3, problems


async def test_an_integer_beyond_graphql_int_is_a_bad_request_not_a_500(client, database_url, tenant: Tenant) -> None:
    token = (await login(client, tenant))["accessToken"]
    r = await gql(client, UPDATE_POLICY, {"input": {"maxConcurrentSessions": 10**12}}, token=token)
    assert r.status_code == 400
    assert error_codes(r.json()) == ["BAD_USER_INPUT"]
    assert "32-bit" in r.json()["errors"][0]["message"]
    assert policy_rows(database_url) == 0


async def test_invalid_cidr_is_refused(client, database_url, tenant: Tenant) -> None:
    token = (await login(client, tenant))["accessToken"]
    await refused(
        client,
        database_url,
        token,
        problem="ipAllowlist: '203.0.113.0/33' is not an IP address or CIDR",
        ipAllowlist=["203.0.113.0/24", "203.0.113.0/33"],
    )


@pytest.mark.parametrize("everything", ["0.0.0.0/0", "::/0"])
async def test_an_allowlist_of_every_address_is_refused(client, database_url, tenant: Tenant, everything: str) -> None:
    token = (await login(client, tenant))["accessToken"]
    await refused(client, database_url, token, problem="admits every address", ipAllowlist=[everything])


async def test_an_allowlist_without_the_callers_own_address_needs_confirmation(
    client, database_url, tenant: Tenant
) -> None:
    token = (await login(client, tenant))["accessToken"]
    problems = await refused(
        client, database_url, token, problem="does not include your own address", ipAllowlist=["198.51.100.0/24"]
    )
    assert CLIENT_IP in problems[0]
    confirmed = await set_policy(client, token, ipAllowlist=["198.51.100.0/24"], confirmOwnAddressExcluded=True)
    assert confirmed["ipAllowlist"] == ["198.51.100.0/24"]
    # and from then on the owner's own requests are refused at the edge
    r = await gql(client, READ_POLICY, token=token)
    assert r.status_code == 403


async def test_break_glass_must_be_owners_and_members(client, database_url, tenant: Tenant) -> None:
    token = (await login(client, tenant))["accessToken"]
    admin = await join(client, database_url, token, "admin@acme.test", "admin", "a long enough password 1")
    other = await make_tenant(database_url, slug="globex", email="owner@globex.test")
    await refused(
        client,
        database_url,
        token,
        problem=f"breakGlassOwners: {admin.user_id} is a member but not an owner of this organization",
        breakGlassOwners=[admin.user_id],
    )
    # another organization's owner answers exactly as an id that does not exist, and neither is echoed
    answers = []
    for user_id in (other.user_id, "no-such-user"):
        body = await update_policy(client, token, breakGlassOwners=[tenant.user_id, user_id])
        assert error_codes(body) == ["NOT_FOUND"], body
        assert user_id not in str(body)
        answers.append(body["errors"][0]["message"])
    assert answers[0] == answers[1]
    assert policy_rows(database_url) == 0
    ok = await set_policy(client, token, breakGlassOwners=[tenant.user_id])
    assert ok["breakGlassOwners"] == [tenant.user_id]


async def test_a_viewer_cannot_change_the_policy(client, database_url, tenant: Tenant) -> None:
    token = (await login(client, tenant))["accessToken"]
    viewer = await join(client, database_url, token, "viewer@acme.test", "viewer", "a long enough password 1")
    body = await update_policy(client, viewer.access_token, sessionMaxLifetimeHours=1)
    assert error_codes(body) == ["FORBIDDEN"]
    assert body["errors"][0]["extensions"]["requiredScopes"] == [["security:manage"]]
    assert policy_rows(database_url) == 0
    read = (await gql(client, READ_POLICY, token=viewer.access_token)).json()
    assert error_codes(read) == ["FORBIDDEN"]


async def test_sso_only_without_an_owner_who_could_sign_in_is_refused(client, database_url, tenant: Tenant) -> None:
    """No owner has a single sign-on identity: SSO-only would lock every owner out, unless one is break-glass."""
    token = (await login(client, tenant))["accessToken"]
    await refused(
        client, database_url, token, problem="no owner could sign in", allowedSignInMethods=["SSO", "API_KEY"]
    )
    ok = await set_policy(client, token, allowedSignInMethods=["SSO"], breakGlassOwners=[tenant.user_id])
    assert ok["allowedSignInMethods"] == ["SSO"]
    # removing the last break-glass owner afterwards is the same lockout
    body = await update_policy(client, token, breakGlassOwners=[])
    assert error_codes(body) == ["BAD_USER_INPUT"]
    assert "no owner could sign in" in body["errors"][0]["message"]
    read = (await gql(client, READ_POLICY, token=token)).json()["data"]["organization"]["securityPolicy"]
    assert read["breakGlassOwners"] == [tenant.user_id]


async def test_nobody_able_to_sign_in_is_refused(client, database_url, tenant: Tenant) -> None:
    token = (await login(client, tenant))["accessToken"]
    await refused(client, database_url, token, problem="must keep PASSWORD or SSO", allowedSignInMethods=["API_KEY"])


# -- plans ---------------------------------------------------------------------------------------------


async def test_allowlist_and_sign_in_methods_need_starter(client, database_url) -> None:
    free = await make_tenant(database_url, slug="tiny", email="owner@tiny.test", plan="free")
    token = (await login(client, free))["accessToken"]
    for values, setting in (
        ({"ipAllowlist": [f"{CLIENT_IP}/32"]}, "ipAllowlist"),
        ({"allowedSignInMethods": ["PASSWORD"]}, "allowedSignInMethods"),
    ):
        body = await update_policy(client, token, **values)
        assert error_codes(body) == ["FORBIDDEN"], body
        assert body["errors"][0]["extensions"]["requiredPlan"] == "STARTER", setting
    # everything else is on every plan, and clearing a restriction is always allowed
    assert (await set_policy(client, token, sessionMaxLifetimeHours=4, ipAllowlist=[]))["sessionMaxLifetimeHours"] == 4


# -- API key lifetime ------------------------------------------------------------------------------------


async def test_api_key_expiry_is_bounded_by_the_policy(client, database_url, tenant: Tenant) -> None:
    token = (await login(client, tenant))["accessToken"]
    forever = await create_key(client, token, days=None)
    assert forever["data"]["createApiKey"]["apiKey"]["expiresAt"] is None
    await set_policy(client, token, apiKeyMaxLifetimeDays=30)
    for days in (None, 31):
        body = await create_key(client, token, days=days)
        assert error_codes(body) == ["BAD_USER_INPUT"], body
        assert "apiKeyMaxLifetimeDays" in body["errors"][0]["message"]
    assert (await create_key(client, token, days=29))["data"]["createApiKey"]["apiKey"]["expiresAt"]
    # rotating the key without an expiry brings it within the policy: at most 30 days from now
    key_id = forever["data"]["createApiKey"]["apiKey"]["id"]
    rotated = (await gql(client, ROTATE_KEY, {"id": key_id}, token=token)).json()
    expires = rotated["data"]["rotateApiKey"]["apiKey"]["expiresAt"]
    assert expires is not None
    left = datetime.fromisoformat(expires) - datetime.now(UTC)
    assert timedelta(days=29, hours=23) < left <= timedelta(days=30)


async def test_api_keys_cannot_be_created_when_the_policy_refuses_them(client, database_url, tenant: Tenant) -> None:
    token = (await login(client, tenant))["accessToken"]
    await set_policy(client, token, allowedSignInMethods=["PASSWORD", "SSO"])
    body = await create_key(client, token)
    assert error_codes(body) == ["FORBIDDEN"]
    assert int(sql(database_url, "SELECT count(*) FROM api_keys")[0][0]) == 0


# -- COMPLIANCE evidence ---------------------------------------------------------------------------------


async def test_compliance_report_shows_the_policy_as_evidence(client, database_url, tenant: Tenant) -> None:
    from tests.schema.test_reports import download_json, generated, rows_of

    token = (await login(client, tenant))["accessToken"]
    before = {c["check"]: c for c in (await generated(client, token, "COMPLIANCE"))["summary"]["checks"]}
    assert [before[c]["status"] for c in ("password_policy", "session_policy", "mfa_policy", "network_policy")] == [
        "pass",
        "attention",
        "attention",
        "attention",
    ]
    await set_policy(
        client, token, sessionIdleTimeoutMinutes=15, sessionMaxLifetimeHours=8, ipAllowlist=["203.0.113.0/24"]
    )
    report = await generated(client, token, "COMPLIANCE")
    checks = {c["check"]: c for c in report["summary"]["checks"]}
    assert checks["session_policy"]["status"] == "pass"
    assert checks["network_policy"]["status"] == "pass"
    assert checks["network_policy"]["soc2"] == ["CC6.6"]
    assert checks["network_policy"]["iso27001"] == ["A.8.20"]
    evidence = {
        (e["check"], e["name"]): e["detail"]
        for e in rows_of(await download_json(client, token, report), "evidence")
        if e["subject_type"] == "security_policy"
    }
    assert evidence[("session_policy", "sessionIdleTimeoutMinutes")] == "15"
    assert evidence[("session_policy", "sessionMaxLifetimeHours")] == "8"
    assert evidence[("network_policy", "ipAllowlist")] == "203.0.113.0/24"
    assert evidence[("network_policy", "allowedSignInMethods")] == "API_KEY, PASSWORD, SSO"
    assert evidence[("password_policy", "passwordMinLength")] == "12"
    assert evidence[("mfa_policy", "requireMfa")] == "off"
