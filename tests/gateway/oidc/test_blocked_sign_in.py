"""A single sign-on into an organization from an address it blocked is refused: no session, no cookie."""

from __future__ import annotations

import httpx

from tests.conftest import gql, login, sql
from tests.gateway.oidc.conftest import GATEWAY, Gateway, configure_node, session_cookie
from tests.gateway.oidc.test_login import sign_in
from tests.gateway.test_address_blocks import ADMIN_IP

BLOCK = 'mutation { blockAddress(cidr: "203.0.113.0/24", reason: "stolen laptop") { id } }'


async def test_sso_sign_in_from_a_blocked_address_is_refused(gw: Gateway, node_issuer: str, database_url: str) -> None:
    await configure_node(gw, node_issuer)
    transport = httpx.ASGITransport(app=gw.app, client=(ADMIN_IP, 40000))
    async with httpx.AsyncClient(transport=transport, base_url=GATEWAY) as admin:
        token = (await login(admin, gw.tenant))["accessToken"]
        assert (await gql(admin, BLOCK, token=token)).json()["data"]["blockAddress"]
    r = await sign_in(gw)
    # the callback's failure page, as for every refused sign-in (the reason is in the audit entry only)
    assert r.status_code == 400, r.text
    assert "Sign-in failed" in r.text
    assert session_cookie(r) is None
    assert sql(database_url, "SELECT count(*) FROM auth_sessions WHERE auth_method = 'oidc'") == [(0,)]
    failures = sql(database_url, "SELECT details FROM audit_log WHERE action = 'authn_sso_fail'")
    assert len(failures) == 1
    assert "sso_address_blocked" in str(failures[0][0])
