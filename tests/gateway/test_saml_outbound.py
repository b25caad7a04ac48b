"""configureSaml reaches nothing the metadata names (C-132): the metadata is pasted text, and none of its
URLs (entity id, SingleSignOnService, AdditionalMetadataLocation, schema location) is fetched."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from gateway.app import create_app
from tests.conftest import CLIENT_IP, gql, login, make_settings, make_tenant
from tests.listeners import Listener, listening
from tests.saml_idp import TestIdp

CONFIGURE = """
mutation C($input: SamlConnectionInput!) { configureSaml(input: $input) { entityId } }
"""


@pytest.fixture
def inside() -> Iterator[Listener]:
    with listening() as listener:
        yield listener


async def test_c132_configure_saml_fetches_no_url_of_the_metadata(
    database_url: str, signing_key: str, inside: Listener
) -> None:
    base = f"http://127.0.0.1:{inside.port}"
    idp = TestIdp(entity_id=f"{base}/idp")
    try:
        metadata = idp.metadata.replace(
            "<ns0:EntityDescriptor ",
            '<ns0:EntityDescriptor xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
            f'xsi:schemaLocation="urn:oasis:names:tc:SAML:2.0:metadata {base}/schema.xsd" ',
            1,
        ).replace(
            "</ns0:EntityDescriptor>",
            f'<ns0:AdditionalMetadataLocation namespace="urn:oasis:names:tc:SAML:2.0:metadata">{base}/more'
            "</ns0:AdditionalMetadataLocation></ns0:EntityDescriptor>",
        )
    finally:
        idp.close()
    tenant = await make_tenant(database_url)
    app = create_app(make_settings(database_url, signing_key, public_url="https://gw.example.com", outbound_guard=True))
    transport = httpx.ASGITransport(app=app, client=(CLIENT_IP, 40000))
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="https://gw.example.com") as client,
    ):
        token = (await login(client, tenant))["accessToken"]
        body = (await gql(client, CONFIGURE, {"input": {"idpMetadataXml": metadata}}, token=token)).json()
        assert body.get("data") == {"configureSaml": {"entityId": f"{base}/idp"}}, body
        r = await client.get("/auth/sso/acme", follow_redirects=False)
        assert r.status_code in (302, 303), r.text
        assert r.headers["location"].startswith(f"{base}/sso?")  # the browser's to visit, not the gateway's
    assert inside.accepted == 0
