"""Sign-in risk for SAML, with a real signed assertion and the gateway's own sign-in step: the provider's
`AuthnContextClassRef` is what satisfies a policy's REQUIRE_MFA, and the sign-in leaves its `sign_ins` row."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from gateway.app import create_app
from store.db import Database
from store.security import SecurityPolicyRow
from tests.conftest import CLIENT_IP, claim_domain, gql, login, make_settings, make_tenant, sql
from tests.gateway.test_saml import CONFIGURE, PUBLIC_URL
from tests.saml_idp import PASSWORD_CONTEXT, TestIdp, b64

TOKEN_CONTEXT = "urn:oasis:names:tc:SAML:2.0:ac:classes:TimeSyncToken"


@pytest.fixture
def idp() -> Iterator[TestIdp]:
    server = TestIdp()
    yield server
    server.close()


@pytest.fixture
async def gateway(database_url: str, signing_key: str, idp: TestIdp) -> AsyncIterator[tuple[httpx.AsyncClient, str]]:
    tenant = await make_tenant(database_url)
    claim_domain(database_url, tenant.org_id, "acme.test")
    settings = make_settings(
        database_url, signing_key, public_url=PUBLIC_URL, frontend_return_paths=["/app"], session_cookie_secure=False
    )
    app = create_app(settings)  # the gateway's own sign-in step after the assertion
    transport = httpx.ASGITransport(app=app, client=(CLIENT_IP, 40000))
    async with app.router.lifespan_context(app), httpx.AsyncClient(transport=transport, base_url=PUBLIC_URL) as c:
        token = (await login(c, tenant))["accessToken"]
        body = (await gql(c, CONFIGURE, {"input": {"idpMetadataXml": idp.metadata}}, token=token)).json()
        assert body.get("data"), body
        idp.trust_sp((await c.get("/auth/saml/acme/metadata")).text)
        db = Database(database_url)
        try:
            async with db.transaction() as s:
                s.add(SecurityPolicyRow(organization_id=tenant.org_id, medium_risk_action="require_mfa"))
        finally:
            await db.dispose()
        yield c, tenant.org_id


async def saml_sign_in(c: httpx.AsyncClient, idp: TestIdp, context: str) -> httpx.Response:
    r = await c.get("/auth/sso/acme", params={"return_to": "/app"})
    assert r.status_code == 302, r.text
    return await c.post(
        "/auth/saml/acme/acs", data={"SAMLResponse": b64(idp.respond(r.headers["location"], authn_context=context))}
    )


def as_json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


async def test_require_mfa_follows_the_assertions_authentication_context(
    gateway: tuple[httpx.AsyncClient, str], idp: TestIdp, database_url: str
) -> None:
    c, org_id = gateway
    # a first sign-in (medium risk) with a password alone: refused, nothing provisioned
    refused = await saml_sign_in(c, idp, PASSWORD_CONTEXT)
    assert refused.status_code == 403
    assert sql(database_url, "SELECT count(*) FROM users WHERE email = 'ann@acme.test'") == [(0,)]
    [(kind, org)] = sql(database_url, "SELECT kind, organization_id FROM security_events")
    assert (kind, org) == ("high_risk_sign_in", org_id)
    # the same with a one-time token: in
    c.cookies.clear()
    admitted = await saml_sign_in(c, idp, TOKEN_CONTEXT)
    assert admitted.status_code == 303, admitted.text
    rows = sql(database_url, "SELECT method, outcome, risk_score FROM sign_ins WHERE method = 'saml'")
    assert [tuple(r) for r in rows] == [("saml", "success", 50)]
    [details] = [
        as_json(r[0]) for r in sql(database_url, "SELECT details FROM audit_log WHERE action = 'authn_sso_success'")
    ]
    assert details["risk"]["action"] == "require_mfa"
    assert details["risk"]["level"] == "medium"
