"""Quotas over HTTP on SQLite and PostgreSQL: what `Organization.quotas` reports, the QUOTA_EXCEEDED
refusals of members, API keys and child organizations (atomic at the boundary), and changePlan.

Security case: C-111 (../shared/design/security.md)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import httpx
import pytest

from authz.errors import QuotaExceeded
from authz.plans import QuotaResource
from resolvers.quotas import check_quota, month_window
from store.db import Database
from store.models import Report
from tests.conftest import Tenant, error_codes, gql, login, make_tenant, sql

QUOTAS = "{ organization { quotas { resource limit used remaining resetsAt } } }"
CHANGE_PLAN = "mutation($plan: Plan!) { changePlan(plan: $plan) { id plan } }"
ADD_MEMBER = 'mutation($email: String!) { addMember(email: $email, role: "viewer") { membership { id } } }'
CREATE_KEY = """mutation($name: String!, $scopes: [String!]!) {
  createApiKey(input: {name: $name, scopes: $scopes}) { secret apiKey { id } }
}"""
REVOKE_KEY = "mutation($id: ID!) { revokeApiKey(id: $id) { id } }"
CREATE_ORG = 'mutation($slug: String!) { createOrganization(input: {slug: $slug, name: "Child"}) { id } }'
# depth 11: over FREE's 10, within STARTER's 12
DEEP = "{ organization { " + "parent { " * 9 + "id" + " }" * 9 + " } }"


async def token_of(client: httpx.AsyncClient, t: Tenant) -> str:
    return (await login(client, t))["accessToken"]  # type: ignore[no-any-return]


async def quotas(client: httpx.AsyncClient, token: str) -> dict[str, dict[str, Any]]:
    body = (await gql(client, QUOTAS, token=token)).json()
    assert body.get("data"), body
    return {q["resource"]: q for q in body["data"]["organization"]["quotas"]}


async def add_member(client: httpx.AsyncClient, token: str, email: str) -> dict[str, Any]:
    return (await gql(client, ADD_MEMBER, {"email": email}, token=token)).json()  # type: ignore[no-any-return]


async def create_key(
    client: httpx.AsyncClient, token: str, name: str = "ci", scopes: tuple[str, ...] = ("organization:read",)
) -> dict[str, Any]:
    r = await gql(client, CREATE_KEY, {"name": name, "scopes": list(scopes)}, token=token)
    return r.json()  # type: ignore[no-any-return]


async def create_child(client: httpx.AsyncClient, token: str, slug: str) -> dict[str, Any]:
    return (await gql(client, CREATE_ORG, {"slug": slug}, token=token)).json()  # type: ignore[no-any-return]


def created(body: dict[str, Any]) -> None:
    assert body.get("data"), body


def count(url: str, table: str, org_id: str, column: str = "organization_id") -> int:
    return int(sql(url, f"SELECT count(*) FROM {table} WHERE {column} = :o", o=org_id)[0][0])


def plan_of(url: str, org_id: str) -> str:
    return str(sql(url, "SELECT plan FROM organizations WHERE id = :o", o=org_id)[0][0])


async def add_reports(url: str, org_id: str, *created_at: datetime) -> None:
    db = Database(url)
    try:
        async with db.transaction() as session:
            for at in created_at:
                session.add(
                    Report(
                        organization_id=org_id,
                        kind="usage",
                        period_start=at,
                        period_end=at,
                        created_at=at,
                        created_by_type="user",
                        digest="0" * 64,
                    )
                )
    finally:
        await db.dispose()


def now() -> datetime:
    return datetime.now(UTC)


# -- what Organization.quotas reports ----------------------------------------------------------------------


async def test_quotas_report_each_counted_resource(
    client: httpx.AsyncClient, database_url: str, tenant: Tenant
) -> None:
    token = await token_of(client, tenant)
    created(await add_member(client, token, "a@acme.test"))
    created(await create_key(client, token, "one"))
    created(await create_key(client, token, "two"))
    gone = (await create_key(client, token, "gone"))["data"]["createApiKey"]["apiKey"]["id"]
    created((await gql(client, REVOKE_KEY, {"id": gone}, token=token)).json())
    created(await create_child(client, token, "acme-eu"))
    start, following = month_window(now())
    await add_reports(database_url, tenant.org_id, start, now(), start - timedelta(seconds=1))

    rows = await quotas(client, token)
    assert rows["MEMBERS"] == {"resource": "MEMBERS", "limit": 50, "used": 2, "remaining": 48, "resetsAt": None}
    assert rows["API_KEYS"] == {"resource": "API_KEYS", "limit": 50, "used": 2, "remaining": 48, "resetsAt": None}
    assert rows["CHILD_ORGANIZATIONS"] == {
        "resource": "CHILD_ORGANIZATIONS",
        "limit": 10,
        "used": 1,
        "remaining": 9,
        "resetsAt": None,
    }
    reports = rows["REPORTS_PER_MONTH"]
    assert (reports["limit"], reports["used"], reports["remaining"]) == (500, 2, 498)
    assert datetime.fromisoformat(reports["resetsAt"]) == following
    # the order is QuotaResource's
    assert [r for r in rows] == [r.value for r in QuotaResource if r.value in rows]


async def test_unlimited_quotas_have_no_limit_and_no_remaining(client: httpx.AsyncClient, database_url: str) -> None:
    big = await make_tenant(database_url, slug="big", email="owner@big.test", plan="enterprise")
    rows = await quotas(client, await token_of(client, big))
    for resource in ("MEMBERS", "API_KEYS", "REPORTS_PER_MONTH", "CHILD_ORGANIZATIONS"):
        assert (rows[resource]["limit"], rows[resource]["remaining"]) == (None, None)
    assert rows["MEMBERS"]["used"] == 1


async def test_quotas_need_quotas_read(client: httpx.AsyncClient, tenant: Tenant) -> None:
    token = await token_of(client, tenant)
    secret = (await create_key(client, token, scopes=("organization:read",)))["data"]["createApiKey"]["secret"]
    body = (await gql(client, QUOTAS, headers={"X-API-Key": secret})).json()
    assert error_codes(body) == ["FORBIDDEN"]
    assert body["errors"][0]["extensions"]["requiredScopes"] == [["quotas:read"]]


async def test_quotas_of_an_organization_below_are_not_shown(client: httpx.AsyncClient, tenant: Tenant) -> None:
    token = await token_of(client, tenant)
    created(await create_child(client, token, "acme-eu"))
    body = (await gql(client, '{ organization(slug: "acme-eu") { quotas { resource } } }', token=token)).json()
    assert error_codes(body) == ["FORBIDDEN"]


# -- C-111: refusals at the limit, per tenant, atomic ---------------------------------------------------------


async def test_tenant_at_its_quota_is_refused_while_another_is_not(
    client: httpx.AsyncClient, database_url: str
) -> None:
    a = await make_tenant(database_url, slug="a", email="owner@a.test", plan="free")
    b = await make_tenant(database_url, slug="b", email="owner@b.test", plan="free")
    ta, tb = await token_of(client, a), await token_of(client, b)
    for email in ("1@a.test", "2@a.test"):
        created(await add_member(client, ta, email))
    for name in ("k1", "k2"):
        created(await create_key(client, ta, name))

    refused = await add_member(client, ta, "3@a.test")
    assert error_codes(refused) == ["QUOTA_EXCEEDED"]
    assert refused["errors"][0]["extensions"]["resource"] == "MEMBERS"
    assert refused["errors"][0]["extensions"]["limit"] == 3
    assert error_codes(await create_key(client, ta, "k3")) == ["QUOTA_EXCEEDED"]
    assert error_codes(await create_child(client, ta, "a-child")) == ["QUOTA_EXCEEDED"]  # FREE: no children
    # members and pending invitations count together
    assert count(database_url, "memberships", a.org_id) + count(database_url, "invitations", a.org_id) == 3
    assert count(database_url, "invitations", "3@a.test", column="email") == 0  # nothing half-written

    created(await add_member(client, tb, "1@b.test"))
    created(await create_key(client, tb, "k1"))
    rows_b = await quotas(client, tb)
    assert (rows_b["MEMBERS"]["used"], rows_b["MEMBERS"]["remaining"]) == (2, 1)
    assert (rows_b["API_KEYS"]["used"], rows_b["API_KEYS"]["remaining"]) == (1, 1)
    rows_a = await quotas(client, ta)
    assert (rows_a["MEMBERS"]["used"], rows_a["MEMBERS"]["remaining"]) == (3, 0)


@pytest.mark.parametrize("resource", ["members", "api_keys", "child_organizations"])
async def test_concurrent_creations_with_one_slot_left_admit_exactly_one(
    client: httpx.AsyncClient, database_url: str, resource: str
) -> None:
    """C-111: 20 parallel creations when 1 slot is left → exactly 1 succeeds, the others QUOTA_EXCEEDED."""
    plan = "starter" if resource == "child_organizations" else "free"
    t = await make_tenant(database_url, slug="race", email="owner@race.test", plan=plan)
    token = await token_of(client, t)
    if resource == "members":  # FREE: 3, the owner and one more are there
        created(await add_member(client, token, "first@race.test"))
        results = await asyncio.gather(*(add_member(client, token, f"m{i}@race.test") for i in range(20)))
        table, column, expected = "invitations", "organization_id", 2  # with the owner: 3
    elif resource == "api_keys":  # FREE: 2
        created(await create_key(client, token, "first"))
        results = await asyncio.gather(*(create_key(client, token, f"k{i}") for i in range(20)))
        table, column, expected = "api_keys", "organization_id", 2
    else:  # STARTER: 2 children
        created(await create_child(client, token, "first"))
        results = await asyncio.gather(*(create_child(client, token, f"c{i}") for i in range(20)))
        table, column, expected = "organizations", "parent_id", 2
    ok = [r for r in results if r.get("data")]
    assert len(ok) == 1, results
    assert all(error_codes(r) == ["QUOTA_EXCEEDED"] for r in results if not r.get("data")), results
    assert count(database_url, table, t.org_id, column) == expected


async def test_reports_quota_counts_this_utc_month_only(database_url: str) -> None:
    """The check the report generator makes in its transaction (FREE: 5 reports a month)."""
    t = await make_tenant(database_url, slug="rep", email="owner@rep.test", plan="free")
    at = now()
    start, _ = month_window(at)
    await add_reports(database_url, t.org_id, *(start - timedelta(days=1, minutes=i) for i in range(3)))
    await add_reports(database_url, t.org_id, *(start + timedelta(minutes=i) for i in range(4)))
    db = Database(database_url)
    try:
        async with db.transaction() as session:
            org = await check_quota(session, t.org_id, QuotaResource.REPORTS_PER_MONTH, now=at)
            assert org.id == t.org_id
        await add_reports(database_url, t.org_id, start + timedelta(minutes=5))
        with pytest.raises(QuotaExceeded) as refused:
            async with db.transaction() as session:
                await check_quota(session, t.org_id, QuotaResource.REPORTS_PER_MONTH, now=at)
        assert refused.value.extensions["resource"] == "REPORTS_PER_MONTH"
        # the next month starts from nothing
        async with db.transaction() as session:
            await check_quota(
                session, t.org_id, QuotaResource.REPORTS_PER_MONTH, now=month_window(at)[1] + timedelta(seconds=1)
            )
    finally:
        await db.dispose()


def test_month_window_crosses_the_year() -> None:
    assert month_window(datetime(2026, 12, 31, 23, 59, 59, tzinfo=UTC)) == (
        datetime(2026, 12, 1, tzinfo=UTC),
        datetime(2027, 1, 1, tzinfo=UTC),
    )
    assert month_window(datetime(2027, 1, 1, tzinfo=UTC)) == (
        datetime(2027, 1, 1, tzinfo=UTC),
        datetime(2027, 2, 1, tzinfo=UTC),
    )
    # the UTC month of the instant, whatever the offset it is given in
    assert month_window(datetime(2027, 1, 1, 1, tzinfo=timezone(timedelta(hours=2))))[0] == datetime(
        2026, 12, 1, tzinfo=UTC
    )


# -- changePlan ---------------------------------------------------------------------------------------------


async def test_change_plan_applies_the_new_limits_at_once(client: httpx.AsyncClient, database_url: str) -> None:
    t = await make_tenant(database_url, slug="up", email="owner@up.test", plan="free")
    token = await token_of(client, t)
    created(await create_key(client, token, "k1"))
    created(await create_key(client, token, "k2"))
    assert error_codes(await create_key(client, token, "k3")) == ["QUOTA_EXCEEDED"]
    assert error_codes((await gql(client, DEEP, token=token)).json()) == ["OPERATION_TOO_COMPLEX"]

    body = (await gql(client, CHANGE_PLAN, {"plan": "STARTER"}, token=token)).json()
    assert body["data"]["changePlan"] == {"id": t.org_id, "plan": "STARTER"}
    assert plan_of(database_url, t.org_id) == "starter"
    # the same session, on its very next requests: the plan's quotas and operation limits
    created(await create_key(client, token, "k3"))
    assert (await gql(client, DEEP, token=token)).json().get("data"), "depth 11 is within STARTER's limit"
    assert (await quotas(client, token))["API_KEYS"] == {
        "resource": "API_KEYS",
        "limit": 10,
        "used": 3,
        "remaining": 7,
        "resetsAt": None,
    }


@pytest.mark.parametrize(
    ("document", "variables"),
    [
        ("mutation { changePlan(plan: PLATINUM) { plan } }", None),
        (CHANGE_PLAN, {"plan": "PLATINUM"}),
        (CHANGE_PLAN, {"plan": "free"}),
        (CHANGE_PLAN, {"plan": None}),
    ],
    ids=["literal", "variable", "lowercase", "null"],
)
async def test_change_plan_to_an_unknown_plan_is_bad_user_input(
    client: httpx.AsyncClient, database_url: str, tenant: Tenant, document: str, variables: dict[str, Any] | None
) -> None:
    body = (await gql(client, document, variables, token=await token_of(client, tenant))).json()
    assert error_codes(body) == ["BAD_USER_INPUT"]
    assert plan_of(database_url, tenant.org_id) == "professional"


@pytest.mark.parametrize("role", ["admin", "manager", "viewer"])
async def test_change_plan_by_a_non_owner_is_forbidden(client: httpx.AsyncClient, database_url: str, role: str) -> None:
    t = await make_tenant(database_url, slug="np", email="someone@np.test", role=role)
    body = (await gql(client, CHANGE_PLAN, {"plan": "ENTERPRISE"}, token=await token_of(client, t))).json()
    assert error_codes(body) == ["FORBIDDEN"]
    assert body["errors"][0]["extensions"]["requiredScopes"] == [["plan:manage"]]
    assert body.get("data") is None
    assert plan_of(database_url, t.org_id) == "professional"


async def test_change_plan_with_a_key_lacking_plan_manage_is_forbidden(
    client: httpx.AsyncClient, database_url: str, tenant: Tenant
) -> None:
    token = await token_of(client, tenant)
    secret = (await create_key(client, token, scopes=("organization:read", "organization:update")))["data"][
        "createApiKey"
    ]["secret"]
    r = await gql(client, CHANGE_PLAN, {"plan": "FREE"}, headers={"X-API-Key": secret})
    assert error_codes(r.json()) == ["FORBIDDEN"]
    assert plan_of(database_url, tenant.org_id) == "professional"


async def test_downgrade_below_usage_keeps_rows_and_refuses_the_next_creation(
    client: httpx.AsyncClient, database_url: str, tenant: Tenant
) -> None:
    token = await token_of(client, tenant)
    issued = [(await create_key(client, token, f"k{i}"))["data"]["createApiKey"] for i in range(4)]
    keys = [k["apiKey"]["id"] for k in issued]
    for i in range(3):
        created(await add_member(client, token, f"m{i}@acme.test"))
    created(await create_child(client, token, "acme-eu"))

    body = (await gql(client, CHANGE_PLAN, {"plan": "FREE"}, token=token)).json()
    assert body["data"]["changePlan"]["plan"] == "FREE"
    assert count(database_url, "api_keys", tenant.org_id) == 4
    assert count(database_url, "memberships", tenant.org_id) + count(database_url, "invitations", tenant.org_id) == 4
    assert count(database_url, "organizations", tenant.org_id, "parent_id") == 1
    rows = await quotas(client, token)
    assert {
        r: (rows[r]["limit"], rows[r]["used"], rows[r]["remaining"])
        for r in ("MEMBERS", "API_KEYS", "CHILD_ORGANIZATIONS")
    } == {"MEMBERS": (3, 4, 0), "API_KEYS": (2, 4, 0), "CHILD_ORGANIZATIONS": (0, 1, 0)}
    # the keys over the limit still work; only new ones are refused
    assert (await gql(client, "{ organization { slug } }", headers={"X-API-Key": issued[3]["secret"]})).json()[
        "data"
    ] == {"organization": {"slug": tenant.slug}}
    assert error_codes(await create_key(client, token, "x")) == ["QUOTA_EXCEEDED"]
    assert error_codes(await add_member(client, token, "late@acme.test")) == ["QUOTA_EXCEEDED"]
    assert error_codes(await create_child(client, token, "acme-us")) == ["QUOTA_EXCEEDED"]
    # back under the limit, creation works again
    for key_id in keys[:3]:
        created((await gql(client, REVOKE_KEY, {"id": key_id}, token=token)).json())
    created(await create_key(client, token, "again"))


async def test_quotas_report_every_resource_including_the_rate_budgets(
    client: httpx.AsyncClient, tenant: Tenant
) -> None:
    token = await token_of(client, tenant)
    first = await quotas(client, token)
    assert list(first) == [r.value for r in QuotaResource]
    second = await quotas(client, token)
    # each admitted request is counted in the minute and the day; reading quotas spends nothing more
    minute, day = second["REQUESTS_PER_MINUTE"], second["REQUESTS_PER_DAY"]
    assert (minute["limit"], day["limit"]) == (6_000, 100_000)
    assert minute["used"] == first["REQUESTS_PER_MINUTE"]["used"] + 1
    assert day["used"] == first["REQUESTS_PER_DAY"]["used"] + 1
    assert minute["remaining"] == 6_000 - minute["used"]
    cost = second["COST_PER_MINUTE"]
    assert cost["limit"] == 100_000
    assert cost["used"] > first["COST_PER_MINUTE"]["used"]
    for row in (minute, day, cost):
        assert datetime.fromisoformat(row["resetsAt"]) > datetime.now(UTC)
