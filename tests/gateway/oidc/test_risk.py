"""Sign-in risk for single sign-on, against real providers: the `sign_ins` row and the audit entry's
`details.risk`, and the policy: REQUIRE_MFA passes only when the provider asserts a second factor (`amr`),
REFUSE refuses with a `high_risk_sign_in` event."""

from __future__ import annotations

import json
from typing import Any

import httpx

from store.db import Database
from store.security import SecurityPolicyRow
from tests.conftest import sql
from tests.gateway.oidc.conftest import GATEWAY, Gateway, configure_node, configure_rogue, session_cookie, to_callback
from tests.gateway.oidc.test_bad_inputs import rogue_login
from tests.idp.rogue_op import RogueProvider


async def set_policy(url: str, org_id: str, *, medium: str = "allow", high: str = "allow") -> None:
    db = Database(url)
    try:
        async with db.transaction() as s:
            s.add(SecurityPolicyRow(organization_id=org_id, medium_risk_action=medium, high_risk_action=high))
    finally:
        await db.dispose()


def as_json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def sso_rows(url: str) -> list[tuple[Any, ...]]:
    return [
        (r[0], r[1], r[2], as_json(r[3]))
        for r in sql(url, "SELECT method, outcome, risk_score, risk_signals FROM sign_ins WHERE method <> 'password'")
    ]


def sso_audit(url: str) -> list[tuple[str, dict[str, Any]]]:
    rows = sql(url, "SELECT action, details FROM audit_log WHERE action LIKE 'authn_sso_%' ORDER BY sequence")
    return [(r[0], as_json(r[1])) for r in rows]


async def node_sign_in(gw: Gateway, login_name: str = "jdoe") -> httpx.Response:
    gw.browser.cookies.clear()
    callback = await to_callback(gw.browser, f"{GATEWAY}/auth/sso/acme?return_to=/app", login_name)
    return await gw.browser.get(callback)


async def test_an_oidc_sign_in_is_scored_and_recorded(gw: Gateway, node_issuer: str, database_url: str) -> None:
    await configure_node(gw, node_issuer)
    assert (await node_sign_in(gw)).status_code == 303
    assert (await node_sign_in(gw)).status_code == 303
    assert sso_rows(database_url) == [
        ("oidc", "success", 50, ["new_address", "new_user_agent"]),
        ("oidc", "success", 0, []),
    ]
    [(_, first), (_, second)] = sso_audit(database_url)
    assert first["risk"]["score"] == 50
    assert first["risk"]["level"] == "medium"
    assert first["risk"]["action"] == "allow"
    assert second["risk"]["level"] == "low"


async def test_require_mfa_refuses_an_sso_sign_in_without_an_asserted_second_factor(
    gw: Gateway, node_issuer: str, database_url: str
) -> None:
    await configure_node(gw, node_issuer)
    assert (await node_sign_in(gw)).status_code == 303  # jdoe's first sign-in: medium, allowed
    await set_policy(database_url, gw.tenant.org_id, medium="require_mfa")
    # an existing member, low risk: in
    assert (await node_sign_in(gw)).status_code == 303
    # a new member's first sign-in is medium; the provider asserted no second factor (no `amr`)
    refused = await node_sign_in(gw, "newcomer")
    assert refused.status_code == 400
    assert session_cookie(refused) is None
    assert sql(database_url, "SELECT count(*) FROM users WHERE email = 'newcomer@acme.test'") == [(0,)]
    [(kind, severity, subject, details)] = sql(
        database_url, "SELECT kind, severity, subject_id, details FROM security_events"
    )
    assert (kind, severity, subject) == ("high_risk_sign_in", "medium", None)
    assert as_json(details)["risk"]["action"] == "require_mfa"
    action, last = sso_audit(database_url)[-1]
    assert action == "authn_sso_fail"
    assert last["reason"] == "sso_risk_refused"
    assert last["risk"]["score"] == 50
    # the account that would have been created has no row; the others do
    assert [r[1] for r in sso_rows(database_url)] == ["success", "success"]


async def test_require_mfa_accepts_the_providers_amr(gw: Gateway, rogue: RogueProvider, database_url: str) -> None:
    await configure_rogue(gw, rogue)
    await set_policy(database_url, gw.tenant.org_id, medium="require_mfa", high="refuse")
    rogue.behaviour.claims = {"amr": ["pwd"]}
    assert (await rogue_login(gw)).status_code == 400
    rogue.behaviour.claims = {"amr": ["pwd", "otp"]}
    assert (await rogue_login(gw)).status_code == 303
    assert sso_rows(database_url) == [("oidc", "success", 50, ["new_address", "new_user_agent"])]
    assert sso_audit(database_url)[-1][1]["risk"]["action"] == "require_mfa"


async def test_refuse_writes_the_row_and_the_event(gw: Gateway, rogue: RogueProvider, database_url: str) -> None:
    await configure_rogue(gw, rogue)
    assert (await rogue_login(gw)).status_code == 303  # the account exists from here on
    [user_id] = [r[0] for r in sql(database_url, "SELECT id FROM users WHERE email = 'jdoe@acme.test'")]
    await set_policy(database_url, gw.tenant.org_id, medium="refuse", high="refuse")
    sql(database_url, "DELETE FROM sign_ins WHERE method = 'oidc'")  # forget it: medium again
    gw.browser.cookies.clear()
    assert (await rogue_login(gw)).status_code == 400
    assert sso_rows(database_url) == [("oidc", "refused", 50, ["new_address", "new_user_agent"])]
    [(kind, subject)] = sql(database_url, "SELECT kind, subject_id FROM security_events")
    assert (kind, subject) == ("high_risk_sign_in", user_id)
