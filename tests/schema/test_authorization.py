"""Field authorization decided before execution: every selection shape, partial results, rejection."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.app import create_app
from schema import auth as auth_schema
from tests.conftest import Tenant, cost_of, error_codes, gql, login, make_settings, make_tenant, running

FORBIDDEN_BILLING = {"code": "FORBIDDEN", "requiredScopes": [["billing:read"]]}


@pytest.fixture
async def viewer(database_url: str) -> Tenant:
    return await make_tenant(database_url, slug="initech", email="viewer@initech.test", role="viewer")


@pytest.mark.parametrize(
    ("query", "path", "expected_data"),
    [
        (
            "{ organization { slug billingEmail } }",
            ["organization", "billingEmail"],
            {"organization": {"slug": "initech", "billingEmail": None}},
        ),
        (
            "{ organization { slug b: billingEmail } }",
            ["organization", "b"],
            {"organization": {"slug": "initech", "b": None}},
        ),
        (
            "fragment F on Organization { billingEmail } { organization { slug ...F } }",
            ["organization", "billingEmail"],
            {"organization": {"slug": "initech", "billingEmail": None}},
        ),
        (
            "{ organization { slug ... on Organization { billingEmail } } }",
            ["organization", "billingEmail"],
            {"organization": {"slug": "initech", "billingEmail": None}},
        ),
        (
            "{ me { role organization { billingEmail } } }",
            ["me", "organization", "billingEmail"],
            {"me": {"role": "viewer", "organization": {"billingEmail": None}}},
        ),
        (
            "{ organization { children { slug } billingEmail billingEmail } }",
            ["organization", "billingEmail"],
            {"organization": {"children": [], "billingEmail": None}},
        ),
    ],
    ids=["direct", "alias", "fragment", "inline-fragment", "nested-path", "merged"],
)
async def test_denied_field_is_null_with_forbidden_at_its_path(
    client, viewer: Tenant, query: str, path: list[str], expected_data: dict[str, Any]
) -> None:
    """C-021: every selection shape of a guarded field gives null + FORBIDDEN there, the rest intact."""
    auth = await login(client, viewer)
    body = (await gql(client, query, token=auth["accessToken"])).json()
    assert body["data"] == expected_data
    [error] = body["errors"]
    assert error["path"] == path
    assert error["extensions"] == FORBIDDEN_BILLING


async def test_a_permitted_caller_gets_the_field(client, tenant: Tenant) -> None:
    auth = await login(client, tenant)
    body = (await gql(client, "{ organization { b: billingEmail } }", token=auth["accessToken"])).json()
    assert body == {"data": {"organization": {"b": None}}, "extensions": {"cost": cost_of(1)}}


async def test_denied_resolver_never_runs(client, viewer: Tenant, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    async def spy(ctx: Any, user_id: str) -> bool:
        calls.append(user_id)
        return True

    monkeypatch.setattr(auth_schema.service, "unlock_user", spy)
    auth = await login(client, viewer)
    body = (await gql(client, 'mutation { u1: unlockUser(userId: "x") }', token=auth["accessToken"])).json()
    assert error_codes(body) == ["FORBIDDEN"]
    assert body["errors"][0]["path"] == ["u1"]
    assert body["errors"][0]["extensions"]["requiredScopes"] == [["members:manage"]]
    assert calls == []


async def test_anonymous_is_unauthenticated_at_the_field(client) -> None:
    body = (await gql(client, "{ permissions }")).json()
    assert body["data"] is None
    assert error_codes(body) == ["UNAUTHENTICATED"]


async def test_decisions_are_cached_per_document_and_permissions(app, client, viewer: Tenant, tenant: Tenant) -> None:
    authorizer = app.state.schema.authorizer
    query = "{ organization { slug billingEmail } }"
    as_viewer = await login(client, viewer)
    as_owner = await login(client, tenant)
    before = len(authorizer._cache)
    for _ in range(3):
        await gql(client, query, token=as_viewer["accessToken"])
    assert len(authorizer._cache) == before + 1
    await gql(client, query, token=as_owner["accessToken"])
    assert len(authorizer._cache) == before + 2


async def test_reject_unauthorized_refuses_the_whole_operation(
    database_url: str, signing_key: str, viewer: Tenant, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []

    async def spy(ctx: Any, user_id: str) -> bool:
        calls.append(user_id)
        return True

    monkeypatch.setattr(auth_schema.service, "unlock_user", spy)
    app = create_app(make_settings(database_url, signing_key, reject_unauthorized=True))
    async with running(app) as client:
        auth = await login(client, viewer)
        r = await gql(client, "{ organization { slug billingEmail } }", token=auth["accessToken"])
        assert r.status_code == 403
        body = r.json()
        assert body.get("data") is None
        assert body["errors"][0]["path"] == ["organization", "billingEmail"]
        assert body["errors"][0]["extensions"] == FORBIDDEN_BILLING
        r = await gql(client, 'mutation { unlockUser(userId: "x") }', token=auth["accessToken"])
        assert r.status_code == 403
        assert calls == []
        # what the caller may see still answers in full
        ok = await gql(client, "{ organization { slug } }", token=auth["accessToken"])
        assert ok.json() == {"data": {"organization": {"slug": "initech"}}, "extensions": {"cost": cost_of(1)}}


async def test_same_document_across_tenants_and_roles_shares_nothing(client, tenant: Tenant, viewer: Tenant) -> None:
    """C-108: the same query from tenant A's owner, then tenant B's viewer: B gets only B, under B's rules."""
    query = "{ organization { slug billingEmail } }"
    a = await login(client, tenant)
    b = await login(client, viewer)
    for _ in range(2):
        first = (await gql(client, query, token=a["accessToken"])).json()
        second = (await gql(client, query, token=b["accessToken"])).json()
        assert first == {
            "data": {"organization": {"slug": "acme", "billingEmail": None}},
            "extensions": {"cost": cost_of(1)},
        }
        assert second["data"] == {"organization": {"slug": "initech", "billingEmail": None}}
        assert second["errors"][0]["extensions"] == FORBIDDEN_BILLING
