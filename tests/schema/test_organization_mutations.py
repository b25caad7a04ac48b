"""Creating child organizations and changing the caller's own."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import LOGIN, Tenant, error_codes, gql, make_tenant
from tests.schema.test_members import join, owner_token, sql

CREATE = """
mutation($input: CreateOrganizationInput!) {
  createOrganization(input: $input) { id slug name plan parent { id } billingEmail }
}
"""
UPDATE = """
mutation($input: UpdateOrganizationInput!) { updateOrganization(input: $input) { id name billingEmail } }
"""


def org_input(slug: str = "acme-eu", name: str = "Acme Europe", **extra: Any) -> dict[str, Any]:
    return {"input": {"slug": slug, "name": name, **extra}}


async def test_create_child_organization(client, database_url, tenant: Tenant) -> None:
    token = await owner_token(client, tenant)
    body = (await gql(client, CREATE, org_input(billingEmail="eu@acme.test"), token=token)).json()
    child = body["data"]["createOrganization"]
    assert child["slug"] == "acme-eu"
    assert child["plan"] == "FREE"
    assert child["parent"] == {"id": tenant.org_id}
    assert child["billingEmail"] == "eu@acme.test"
    listed = (await gql(client, "{ organization { children { slug } } }", token=token)).json()
    assert listed["data"]["organization"]["children"] == [{"slug": "acme-eu"}]
    # the creator is the child's owner
    owner = (await gql(client, LOGIN, {"email": tenant.email, "password": tenant.password, "org": "acme-eu"})).json()
    assert owner["data"]["login"]["organization"]["id"] == child["id"]
    me = await gql(client, "{ me { role organization { slug } } }", token=owner["data"]["login"]["accessToken"])
    assert me.json()["data"]["me"] == {"role": "owner", "organization": {"slug": "acme-eu"}}


async def test_taken_slug_is_the_same_conflict_everywhere(client, database_url, tenant: Tenant) -> None:
    """C-105: the answer never tells whether the holder is in this tenant or another."""
    await make_tenant(database_url, slug="globex", email="owner@globex.test")
    token = await owner_token(client, tenant)
    assert (await gql(client, CREATE, org_input(), token=token)).json()["data"]
    own = (await gql(client, CREATE, org_input(slug="acme-eu"), token=token)).json()
    theirs = (await gql(client, CREATE, org_input(slug="globex"), token=token)).json()
    parent = (await gql(client, CREATE, org_input(slug="acme"), token=token)).json()
    for body in (own, theirs, parent):
        assert error_codes(body) == ["CONFLICT"]
        assert body["errors"][0]["message"] == "slug is taken"
        assert body["errors"][0]["extensions"] == own["errors"][0]["extensions"]
    assert sql(database_url, "SELECT count(*) FROM organizations")[0][0] == 3


@pytest.mark.parametrize(
    ("input_", "field"),
    [
        (org_input(slug="Acme"), "slug"),
        (org_input(slug="-acme"), "slug"),
        (org_input(slug="a" * 64), "slug"),
        (org_input(slug=""), "slug"),
        (org_input(name="   "), "name"),
        (org_input(name="n" * 201), "name"),
        (org_input(billingEmail="not-an-email"), "billingEmail"),
    ],
)
async def test_create_refuses_bad_input(
    client, database_url, tenant: Tenant, input_: dict[str, Any], field: str
) -> None:
    token = await owner_token(client, tenant)
    body = (await gql(client, CREATE, input_, token=token)).json()
    assert error_codes(body) == ["BAD_USER_INPUT"]
    assert body["errors"][0]["extensions"]["field"] == field
    assert sql(database_url, "SELECT count(*) FROM organizations")[0][0] == 1


async def test_paid_plan_needs_plan_manage(client, database_url, tenant: Tenant) -> None:
    token = await owner_token(client, tenant)
    _, admin = await join(client, database_url, token, "adm@acme.test", "admin")
    refused = (await gql(client, CREATE, org_input(plan="ENTERPRISE"), token=admin)).json()
    assert refused["errors"][0]["extensions"] == {"code": "FORBIDDEN", "requiredScopes": [["plan:manage"]]}
    free = (await gql(client, CREATE, org_input(slug="acme-free"), token=admin)).json()
    assert free["data"]["createOrganization"]["plan"] == "FREE"
    # up to the parent's own plan (PROFESSIONAL): tests/schema/test_child_plans.py
    paid = (await gql(client, CREATE, org_input(slug="acme-paid", plan="PROFESSIONAL"), token=token)).json()
    assert paid["data"]["createOrganization"]["plan"] == "PROFESSIONAL"


async def test_create_needs_organizations_create(client, database_url, tenant: Tenant) -> None:
    token = await owner_token(client, tenant)
    _, manager = await join(client, database_url, token, "m@acme.test", "manager")
    body = (await gql(client, CREATE, org_input(), token=manager)).json()
    assert body["errors"][0]["extensions"] == {"code": "FORBIDDEN", "requiredScopes": [["organizations:create"]]}
    assert sql(database_url, "SELECT count(*) FROM organizations")[0][0] == 1


async def test_update_own_organization(client, database_url, tenant: Tenant) -> None:
    token = await owner_token(client, tenant)
    # requiring MFA needs it of the owner first (tests/schema/test_mfa.py)
    sql(database_url, "UPDATE users SET mfa_enabled = :on", on=True)
    body = (
        await gql(
            client,
            UPDATE,
            {"input": {"name": "  Acme Corp ", "billingEmail": "billing@acme.test", "requireMfa": True}},
            token=token,
        )
    ).json()
    assert body["data"]["updateOrganization"] == {
        "id": tenant.org_id,
        "name": "Acme Corp",
        "billingEmail": "billing@acme.test",
    }
    assert sql(database_url, "SELECT require_mfa FROM organizations")[0][0] in (True, 1)
    # only the given settings change; an empty billing email clears it
    body = (await gql(client, UPDATE, {"input": {"billingEmail": ""}}, token=token)).json()
    assert body["data"]["updateOrganization"] == {"id": tenant.org_id, "name": "Acme Corp", "billingEmail": None}
    assert sql(database_url, "SELECT require_mfa FROM organizations")[0][0] in (True, 1)


@pytest.mark.parametrize(
    "changes",
    [
        {"name": ""},
        {"name": "x" * 201},
        {"billingEmail": "nope"},
        {"billingEmail": "a@" + "b" * 400},
        {"name": "nul\x00"},
    ],
)
async def test_update_refuses_bad_input(client, database_url, tenant: Tenant, changes: dict[str, Any]) -> None:
    token = await owner_token(client, tenant)
    body = (await gql(client, UPDATE, {"input": changes}, token=token)).json()
    assert error_codes(body) == ["BAD_USER_INPUT"]
    assert sql(database_url, "SELECT name, billing_email FROM organizations")[0] == ("Acme", None)


async def test_update_needs_organization_update(client, database_url, tenant: Tenant) -> None:
    token = await owner_token(client, tenant)
    _, manager = await join(client, database_url, token, "m@acme.test", "manager")
    body = (await gql(client, UPDATE, {"input": {"name": "Hijacked"}}, token=manager)).json()
    assert body["errors"][0]["extensions"] == {"code": "FORBIDDEN", "requiredScopes": [["organization:update"]]}
    assert sql(database_url, "SELECT name FROM organizations")[0][0] == "Acme"


async def test_update_ignores_tenant_headers(client, database_url, tenant: Tenant) -> None:
    """C-102: the organization changed is the caller's, whatever the headers say."""
    other = await make_tenant(database_url, slug="globex", email="owner@globex.test")
    token = await owner_token(client, tenant)
    headers = {"X-Tenant-ID": other.org_id, "X-Org-ID": other.org_id}
    body = (await gql(client, UPDATE, {"input": {"name": "Renamed"}}, token=token, headers=headers)).json()
    assert body["data"]["updateOrganization"]["id"] == tenant.org_id
    assert sql(database_url, "SELECT name FROM organizations WHERE id = :i", i=other.org_id)[0][0] == "Globex"
