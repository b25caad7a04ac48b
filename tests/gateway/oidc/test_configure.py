"""configureOidc and Organization.ssoConnections: validation, the secret kept encrypted, role limits."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import CLIENT_IP, error_codes, gql, login, make_tenant, sql
from tests.gateway.oidc.conftest import GATEWAY, Gateway, configure, configure_rogue
from tests.idp.rogue_op import CLIENT_ID, CLIENT_SECRET, RogueProvider

CONNECTIONS = """
{ organization { ssoConnections { id kind enabled issuer defaultRole jitProvisioning allowedDomains } } }
"""


async def test_connection_is_listed_without_its_secret(gw: Gateway, rogue: RogueProvider, database_url: str) -> None:
    body = await configure_rogue(gw, rogue, allowedDomains=["Acme.Test", "acme.test"], defaultRole="analyst")
    created = body["data"]["configureOidc"]
    assert created["kind"] == "oidc"
    assert created["issuer"] == rogue.issuer
    assert created["allowedDomains"] == ["acme.test"]
    assert created["defaultRole"] == "analyst"
    api = httpx.AsyncClient(transport=httpx.ASGITransport(app=gw.app, client=(CLIENT_IP, 40000)), base_url=GATEWAY)
    async with api:
        listed = (await gql(api, CONNECTIONS, token=gw.owner_token)).json()
    assert listed["data"]["organization"]["ssoConnections"] == [
        {
            "id": created["id"],
            "kind": "oidc",
            "enabled": True,
            "issuer": rogue.issuer,
            "defaultRole": "analyst",
            "jitProvisioning": True,
            "allowedDomains": ["acme.test"],
        }
    ]
    stored = sql(database_url, "SELECT client_secret_encrypted FROM sso_connections")[0][0]
    assert CLIENT_SECRET not in stored
    assert gw.app.state.services.oidc_secrets.decrypt(stored) == CLIENT_SECRET
    # configuring again replaces the one connection
    await configure_rogue(gw, rogue, defaultRole="viewer")
    assert sql(database_url, "SELECT count(*), min(default_role) FROM sso_connections")[0] == (1, "viewer")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("issuer", "http://idp.example.com"),
        ("issuer", "ftp://127.0.0.1/"),
        ("issuer", "https://user:pw@idp.example.com"),
        ("scopes", ["email", "profile"]),
        ("clientId", ""),
        ("clientSecret", ""),
        ("defaultRole", "no-such-role"),
        ("roleMapping", {"admins": "no-such-role"}),
        ("roleMapping", ["not", "an", "object"]),
        ("allowedDomains", ["not a domain"]),
    ],
)
async def test_bad_configuration_is_refused(
    gw: Gateway, rogue: RogueProvider, database_url: str, field: str, value: object
) -> None:
    fields = {"issuer": rogue.issuer, "clientId": CLIENT_ID, "clientSecret": CLIENT_SECRET, field: value}
    body = await configure(gw, fields.pop("issuer"), fields.pop("clientId"), fields.pop("clientSecret"), **fields)
    assert error_codes(body) == ["BAD_USER_INPUT"], body
    assert sql(database_url, "SELECT count(*) FROM sso_connections")[0][0] == 0


async def test_unreachable_issuer_is_refused(gw: Gateway, database_url: str) -> None:
    from tests.services import free_port

    body = await configure(gw, f"http://127.0.0.1:{free_port()}", CLIENT_ID, CLIENT_SECRET)
    assert error_codes(body) == ["BAD_USER_INPUT"]
    assert sql(database_url, "SELECT count(*) FROM sso_connections")[0][0] == 0


async def test_mapping_cannot_grant_more_than_the_caller_holds(
    database_url: str, signing_key: str, rogue: RogueProvider
) -> None:
    from tests.gateway.oidc.conftest import running_gateway

    async with running_gateway(database_url, signing_key) as gw:
        admin = await make_tenant(database_url, slug="beta", email="admin@beta.test", role="admin")
        api = httpx.AsyncClient(transport=httpx.ASGITransport(app=gw.app, client=(CLIENT_IP, 40000)), base_url=GATEWAY)
        async with api:
            token = (await login(api, admin))["accessToken"]
            gw.owner_token = token
            body = await configure(gw, rogue.issuer, CLIENT_ID, CLIENT_SECRET, roleMapping={"g": "owner"})
            assert error_codes(body) == ["FORBIDDEN"]
            assert (await configure(gw, rogue.issuer, CLIENT_ID, CLIENT_SECRET, roleMapping={"g": "admin"})).get("data")


async def test_a_viewer_cannot_configure_or_list(database_url: str, signing_key: str, rogue: RogueProvider) -> None:
    from tests.gateway.oidc.conftest import running_gateway

    async with running_gateway(database_url, signing_key) as gw:
        viewer = await make_tenant(database_url, slug="gamma", email="v@gamma.test", role="viewer")
        api = httpx.AsyncClient(transport=httpx.ASGITransport(app=gw.app, client=(CLIENT_IP, 40000)), base_url=GATEWAY)
        async with api:
            token = (await login(api, viewer))["accessToken"]
            gw.owner_token = token
            assert error_codes(await configure(gw, rogue.issuer, CLIENT_ID, CLIENT_SECRET)) == ["FORBIDDEN"]
            listed = (await gql(api, CONNECTIONS, token=token)).json()
            assert error_codes(listed) == ["FORBIDDEN"]
