"""The caller's organization: its own, the ones below it, and nothing of another tenant."""

from __future__ import annotations

from tests.conftest import Tenant, error_codes, gql, login, make_tenant

ORG = "query($slug: String) { organization(slug: $slug) { id slug name plan createdAt children { slug } } }"


async def test_own_organization_by_default(client, tenant: Tenant) -> None:
    auth = await login(client, tenant)
    org = (await gql(client, ORG, token=auth["accessToken"])).json()["data"]["organization"]
    assert org["id"] == tenant.org_id
    assert org["slug"] == "acme"
    assert org["plan"] == "PROFESSIONAL"
    assert org["createdAt"].endswith("+00:00")


async def test_children_are_reachable_by_slug(client, database_url, tenant: Tenant) -> None:
    await make_tenant(database_url, slug="acme-eu", email="eu@acme.test", parent_id=tenant.org_id)
    auth = await login(client, tenant)
    org = (await gql(client, ORG, token=auth["accessToken"])).json()["data"]["organization"]
    assert [c["slug"] for c in org["children"]] == ["acme-eu"]
    child = (await gql(client, ORG, {"slug": "acme-eu"}, token=auth["accessToken"])).json()["data"]
    assert child["organization"]["slug"] == "acme-eu"


async def test_another_tenant_answers_like_nothing(client, database_url, tenant: Tenant) -> None:
    """C-098: another tenant's slug answers exactly like a slug that does not exist."""
    await make_tenant(database_url, slug="globex", email="owner@globex.test")
    auth = await login(client, tenant)
    other = (await gql(client, ORG, {"slug": "globex"}, token=auth["accessToken"])).json()
    missing = (await gql(client, ORG, {"slug": "no-such-org"}, token=auth["accessToken"])).json()
    assert error_codes(other) == ["NOT_FOUND"]
    assert other["errors"][0]["message"] == missing["errors"][0]["message"]
    assert other["data"] == missing["data"] == {"organization": None}


async def test_parent_is_not_visible_from_a_child(client, database_url, tenant: Tenant) -> None:
    child = await make_tenant(database_url, slug="acme-eu", email="eu@acme.test", parent_id=tenant.org_id)
    auth = await login(client, child)
    body = (await gql(client, "{ organization { slug parent { slug } } }", token=auth["accessToken"])).json()
    assert body["data"]["organization"] == {"slug": "acme-eu", "parent": None}
    assert error_codes((await gql(client, ORG, {"slug": "acme"}, token=auth["accessToken"])).json()) == ["NOT_FOUND"]


async def test_billing_email_needs_billing_read(client, database_url) -> None:
    viewer = await make_tenant(database_url, slug="initech", email="viewer@initech.test", role="viewer")
    auth = await login(client, viewer)
    body = (await gql(client, "{ organization { slug billingEmail } }", token=auth["accessToken"])).json()
    assert body["data"] == {"organization": {"slug": "initech", "billingEmail": None}}
    [error] = body["errors"]
    assert error["path"] == ["organization", "billingEmail"]
    assert error["extensions"] == {"code": "FORBIDDEN", "requiredScopes": [["billing:read"]]}


async def test_anonymous_gets_unauthenticated(client) -> None:
    body = (await gql(client, "{ organization { slug } }")).json()
    assert error_codes(body) == ["UNAUTHENTICATED"]
    assert body["data"] == {"organization": None}


async def test_permissions_of_the_caller(client, database_url) -> None:
    analyst = await make_tenant(database_url, slug="umbrella", email="a@umbrella.test", role="analyst")
    auth = await login(client, analyst)
    body = (await gql(client, "{ permissions }", token=auth["accessToken"])).json()
    assert body["data"]["permissions"] == sorted(
        ["organization:read", "quotas:read", "reports:read", "reports:generate", "audit:read"]
    )
