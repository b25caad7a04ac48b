"""configureSaml and Organization.ssoConnections, on SQLite and PostgreSQL: IdP metadata parsed safely
(C-072, C-073 for pasted metadata), settings checked, one SAML connection per organization."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from tests.conftest import Tenant, error_codes, gql, login, make_tenant, sql
from tests.saml_idp import TestIdp

CONFIGURE = """
mutation C($input: SamlConnectionInput!) {
  configureSaml(input: $input) { id kind enabled issuer entityId defaultRole jitProvisioning allowedDomains }
}
"""
CONNECTIONS = "{ organization { ssoConnections { id kind enabled entityId defaultRole allowedDomains } } }"


async def configure(client: httpx.AsyncClient, token: str, metadata: str, **values: Any) -> dict[str, Any]:
    r = await gql(client, CONFIGURE, {"input": {"idpMetadataXml": metadata, **values}}, token=token)
    return r.json()  # type: ignore[no-any-return]


async def test_configure_saml_from_idp_metadata(
    client: httpx.AsyncClient, tenant: Tenant, idp: TestIdp, database_url: str
) -> None:
    token = (await login(client, tenant))["accessToken"]
    body = await configure(
        client,
        token,
        idp.metadata,
        roleMapping={"engineering": "manager"},
        defaultRole="analyst",
        allowedDomains=["Acme.test"],
        jitProvisioning=False,
    )
    assert body["data"]["configureSaml"] == {
        "id": body["data"]["configureSaml"]["id"],
        "kind": "saml",
        "enabled": True,
        "issuer": idp.entity_id,
        "entityId": idp.entity_id,
        "defaultRole": "analyst",
        "jitProvisioning": False,
        "allowedDomains": ["acme.test"],
    }
    [(config, role_mapping)] = sql(database_url, "SELECT config, role_mapping FROM sso_connections")
    assert '"sso_url": "https://idp.example.org/sso"' in str(config) or "idp.example.org/sso" in str(config)
    assert idp.keys.cert_b64[:40] in str(config)
    assert "engineering" in str(role_mapping)
    # configuring again replaces the settings of the same connection
    again = await configure(client, token, idp.metadata, enabled=False)
    assert again["data"]["configureSaml"]["id"] == body["data"]["configureSaml"]["id"]
    listed = (await gql(client, CONNECTIONS, token=token)).json()["data"]["organization"]["ssoConnections"]
    assert listed == [
        {
            "id": body["data"]["configureSaml"]["id"],
            "kind": "saml",
            "enabled": False,
            "entityId": idp.entity_id,
            "defaultRole": "viewer",
            "allowedDomains": [],
        }
    ]


@pytest.mark.parametrize(
    "metadata",
    [
        '<?xml version="1.0"?><!DOCTYPE m [<!ENTITY x SYSTEM "file:///etc/passwd">]><m>&x;</m>',
        '<!DOCTYPE m [<!ENTITY x SYSTEM "http://127.0.0.1:9/">]><m>&x;</m>',
    ],
)
async def test_c072_metadata_with_external_entities(
    client: httpx.AsyncClient, tenant: Tenant, metadata: str, database_url: str
) -> None:
    token = (await login(client, tenant))["accessToken"]
    body = await configure(client, token, metadata)
    assert error_codes(body) == ["BAD_USER_INPUT"]
    assert "root:" not in str(body)
    assert sql(database_url, "SELECT count(*) FROM sso_connections")[0][0] == 0


async def test_c073_metadata_billion_laughs_and_oversize(
    client: httpx.AsyncClient, tenant: Tenant, idp: TestIdp
) -> None:
    token = (await login(client, tenant))["accessToken"]
    entities = '<!ENTITY a0 "lol">' + "".join(
        f'<!ENTITY a{i} "{("&a" + str(i - 1) + ";") * 10}">' for i in range(1, 10)
    )
    started = time.monotonic()
    assert error_codes(await configure(client, token, f"<!DOCTYPE m [{entities}]><m>&a9;</m>")) == ["BAD_USER_INPUT"]
    end = idp.metadata.rindex("</")
    big = idp.metadata[:end] + "<!--" + "x" * 300_000 + "-->" + idp.metadata[end:]
    assert error_codes(await configure(client, token, big)) == ["BAD_USER_INPUT"]
    assert time.monotonic() - started < 3.0


async def test_metadata_without_what_a_login_needs(client: httpx.AsyncClient, tenant: Tenant, idp: TestIdp) -> None:
    token = (await login(client, tenant))["accessToken"]
    no_cert = idp.metadata.replace(idp.keys.cert_b64, "")
    no_redirect = idp.metadata.replace("HTTP-Redirect", "HTTP-POST")
    for metadata in ("not xml", "<a/>", no_cert, no_redirect):
        body = await configure(client, token, metadata)
        assert error_codes(body) == ["BAD_USER_INPUT"], body
        assert body["errors"][0]["extensions"]["field"] == "idpMetadataXml"


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"roleMapping": {"engineering": "emperor"}}, "roleMapping"),
        ({"roleMapping": {"engineering": 3}}, "roleMapping"),
        ({"roleMapping": ["engineering"]}, "roleMapping"),
        ({"defaultRole": "emperor"}, "role"),
        ({"allowedDomains": ["not a domain"]}, "allowedDomains"),
        ({"emailAttribute": ""}, "emailAttribute"),
    ],
)
async def test_bad_connection_settings(
    client: httpx.AsyncClient, tenant: Tenant, idp: TestIdp, values: dict[str, Any], field: str, database_url: str
) -> None:
    token = (await login(client, tenant))["accessToken"]
    body = await configure(client, token, idp.metadata, **values)
    assert error_codes(body) == ["BAD_USER_INPUT"], body
    assert body["errors"][0]["extensions"]["field"] == field
    assert sql(database_url, "SELECT count(*) FROM sso_connections")[0][0] == 0


async def test_sso_settings_need_their_scopes(client: httpx.AsyncClient, database_url: str, idp: TestIdp) -> None:
    viewer = await make_tenant(database_url, slug="viewers", email="v@viewers.test", role="viewer")
    token = (await login(client, viewer))["accessToken"]
    assert error_codes(await configure(client, token, idp.metadata)) == ["FORBIDDEN"]
    body = (await gql(client, CONNECTIONS, token=token)).json()
    assert error_codes(body) == ["FORBIDDEN"]
    assert sql(database_url, "SELECT count(*) FROM sso_connections")[0][0] == 0


async def test_connections_of_another_tenant_stay_apart(
    client: httpx.AsyncClient, tenant: Tenant, database_url: str, idp: TestIdp
) -> None:
    other = await make_tenant(database_url, slug="other", email="owner@other.test")
    await configure(client, (await login(client, other))["accessToken"], idp.metadata)
    token = (await login(client, tenant))["accessToken"]
    assert (await gql(client, CONNECTIONS, token=token)).json()["data"]["organization"]["ssoConnections"] == []
