"""Risk-based step-up at password sign-in: the score from the documented signals, the `sign_ins` rows, what the
policy's ALLOW / REQUIRE_MFA / REFUSE do, the audit entries' `details.risk` and the SECURITY report."""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from store.db import Database
from store.security import SecurityPolicyRow, SignIn
from tests.conftest import CLIENT_IP, LOGIN, Tenant, gql, login, make_tenant, sql
from tests.schema.test_mfa import Clock, clock, code, enroll, reason, sign_in, signed_in
from tests.schema.test_reports import download_json, generated, rows_of

__all__ = ["clock"]  # the TOTP clock fixture, used by the second-factor tests here

HOME_AGENT = "python-httpx"  # the default test client's agent starts so
NEW_IP = "198.51.100.44"
NEW_AGENT = "Mozilla/5.0 (X11; Linux x86_64) Unfamiliar/1.0"


@contextlib.asynccontextmanager
async def elsewhere(app: Any, ip: str = NEW_IP, agent: str = NEW_AGENT) -> AsyncIterator[httpx.AsyncClient]:
    """A client on another address with another browser, on the running gateway."""
    transport = httpx.ASGITransport(app=app, client=(ip, 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver", headers={"User-Agent": agent}) as c:
        yield c


async def set_policy(url: str, org_id: str, *, medium: str = "allow", high: str = "allow") -> None:
    db = Database(url)
    try:
        async with db.transaction() as s:
            s.add(SecurityPolicyRow(organization_id=org_id, medium_risk_action=medium, high_risk_action=high))
    finally:
        await db.dispose()


async def add_sign_ins(url: str, t: Tenant, ats: list[datetime], *, ip: str, agent: str) -> None:
    db = Database(url)
    agent_hash = hashlib.sha256(agent.encode()).hexdigest()
    try:
        async with db.transaction() as s:
            for at in ats:
                s.add(
                    SignIn(
                        organization_id=t.org_id,
                        user_id=t.user_id,
                        method="password",
                        outcome="success",
                        client_ip=ip,
                        user_agent_hash=agent_hash,
                        at=at,
                    )
                )
    finally:
        await db.dispose()


def as_json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def sign_ins(url: str) -> list[dict[str, Any]]:
    rows = sql(
        url,
        "SELECT user_id, organization_id, method, outcome, client_ip, user_agent_hash, risk_score, risk_signals "
        "FROM sign_ins ORDER BY id",
    )
    keys = ("user_id", "org", "method", "outcome", "ip", "agent", "score", "signals")
    return [dict(zip(keys, (*r[:7], as_json(r[7])), strict=True)) for r in rows]


def audit_risk(url: str, action: str) -> list[dict[str, Any]]:
    rows = sql(url, "SELECT details FROM audit_log WHERE action = :a ORDER BY sequence", a=action)
    return [as_json(r[0]).get("risk") for r in rows]


def events(url: str) -> list[tuple[Any, ...]]:
    return sql(url, "SELECT kind, severity, subject_id, client_ip, details FROM security_events ORDER BY id")


async def password(client: httpx.AsyncClient, t: Tenant, pw: str | None = None) -> dict[str, Any]:
    r = await gql(client, LOGIN, {"email": t.email, "password": pw or t.password})
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def sha(agent: str) -> str:
    return hashlib.sha256(agent.encode()).hexdigest()


# --- scoring ------------------------------------------------------------------------------------------


async def test_a_first_sign_in_scores_a_new_address_and_agent(client, tenant: Tenant, database_url: str) -> None:
    await login(client, tenant)
    [row] = sign_ins(database_url)
    assert row["user_id"] == tenant.user_id
    assert row["org"] == tenant.org_id
    assert (row["method"], row["outcome"], row["ip"]) == ("password", "success", CLIENT_IP)
    assert row["agent"] == sha(client.headers["user-agent"])
    assert (row["score"], row["signals"]) == (50, ["new_address", "new_user_agent"])
    [risk] = audit_risk(database_url, "authn_login_success")
    assert risk == {
        "score": 50,
        "level": "medium",
        "signals": [{"name": "new_address", "weight": 30}, {"name": "new_user_agent", "weight": 20}],
        "action": "allow",
    }


async def test_a_familiar_address_and_agent_score_low(client, app: Any, tenant: Tenant, database_url: str) -> None:
    await login(client, tenant)
    await login(client, tenant)
    async with elsewhere(app, ip=CLIENT_IP) as same_place_new_browser:
        assert signed_in_body(await password(same_place_new_browser, tenant))
    async with elsewhere(app, agent=client.headers["user-agent"]) as travelling:
        assert signed_in_body(await password(travelling, tenant))
    assert [(r["score"], r["signals"]) for r in sign_ins(database_url)] == [
        (50, ["new_address", "new_user_agent"]),
        (0, []),
        (20, ["new_user_agent"]),
        (30, ["new_address"]),
    ]
    assert [r["level"] for r in audit_risk(database_url, "authn_login_success")] == ["medium", "low", "low", "low"]


def signed_in_body(body: dict[str, Any]) -> bool:
    return bool(body.get("data") and body["data"]["login"] and body["data"]["login"]["accessToken"])


async def test_recent_failures_raise_the_score(client, tenant: Tenant, database_url: str) -> None:
    await login(client, tenant)
    for expected in (0, 10, 10):  # each failure is scored on the failures before it
        body = await password(client, tenant, "not the password at all")
        assert body["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
        assert audit_risk(database_url, "authn_login_fail")[-1]["score"] == expected
    await login(client, tenant)
    rows = sign_ins(database_url)
    assert [r["outcome"] for r in rows] == ["success", "failure", "failure", "failure", "success"]
    assert (rows[-1]["score"], rows[-1]["signals"]) == (25, ["recent_failures"])
    assert audit_risk(database_url, "authn_login_success")[-1]["signals"] == [{"name": "recent_failures", "weight": 25}]


async def test_an_unknown_email_leaves_no_sign_in_row(client, tenant: Tenant, database_url: str) -> None:
    body = await password(client, Tenant(tenant.org_id, "acme", "x", "nobody@acme.test", "whatever-password"))
    assert body["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
    assert sign_ins(database_url) == []
    assert audit_risk(database_url, "authn_login_fail") == [None]


async def test_many_accounts_from_one_address(client, app: Any, tenant: Tenant, database_url: str) -> None:
    await login(client, tenant)  # the owner's usual place
    others = [await make_tenant(database_url, slug=f"other{i}", email=f"person{i}@other{i}.test") for i in range(5)]
    async with elsewhere(app) as stuffing:
        for i, other in enumerate(others):
            await password(stuffing, other, "a guessed password")
            # fewer than five other accounts tried from the address before it
            assert sign_ins(database_url)[-1]["signals"] == ["new_address", "new_user_agent"], i
        body = await password(stuffing, tenant)
    assert signed_in_body(body)
    last = sign_ins(database_url)[-1]
    assert (last["score"], last["signals"]) == (75, ["new_address", "new_user_agent", "many_accounts_from_address"])
    assert audit_risk(database_url, "authn_login_success")[-1]["level"] == "high"


async def test_a_sign_in_outside_the_usual_hours(client, tenant: Tenant, database_url: str) -> None:
    now = datetime.now(UTC)
    agent = client.headers["user-agent"]
    # five earlier sign-ins from here, each twelve hours off the clock from now
    night = now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=12)
    await add_sign_ins(database_url, tenant, [night - timedelta(days=d) for d in range(5)], ip=CLIENT_IP, agent=agent)
    await login(client, tenant)
    last = sign_ins(database_url)[-1]
    assert (last["score"], last["signals"]) == (15, ["unusual_hour"])
    # with four, the member's hours are not known yet
    sql(database_url, "DELETE FROM sign_ins")
    await add_sign_ins(database_url, tenant, [night - timedelta(days=d) for d in range(4)], ip=CLIENT_IP, agent=agent)
    await login(client, tenant)
    assert sign_ins(database_url)[-1]["signals"] == []


# --- the policy ---------------------------------------------------------------------------------------


async def test_allow_by_default_changes_nothing(client, app: Any, tenant: Tenant, database_url: str) -> None:
    await login(client, tenant)
    for _ in range(3):
        await password(client, tenant, "wrong password here")
    async with elsewhere(app) as c:
        assert signed_in_body(await password(c, tenant))  # high risk, and still signed in
    assert sign_ins(database_url)[-1]["score"] == 75
    assert audit_risk(database_url, "authn_login_success")[-1]["action"] == "allow"
    assert events(database_url) == []


async def test_refuse_answers_like_bad_credentials_and_tells_the_owners(
    client, app: Any, tenant: Tenant, database_url: str
) -> None:
    await login(client, tenant)  # the usual place from now on
    await set_policy(database_url, tenant.org_id, medium="refuse", high="refuse")
    wrong = await password(client, tenant, "certainly not the password")
    async with elsewhere(app) as c:
        refused = await password(c, tenant)
    assert refused["errors"][0]["message"] == wrong["errors"][0]["message"]
    assert refused["errors"][0]["extensions"] == wrong["errors"][0]["extensions"]
    assert refused["data"] is None
    rows = sign_ins(database_url)
    assert [r["outcome"] for r in rows][-1] == "refused"
    assert rows[-1]["score"] == 60  # new address, new agent, one recent failure
    [(kind, severity, subject, ip, details)] = events(database_url)
    assert (kind, severity, subject, ip) == ("high_risk_sign_in", "medium", tenant.user_id, NEW_IP)
    details = as_json(details)
    assert details["outcome"] == "refused"
    assert details["risk"]["score"] == 60
    fail = sql(database_url, "SELECT details FROM audit_log WHERE action = 'authn_login_fail' ORDER BY sequence")
    last = as_json(fail[-1][0])
    assert last["reason"] == "risk"
    assert last["risk"]["action"] == "refuse"
    # nothing was opened for the refused sign-in
    assert sql(database_url, "SELECT count(*) FROM auth_sessions WHERE client_ip = :ip", ip=NEW_IP) == [(0,)]


async def test_the_first_sign_in_is_refused_when_medium_risk_is(client, tenant: Tenant, database_url: str) -> None:
    await set_policy(database_url, tenant.org_id, medium="refuse")
    body = await password(client, tenant)
    assert body["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
    assert [r["outcome"] for r in sign_ins(database_url)] == ["refused"]
    # the policy for high risk alone leaves a medium-risk sign-in alone
    sql(database_url, "UPDATE security_policies SET medium_risk_action = 'allow', high_risk_action = 'refuse'")
    assert signed_in_body(await password(client, tenant))


async def test_require_mfa_asks_an_enrolled_member_for_the_code(
    client, app: Any, tenant: Tenant, database_url: str, clock: Clock
) -> None:
    e = await enroll(client, tenant, clock)
    await set_policy(database_url, tenant.org_id, medium="require_mfa", high="refuse")
    async with elsewhere(app) as c:
        assert reason(await sign_in(c, tenant, None)) == "MFA_REQUIRED"
        assert signed_in(await sign_in(c, tenant, code(e.secret, clock)))
    rows = sign_ins(database_url)
    assert [r["outcome"] for r in rows][-2:] == ["challenged", "success"]
    assert rows[-1]["signals"] == ["new_address", "new_user_agent"]
    assert audit_risk(database_url, "authn_login_success")[-1]["action"] == "require_mfa"
    assert events(database_url) == []  # the second factor was given


async def test_require_mfa_lets_a_member_without_a_second_factor_in_and_tells_the_owners(
    client, app: Any, tenant: Tenant, database_url: str
) -> None:
    await set_policy(database_url, tenant.org_id, medium="require_mfa")
    await login(client, tenant)
    [(kind, severity, subject, ip, details)] = events(database_url)
    assert (kind, severity, subject, ip) == ("high_risk_sign_in", "medium", tenant.user_id, CLIENT_IP)
    assert as_json(details)["outcome"] == "no_second_factor"
    await login(client, tenant)  # low risk now: nothing more to tell
    assert len(events(database_url)) == 1


@pytest.mark.parametrize("action", ["allow", "require_mfa", "refuse"])
async def test_a_low_risk_sign_in_is_never_stepped_up(client, tenant: Tenant, database_url: str, action: str) -> None:
    await add_sign_ins(
        database_url, tenant, [datetime.now(UTC) - timedelta(days=1)], ip=CLIENT_IP, agent=client.headers["user-agent"]
    )
    await set_policy(database_url, tenant.org_id, medium=action, high=action)
    assert signed_in_body(await password(client, tenant))
    assert events(database_url) == []


# --- the SECURITY report ------------------------------------------------------------------------------


async def test_the_security_report_shows_risk(client, app: Any, tenant: Tenant, database_url: str) -> None:
    await set_policy(database_url, tenant.org_id, high="refuse")
    token = (await login(client, tenant))["accessToken"]  # medium
    await login(client, tenant)  # low
    for _ in range(3):
        await password(client, tenant, "a wrong password")  # 0, 10, 10: low
    async with elsewhere(app) as c:
        assert (await password(c, tenant))["data"] is None  # 75: refused
    now = datetime.now(UTC)
    report = await generated(client, token, "SECURITY", now - timedelta(days=1), now + timedelta(hours=1))
    risk = report["summary"]["risk"]
    assert risk["signInsByLevel"] == {"low": 4, "medium": 1, "high": 1}
    assert risk["refusedByLevel"] == {"low": 0, "medium": 0, "high": 1}
    assert risk["refused"] == 1
    [high] = risk["highRisk"]
    assert (high["userId"], high["ip"], high["score"], high["outcome"]) == (tenant.user_id, NEW_IP, 75, "refused")
    assert high["signals"] == ["new_address", "new_user_agent", "recent_failures"]
    body = await download_json(client, token, report)
    [row] = rows_of(body, "risk_sign_in")
    assert (row["category"], row["source"], row["count"]) == ("high", "new_address,new_user_agent,recent_failures", 75)
    assert {r["category"]: r["count"] for r in rows_of(body, "risk_level")} == {"low": 4, "medium": 1, "high": 1}
    assert {r["category"]: r["count"] for r in rows_of(body, "risk_refused")} == {"low": 0, "medium": 0, "high": 1}


async def test_the_report_holds_only_its_own_organization(client, tenant: Tenant, database_url: str) -> None:
    other = await make_tenant(database_url, slug="globex", email="owner@globex.test")
    await add_sign_ins(database_url, other, [datetime.now(UTC)], ip=NEW_IP, agent=NEW_AGENT)
    sql(database_url, "UPDATE sign_ins SET risk_score = 90")
    token = (await login(client, tenant))["accessToken"]
    now = datetime.now(UTC)
    risk = (await generated(client, token, "SECURITY", now - timedelta(days=1), now + timedelta(hours=1)))["summary"][
        "risk"
    ]
    assert risk["signInsByLevel"] == {"low": 0, "medium": 1, "high": 0}
    assert risk["highRisk"] == []


async def test_the_hour_comes_from_the_gateways_clock(client, app: Any, tenant: Tenant, database_url: str) -> None:
    """The services' clock decides the hour: office hours on five days, then a sign-in at three in the morning."""
    today = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    office = [(today - timedelta(days=d)).replace(hour=h) for d, h in ((1, 9), (2, 10), (3, 14), (4, 16), (5, 11))]
    agent = client.headers["user-agent"]
    await add_sign_ins(database_url, tenant, office, ip=CLIENT_IP, agent=agent)
    services = app.state.services
    real = services.clock
    try:
        services.clock = lambda: (today - timedelta(days=1)).replace(hour=3, minute=20).timestamp()
        await login(client, tenant)
        services.clock = lambda: (today - timedelta(days=1)).replace(hour=12, minute=20).timestamp()
        await login(client, tenant)
    finally:
        services.clock = real
    assert [r["signals"] for r in sign_ins(database_url)][-2:] == [["unusual_hour"], []]
