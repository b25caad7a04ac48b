"""Webhook subscriptions through GraphQL: creating (the secret once), listing, deleting, who may, and the
URLs the gateway refuses to send to (C-132)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from standardwebhooks import Webhook as StandardWebhook

from gateway.app import create_app
from tests.conftest import Tenant, error_codes, gql, login, make_settings, make_tenant, running, sql
from tests.invitations import join
from tests.webhook_helpers import CREATE_WEBHOOK, create_webhook, webhooks

DELETE = "mutation($id: ID!) { deleteWebhook(id: $id) }"
REFUSED = "url is not an address the gateway may send to (https, and a public host)"


async def test_create_list_and_delete(client: httpx.AsyncClient, tenant: Tenant, database_url: str) -> None:
    owner = (await login(client, tenant))["accessToken"]
    variables = {
        "i": {"url": "https://hooks.example.com/portcullis", "events": ["MFA_DISABLED"], "description": "SIEM"}
    }
    body = (await gql(client, CREATE_WEBHOOK, variables, token=owner)).json()
    created = body["data"]["createWebhook"]
    assert created["secret"].startswith("whsec_")
    StandardWebhook(created["secret"])  # a secret the receiver's library takes as it is
    assert created["webhook"]["events"] == ["MFA_DISABLED"]
    assert created["webhook"]["enabled"] is True
    [listed] = await webhooks(client, owner)
    assert listed["id"] == created["webhook"]["id"]
    assert listed["deliveries"] == []
    assert "secret" not in str(listed)
    [stored] = sql(database_url, "SELECT secret_encrypted FROM webhooks")
    assert created["secret"] not in stored[0]

    assert (await gql(client, DELETE, {"id": listed["id"]}, token=owner)).json()["data"] == {"deleteWebhook": True}
    assert await webhooks(client, owner) == []
    assert error_codes((await gql(client, DELETE, {"id": listed["id"]}, token=owner)).json()) == ["NOT_FOUND"]
    actions = sql(
        database_url,
        "SELECT action FROM audit_log WHERE action LIKE 'webhook_%' AND result = 'success' ORDER BY sequence",
    )
    assert [a[0] for a in actions] == ["webhook_created", "webhook_deleted"]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("url", "ftp://hooks.example.com/"),
        ("url", ""),
        ("url", "https://"),
        ("url", "https://hooks.example.com/" + "x" * 2100),
        ("url", "https://hooks.example.com/a b"),
        ("url", "https://hooks.example.com:99999/"),
        ("url", "https://user:secret@hooks.example.com/"),
        ("events", []),
        ("description", "d" * 201),
    ],
)
async def test_bad_input_is_refused(
    client: httpx.AsyncClient, tenant: Tenant, database_url: str, field: str, value: Any
) -> None:
    owner = (await login(client, tenant))["accessToken"]
    given = {"url": "https://hooks.example.com/", "events": ["MFA_DISABLED"], field: value}
    body = (await gql(client, CREATE_WEBHOOK, {"i": given}, token=owner)).json()
    assert error_codes(body) == ["BAD_USER_INPUT"], body
    assert sql(database_url, "SELECT count(*) FROM webhooks")[0][0] == 0


async def test_who_may_and_other_tenants(client: httpx.AsyncClient, tenant: Tenant, database_url: str) -> None:
    owner = (await login(client, tenant))["accessToken"]
    viewer = await join(client, database_url, owner, "viewer@acme.test", "viewer", "member passphrase long enough")
    hook_id, _ = await create_webhook(client, owner, "https://hooks.example.com/a")
    refused = (
        await gql(
            client,
            CREATE_WEBHOOK,
            {"i": {"url": "https://x.example.com/", "events": ["MFA_DISABLED"]}},
            token=viewer.access_token,
        )
    ).json()
    assert error_codes(refused) == ["FORBIDDEN"]
    assert error_codes((await gql(client, DELETE, {"id": hook_id}, token=viewer.access_token)).json()) == ["FORBIDDEN"]
    seen = (await gql(client, "{ organization { webhooks { id } } }", token=viewer.access_token)).json()
    assert error_codes(seen) == ["FORBIDDEN"]

    other = await make_tenant(database_url, slug="globex", email="owner@globex.test")
    theirs = (await login(client, other))["accessToken"]
    assert error_codes((await gql(client, DELETE, {"id": hook_id}, token=theirs)).json()) == ["NOT_FOUND"]
    assert await webhooks(client, theirs) == []
    assert len(await webhooks(client, owner)) == 1


PROD = {
    "env": "prod",
    "api_key_pepper": "p" * 40,
    "cookie_secret": "c" * 40,
    "data_encryption_key": "k" * 40,
}


@pytest.fixture
async def prod(database_url: str, signing_key: str) -> Any:
    app = create_app(make_settings(database_url, signing_key, **PROD))
    async with running(app) as client:
        yield client


@pytest.mark.parametrize(
    "url",
    [
        "https://127.0.0.1/hook",
        "https://127.8.9.10:8443/hook",
        "https://localhost/hook",
        "https://10.1.2.3/hook",
        "https://172.16.0.1/hook",
        "https://192.168.1.1/hook",
        "https://100.64.0.1/hook",
        "https://169.254.169.254/latest/meta-data",
        "https://[::1]/hook",
        "https://[fd00::1]/hook",
        "https://[::ffff:127.0.0.1]/hook",
        "https://0.0.0.0/hook",
        "http://hooks.example.com/hook",  # prod sends only over https
    ],
)
async def test_c132_prod_refuses_addresses_of_its_own_network(
    prod: httpx.AsyncClient, tenant: Tenant, database_url: str, url: str
) -> None:
    owner = (await login(prod, tenant))["accessToken"]
    body = (await gql(prod, CREATE_WEBHOOK, {"i": {"url": url, "events": ["MFA_DISABLED"]}}, token=owner)).json()
    assert error_codes(body) == ["BAD_USER_INPUT"], body
    assert body["errors"][0]["message"] == REFUSED  # one answer, whatever the reason
    assert sql(database_url, "SELECT count(*) FROM webhooks")[0][0] == 0


async def test_c132_the_allow_list_names_on_premises_receivers(
    database_url: str, signing_key: str, tenant: Tenant
) -> None:
    app = create_app(make_settings(database_url, signing_key, **PROD, outbound_allowed_hosts="10.20.0.0/16"))
    async with running(app) as client:
        owner = (await login(client, tenant))["accessToken"]
        hook_id, _ = await create_webhook(client, owner, "https://10.20.1.2/siem", ["MFA_DISABLED"])
        assert hook_id
        body = (
            await gql(
                client, CREATE_WEBHOOK, {"i": {"url": "https://10.21.1.2/", "events": ["MFA_DISABLED"]}}, token=owner
            )
        ).json()
        assert error_codes(body) == ["BAD_USER_INPUT"]
