"""Plans of child organizations (C-128): a child's plan never exceeds its parent's, and only someone
holding `plan:manage` in the parent chooses or changes it; lowering a parent lowers the children above it.

Every test runs on SQLite and PostgreSQL (the `database_url` fixture)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import httpx

from tests.conftest import LOGIN, PASSWORD, Tenant, error_codes, gql, make_tenant, sql

CREATE = """mutation($input: CreateOrganizationInput!) { createOrganization(input: $input) { id slug plan } }"""
CHANGE_PLAN = "mutation($plan: Plan!) { changePlan(plan: $plan) { id plan } }"
CREATE_KEY = "mutation($input: CreateApiKeyInput!) { createApiKey(input: $input) { secret } }"


async def sign_in(client: httpx.AsyncClient, email: str, org: str) -> str:
    body = (await gql(client, LOGIN, {"email": email, "password": PASSWORD, "org": org})).json()
    assert body.get("data"), body
    return str(body["data"]["login"]["accessToken"])


async def member(database_url: str, org_id: str, email: str, role: str) -> str:
    """A person (with an organization of their own) who is also a member of `org_id` with `role`: the
    membership's id (their password is `PASSWORD`)."""
    home = await make_tenant(database_url, slug=email.split("@")[0] + "-home", email=email)
    membership_id = f"m-{home.user_id[:30]}"
    sql(
        database_url,
        "INSERT INTO memberships (id, organization_id, user_id, role, created_at) VALUES (:id, :o, :u, :r, :t)",
        id=membership_id,
        o=org_id,
        u=home.user_id,
        r=role,
        t=datetime(2026, 1, 1, tzinfo=UTC),
    )
    return membership_id


async def create_child(client: httpx.AsyncClient, token: str, slug: str, plan: str = "FREE") -> dict[str, Any]:
    return (
        await gql(client, CREATE, {"input": {"slug": slug, "name": slug.title(), "plan": plan}}, token=token)
    ).json()  # type: ignore[no-any-return]


def plan_of(database_url: str, slug: str) -> str:
    return str(sql(database_url, "SELECT plan FROM organizations WHERE slug = :s", s=slug)[0][0])


def plan_entries(database_url: str, org_id: str) -> list[dict[str, Any]]:
    """The plan changes made in the organization (refusals are audited too, with another result)."""
    found = sql(
        database_url,
        "SELECT details FROM audit_log WHERE chain = :c AND action = 'plan_changed' "
        "AND result = 'success' ORDER BY sequence",
        c=org_id,
    )
    return [d if isinstance(d, dict) else json.loads(d) for (d,) in found]


def assert_forbidden(body: dict[str, Any]) -> None:
    assert error_codes(body) == ["FORBIDDEN"], body
    assert body["errors"][0]["extensions"]["requiredScopes"] == [["plan:manage"]]
    assert body.get("data") is None


async def test_c128_an_admin_who_owns_a_child_they_created_cannot_raise_its_plan(
    client: httpx.AsyncClient, database_url: str, tenant: Tenant
) -> None:
    """The attack: an admin (no plan:manage) creates a FREE child, becomes its owner, and changePlans it."""
    await member(database_url, tenant.org_id, "admin@acme.test", "admin")
    admin = await sign_in(client, "admin@acme.test", "acme")
    child = (await create_child(client, admin, "acme-lab"))["data"]["createOrganization"]
    assert child["plan"] == "FREE"
    as_child_owner = await sign_in(client, "admin@acme.test", "acme-lab")
    me = (await gql(client, "{ me { role permissions } }", token=as_child_owner)).json()["data"]["me"]
    assert me["role"] == "owner"
    assert "plan:manage" in me["permissions"]
    for plan in ("ENTERPRISE", "STARTER"):
        assert_forbidden((await gql(client, CHANGE_PLAN, {"plan": plan}, token=as_child_owner)).json())
    assert plan_of(database_url, "acme-lab") == "free"
    assert plan_entries(database_url, child["id"]) == []


async def test_c128_creating_a_paid_child_needs_plan_manage_in_the_parent(
    client: httpx.AsyncClient, database_url: str, tenant: Tenant
) -> None:
    await member(database_url, tenant.org_id, "admin@acme.test", "admin")
    admin = await sign_in(client, "admin@acme.test", "acme")
    for plan in ("STARTER", "ENTERPRISE"):
        assert_forbidden(await create_child(client, admin, f"acme-{plan.lower()}", plan))
    assert sql(database_url, "SELECT count(*) FROM organizations WHERE parent_id = :p", p=tenant.org_id) == [(0,)]


async def test_c128_a_child_above_its_parents_plan_is_refused(
    client: httpx.AsyncClient, database_url: str, tenant: Tenant
) -> None:
    """The parent (acme) is on PROFESSIONAL: neither creation nor a change puts a child on ENTERPRISE."""
    owner = await sign_in(client, tenant.email, "acme")
    above = await create_child(client, owner, "acme-big", "ENTERPRISE")
    assert error_codes(above) == ["BAD_USER_INPUT"]
    assert above["errors"][0]["extensions"]["field"] == "plan"
    assert sql(database_url, "SELECT count(*) FROM organizations WHERE slug = 'acme-big'") == [(0,)]

    child = (await create_child(client, owner, "acme-eu", "PROFESSIONAL"))["data"]["createOrganization"]
    in_child = await sign_in(client, tenant.email, "acme-eu")
    refused = (await gql(client, CHANGE_PLAN, {"plan": "ENTERPRISE"}, token=in_child)).json()
    assert error_codes(refused) == ["BAD_USER_INPUT"]
    assert refused["errors"][0]["extensions"]["field"] == "plan"
    assert plan_of(database_url, "acme-eu") == "professional"
    assert plan_entries(database_url, child["id"]) == []


async def test_c128_the_parents_owner_raises_a_child_up_to_the_parents_plan(
    client: httpx.AsyncClient, database_url: str, tenant: Tenant
) -> None:
    owner = await sign_in(client, tenant.email, "acme")
    child = (await create_child(client, owner, "acme-eu"))["data"]["createOrganization"]
    in_child = await sign_in(client, tenant.email, "acme-eu")
    body = (await gql(client, CHANGE_PLAN, {"plan": "PROFESSIONAL"}, token=in_child)).json()
    assert body["data"]["changePlan"] == {"id": child["id"], "plan": "PROFESSIONAL"}
    assert plan_of(database_url, "acme-eu") == "professional"
    assert [e["changes"] for e in plan_entries(database_url, child["id"])] == [
        {"plan": {"old": "free", "new": "professional"}}
    ]
    # and down again, within the parent's plan
    body = (await gql(client, CHANGE_PLAN, {"plan": "STARTER"}, token=in_child)).json()
    assert body["data"]["changePlan"]["plan"] == "STARTER"


async def test_c128_the_role_in_the_parent_is_read_at_the_time_of_the_change(
    client: httpx.AsyncClient, database_url: str, tenant: Tenant
) -> None:
    """Owning the child is not enough: the caller's membership in the parent decides, as it is now."""
    owner = await sign_in(client, tenant.email, "acme")
    child = (await create_child(client, owner, "acme-eu"))["data"]["createOrganization"]
    await member(database_url, child["id"], "stranger@else.test", "owner")
    as_outsider = await sign_in(client, "stranger@else.test", "acme-eu")
    assert_forbidden((await gql(client, CHANGE_PLAN, {"plan": "STARTER"}, token=as_outsider)).json())

    # the parent's owner, demoted to admin in the parent after signing in to the child
    in_child = await sign_in(client, tenant.email, "acme-eu")
    sql(
        database_url,
        "UPDATE memberships SET role = 'admin' WHERE organization_id = :o AND user_id = :u",
        o=tenant.org_id,
        u=tenant.user_id,
    )
    assert_forbidden((await gql(client, CHANGE_PLAN, {"plan": "STARTER"}, token=in_child)).json())
    assert plan_of(database_url, "acme-eu") == "free"


async def test_c128_an_api_key_cannot_change_a_childs_plan(
    client: httpx.AsyncClient, database_url: str, tenant: Tenant
) -> None:
    owner = await sign_in(client, tenant.email, "acme")
    await create_child(client, owner, "acme-eu")
    in_child = await sign_in(client, tenant.email, "acme-eu")
    made = (
        await gql(client, CREATE_KEY, {"input": {"name": "billing", "scopes": ["plan:manage"]}}, token=in_child)
    ).json()
    secret = made["data"]["createApiKey"]["secret"]
    body = (await gql(client, CHANGE_PLAN, {"plan": "STARTER"}, headers={"X-API-Key": secret})).json()
    assert_forbidden(body)
    assert plan_of(database_url, "acme-eu") == "free"


async def test_c128_lowering_a_parent_lowers_every_organization_below_it_that_is_above(
    client: httpx.AsyncClient, database_url: str, tenant: Tenant
) -> None:
    owner = await sign_in(client, tenant.email, "acme")
    high = (await create_child(client, owner, "acme-high", "PROFESSIONAL"))["data"]["createOrganization"]
    mid = (await create_child(client, owner, "acme-mid", "STARTER"))["data"]["createOrganization"]
    low = (await create_child(client, owner, "acme-low"))["data"]["createOrganization"]
    in_high = await sign_in(client, tenant.email, "acme-high")
    grandchild = (await create_child(client, in_high, "acme-high-x", "PROFESSIONAL"))["data"]["createOrganization"]

    body = (await gql(client, CHANGE_PLAN, {"plan": "STARTER"}, token=owner)).json()
    assert body["data"]["changePlan"]["plan"] == "STARTER"
    assert {s: plan_of(database_url, s) for s in ("acme", "acme-high", "acme-mid", "acme-low", "acme-high-x")} == {
        "acme": "starter",
        "acme-high": "starter",
        "acme-mid": "starter",
        "acme-low": "free",
        "acme-high-x": "starter",
    }
    [own] = plan_entries(database_url, tenant.org_id)
    assert own["childrenLowered"] == 2
    for lowered in (high, grandchild):
        [entry] = plan_entries(database_url, lowered["id"])
        assert entry["reason"] == "parent_plan_lowered"
        assert entry["loweredWith"] == tenant.org_id
        assert entry["changes"] == {"plan": {"old": "professional", "new": "starter"}}
    assert plan_entries(database_url, mid["id"]) == []
    assert plan_entries(database_url, low["id"]) == []
    # the lowered child's members see the new plan on their very next request
    refreshed = (await gql(client, "{ organization { plan } }", token=in_high)).json()
    assert refreshed["data"]["organization"]["plan"] == "STARTER"
