"""Audit streams through GraphQL: creating (a webhook's secret once), listing without secrets, changing,
enabling, disabling, deleting, who may, the inputs refused, and the destinations the gateway refuses to send
to (C-132)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from gateway.app import create_app
from tests.audit_stream_helpers import CREATE_STREAM, STREAMS, create_stream, streams
from tests.conftest import Tenant, error_codes, gql, login, make_settings, make_tenant, running, sql
from tests.invitations import join
from tests.policy_rows import set_policy
from tests.schema.test_fresh_auth import fresh_auth_refusal, signed_in_ago

UPDATE = "mutation($id: ID!, $i: AuditStreamUpdateInput!) { updateAuditStream(id: $id, input: $i) { url state } }"
DISABLE = "mutation($id: ID!) { disableAuditStream(id: $id) { state disabledAt } }"
ENABLE = "mutation($id: ID!) { enableAuditStream(id: $id) { state disabledAt } }"
DELETE = "mutation($id: ID!) { deleteAuditStream(id: $id) }"
REFUSED = "url is not an address the gateway may send to (https or syslog+tls, and a public host)"
PROD = {"env": "prod", "api_key_pepper": "p" * 40, "cookie_secret": "c" * 40, "data_encryption_key": "k" * 40}


async def create(client: httpx.AsyncClient, bearer: str, **i: Any) -> dict[str, Any]:
    return (await gql(client, CREATE_STREAM, {"i": i}, token=bearer)).json()  # type: ignore[no-any-return]


async def test_create_list_change_disable_enable_delete(
    client: httpx.AsyncClient, tenant: Tenant, database_url: str
) -> None:
    owner = (await login(client, tenant))["accessToken"]
    stream_id, secret = await create_stream(client, owner, "WEBHOOK", "https://siem.example.com/in")
    assert secret is not None
    assert secret.startswith("whsec_")
    [listed] = await streams(client, owner)
    assert listed["kind"] == "WEBHOOK"
    assert listed["state"] == "ACTIVE"
    assert listed["url"] == "https://siem.example.com/in"
    assert listed["deliveredSequence"] == 0  # from the oldest stored entry
    assert secret not in str(listed)
    assert secret not in sql(database_url, "SELECT secret_encrypted FROM audit_streams")[0][0]

    body = await gql(client, UPDATE, {"id": stream_id, "i": {"url": "https://siem2.example.com/in"}}, token=owner)
    assert body.json()["data"]["updateAuditStream"] == {"url": "https://siem2.example.com/in", "state": "ACTIVE"}
    disabled = (await gql(client, DISABLE, {"id": stream_id}, token=owner)).json()["data"]["disableAuditStream"]
    assert disabled["state"] == "DISABLED"
    enabled = (await gql(client, ENABLE, {"id": stream_id}, token=owner)).json()["data"]["enableAuditStream"]
    assert enabled == {"state": "ACTIVE", "disabledAt": None}
    assert (await gql(client, DELETE, {"id": stream_id}, token=owner)).json()["data"] == {"deleteAuditStream": True}
    assert await streams(client, owner) == []
    actions = sql(database_url, "SELECT action FROM audit_log WHERE resource_type = 'audit_stream' ORDER BY sequence")
    assert [a[0] for a in actions] == [
        "audit_stream_created",
        "audit_stream_updated",
        "audit_stream_disabled",
        "audit_stream_enabled",
        "audit_stream_deleted",
    ]


@pytest.mark.parametrize(
    ("kind", "url", "token", "field"),
    [
        ("SYSLOG", "https://siem.example.com/in", None, "url"),  # the kind's scheme is syslog(+tls)
        ("WEBHOOK", "syslog+tls://siem.example.com:6514", None, "url"),
        ("JSON_LINES", "ftp://siem.example.com/in", None, "url"),
        ("SYSLOG", "syslog+tls://siem.example.com:6514/path", None, "url"),
        ("WEBHOOK", "https://user:pass@siem.example.com/in", None, "url"),
        ("WEBHOOK", "not a url", None, "url"),
        ("SPLUNK_HEC", "https://splunk.example.com:8088", None, "token"),  # HEC needs its token
        ("WEBHOOK", "https://siem.example.com/in", "a-token", "token"),  # the others take none
    ],
)
async def test_invalid_kind_url_or_token_is_refused(
    client: httpx.AsyncClient, tenant: Tenant, database_url: str, kind: str, url: str, token: str | None, field: str
) -> None:
    owner = (await login(client, tenant))["accessToken"]
    body = await create(client, owner, kind=kind, url=url, token=token)
    assert error_codes(body) == ["BAD_USER_INPUT"], body
    assert body["errors"][0]["extensions"]["field"] == field
    assert sql(database_url, "SELECT count(*) FROM audit_streams")[0][0] == 0


async def test_an_unknown_kind_is_refused_by_the_schema(client: httpx.AsyncClient, tenant: Tenant) -> None:
    owner = (await login(client, tenant))["accessToken"]
    body = await create(client, owner, kind="KAFKA", url="https://siem.example.com/in")
    assert body["errors"]
    assert "data" not in body or body["data"] is None


@pytest.fixture
async def prod(database_url: str, signing_key: str) -> Any:
    app = create_app(make_settings(database_url, signing_key, **PROD))
    async with running(app) as client:
        yield client


@pytest.mark.parametrize(
    ("kind", "url"),
    [
        ("WEBHOOK", "https://127.0.0.1/in"),
        ("JSON_LINES", "https://10.1.2.3/in"),
        ("SPLUNK_HEC", "https://192.168.1.1:8088"),
        ("WEBHOOK", "https://[::1]/in"),
        ("WEBHOOK", "https://169.254.169.254/latest"),
        ("SYSLOG", "syslog+tls://127.0.0.1:6514"),
        ("SYSLOG", "syslog+tls://172.16.0.1"),
        ("SYSLOG", "syslog://siem.example.com:514"),  # prod sends only over TLS
        ("JSON_LINES", "http://siem.example.com/in"),
    ],
)
async def test_c132_prod_refuses_destinations_in_its_own_network(
    prod: httpx.AsyncClient, tenant: Tenant, database_url: str, kind: str, url: str
) -> None:
    owner = (await login(prod, tenant))["accessToken"]
    token = "hec" if kind == "SPLUNK_HEC" else None
    body = await create(prod, owner, kind=kind, url=url, token=token)
    assert error_codes(body) == ["BAD_USER_INPUT"], body
    assert body["errors"][0]["message"] == REFUSED
    assert sql(database_url, "SELECT count(*) FROM audit_streams")[0][0] == 0


async def test_c132_the_allow_list_names_on_premises_destinations(
    database_url: str, signing_key: str, tenant: Tenant
) -> None:
    app = create_app(make_settings(database_url, signing_key, **PROD, outbound_allowed_hosts="10.20.0.0/16"))
    async with running(app) as client:
        owner = (await login(client, tenant))["accessToken"]
        assert (await create_stream(client, owner, "SYSLOG", "syslog+tls://10.20.1.2:6514"))[0]
        body = await create(client, owner, kind="SYSLOG", url="syslog+tls://10.21.1.2:6514")
        assert error_codes(body) == ["BAD_USER_INPUT"]


async def test_a_member_without_security_manage_may_not(
    client: httpx.AsyncClient, tenant: Tenant, database_url: str
) -> None:
    owner = (await login(client, tenant))["accessToken"]
    joined = await join(client, database_url, owner, "analyst@acme.test", "analyst", "member passphrase long enough")
    member = joined.access_token
    body = await create(client, member, kind="WEBHOOK", url="https://siem.example.com/in")
    assert error_codes(body) == ["FORBIDDEN"]
    listed = (await gql(client, STREAMS, token=member)).json()
    assert error_codes(listed) == ["FORBIDDEN"]


async def test_another_tenants_stream_is_not_found(
    client: httpx.AsyncClient, tenant: Tenant, database_url: str
) -> None:
    owner = (await login(client, tenant))["accessToken"]
    stream_id, _ = await create_stream(client, owner, "JSON_LINES", "https://siem.example.com/in")
    other = await make_tenant(database_url, slug="globex", email="owner@globex.test")
    intruder = (await login(client, other))["accessToken"]
    for document in (DISABLE, ENABLE, DELETE):
        assert error_codes((await gql(client, document, {"id": stream_id}, token=intruder)).json()) == ["NOT_FOUND"]
    assert await streams(client, intruder) == []
    assert len(await streams(client, owner)) == 1


async def test_c142_creating_a_stream_needs_a_fresh_sign_in(
    app: Any, client: httpx.AsyncClient, tenant: Tenant, database_url: str
) -> None:
    """createAuditStream is a sensitive mutation: under a fresh-authentication rule an old sign-in writes
    nothing."""
    await set_policy(database_url, tenant.org_id, fresh_auth_minutes=5)
    with signed_in_ago(app, 6 * 60):
        old = (await login(client, tenant))["accessToken"]
    refused = await gql(client, CREATE_STREAM, {"i": {"kind": "WEBHOOK", "url": "https://s.example.com/"}}, token=old)
    fresh_auth_refusal(refused, 5)
    assert sql(database_url, "SELECT count(*) FROM audit_streams")[0][0] == 0
