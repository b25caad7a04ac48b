"""The organization's security policy for SAML sign-ins, completed for real (a pysaml2 identity provider, the
gateway's own sign-in step): the address allowlist and the allowed sign-in methods."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from gateway.app import create_app
from tests.conftest import CLIENT_IP, Tenant, claim_domain, gql, login, make_settings, make_tenant, sql
from tests.gateway.test_saml import CONFIGURE, PUBLIC_URL
from tests.saml_idp import TestIdp, b64
from tests.security_policy import ME, mode_settings, set_policy

OUTSIDE = "198.51.100.9"


@dataclass
class Saml:
    app: Any
    client: httpx.AsyncClient
    idp: TestIdp
    tenant: Tenant
    token: str

    def browser(self, ip: str = CLIENT_IP) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app, client=(ip, 40000)), base_url=PUBLIC_URL)

    async def sign_in(self, browser: httpx.AsyncClient) -> httpx.Response:
        start = await browser.get("/auth/sso/acme")
        assert start.status_code == 302, start.text
        xml = self.idp.respond(start.headers["location"])
        return await browser.post("/auth/saml/acme/acs", data={"SAMLResponse": b64(xml)})


@pytest.fixture
def idp() -> Iterator[TestIdp]:
    server = TestIdp()
    yield server
    server.close()


@pytest.fixture
async def saml(
    database_url: str, signing_key: str, idp: TestIdp, request: pytest.FixtureRequest
) -> AsyncIterator[Saml]:
    tenant = await make_tenant(database_url)
    claim_domain(database_url, tenant.org_id, "acme.test")
    # embedded mode on SQLite, shared mode (with Redis) on PostgreSQL
    app = create_app(
        make_settings(database_url, signing_key, public_url=PUBLIC_URL, **mode_settings(database_url, request))
    )
    async with app.router.lifespan_context(app):
        s = Saml(app, httpx.AsyncClient(), idp, tenant, "")
        async with s.browser() as client:
            s.client = client
            s.token = (await login(client, tenant))["accessToken"]
            body = (await gql(client, CONFIGURE, {"input": {"idpMetadataXml": idp.metadata}}, token=s.token)).json()
            assert body.get("data"), body
            idp.trust_sp((await client.get("/auth/saml/acme/metadata")).text)
            yield s


def has_session_cookie(r: httpx.Response) -> bool:
    return any(
        v.startswith("__Host-portcullis=") and not v.startswith("__Host-portcullis=;")
        for v in r.headers.get_list("set-cookie")
    )


def sso_failures(url: str) -> list[str]:
    rows = sql(url, "SELECT details FROM audit_log WHERE action = 'authn_sso_fail'")
    return [(r[0] if isinstance(r[0], dict) else json.loads(r[0]))["reason"] for r in rows]


async def test_saml_sign_in_from_outside_the_allowlist_is_refused(saml: Saml, database_url: str) -> None:
    await set_policy(saml.client, saml.token, ipAllowlist=["203.0.113.0/24"])
    async with saml.browser(OUTSIDE) as outside:
        refused = await saml.sign_in(outside)
        assert refused.status_code == 403  # the SAML sign-in step's refusal page
        assert not has_session_cookie(refused)
    async with saml.browser() as inside:
        signed = await saml.sign_in(inside)
        assert signed.status_code == 303, signed.text
        assert has_session_cookie(signed)
        assert (await inside.get("/graphql", params={"query": ME})).json()["data"]["me"]["authMethod"] == "saml"
    assert sso_failures(database_url) == ["sso_address_not_allowed"]
    assert int(sql(database_url, "SELECT count(*) FROM auth_sessions WHERE auth_method = 'saml'")[0][0]) == 1


async def test_saml_follows_the_allowed_sign_in_methods(saml: Saml, database_url: str) -> None:
    await set_policy(saml.client, saml.token, allowedSignInMethods=["SSO"], breakGlassOwners=[saml.tenant.user_id])
    async with saml.browser() as browser:
        signed = await saml.sign_in(browser)
        assert signed.status_code == 303, signed.text
        assert (await browser.get("/graphql", params={"query": ME})).status_code == 200
        await set_policy(saml.client, saml.token, allowedSignInMethods=["PASSWORD"], breakGlassOwners=[])
        # the open SAML session is refused from its next request, and a new SAML sign-in too
        r = await browser.get("/graphql", params={"query": ME})
        assert r.status_code == 403
        assert r.json()["errors"][0]["message"] == "sign-in method not allowed by the organization's policy"
    async with saml.browser() as fresh:
        refused = await saml.sign_in(fresh)
        assert refused.status_code == 403  # the SAML sign-in step's refusal page
        assert not has_session_cookie(refused)
    assert sso_failures(database_url) == ["sso_method_not_allowed"]
