"""`me` answers every signed-in caller: a person (`kind: USER`, `user` set) or an API key (`kind: API_KEY`,
`apiKey` set, `user` null), as `@authenticated` promises in docs/authorization.md."""

from __future__ import annotations

import httpx

from tests.conftest import Tenant, gql, login

ME = """{ me { kind user { email } apiKey { id name scopes } organization { slug } role permissions authMethod
             sessions { id } } }"""
CREATE = """mutation($input: CreateApiKeyInput!) { createApiKey(input: $input) { secret apiKey { id } } }"""


async def test_me_for_a_person_names_the_user(client: httpx.AsyncClient, tenant: Tenant) -> None:
    token = (await login(client, tenant))["accessToken"]
    r = await gql(client, ME, token=token)
    assert r.status_code == 200, r.text
    me = r.json()["data"]["me"]
    assert me["kind"] == "USER"
    assert me["user"] == {"email": tenant.email}
    assert me["apiKey"] is None
    assert me["authMethod"] == "password"
    assert len(me["sessions"]) == 1


async def test_me_for_an_api_key_names_the_key_not_a_person(client: httpx.AsyncClient, tenant: Tenant) -> None:
    token = (await login(client, tenant))["accessToken"]
    created = (
        await gql(client, CREATE, {"input": {"name": "reader", "scopes": ["organization:read"]}}, token=token)
    ).json()["data"]["createApiKey"]
    r = await gql(client, ME, headers={"X-API-Key": created["secret"]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert "errors" not in body, body
    me = body["data"]["me"]
    assert me["kind"] == "API_KEY"
    assert me["user"] is None
    assert me["apiKey"] == {"id": created["apiKey"]["id"], "name": "reader", "scopes": ["organization:read"]}
    assert me["organization"] == {"slug": tenant.slug}
    assert me["permissions"] == ["organization:read"]
    assert me["authMethod"] == "api_key"
    assert me["sessions"] == []


async def test_me_for_an_anonymous_caller_is_unauthenticated(client: httpx.AsyncClient) -> None:
    body = (await gql(client, "{ me { kind } }")).json()
    assert body["data"] is None
    assert [e["extensions"]["code"] for e in body["errors"]] == ["UNAUTHENTICATED"]
