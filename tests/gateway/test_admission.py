"""Admission in the embedded mode (in-process windows), on SQLite and PostgreSQL: tenant, key, address and
login limits, the cost budget, the refusal's shape, `rateLimit`, explain and the daily usage rows."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from authz.plans import QuotaResource
from gateway.app import create_app
from tests.conftest import (
    LOGIN,
    Tenant,
    error_codes,
    gql,
    login,
    make_settings,
    make_tenant,
    running,
    sql,
)

ORG = "{ organization { slug } }"
TWO_KEY_LISTS = "{ a: organization { apiKeys { id } } b: organization { apiKeys { id } } }"  # 2 x (1 + 50)
RATE = (
    "{ rateLimit { plan requestsPerMinute { limit remaining resetAt } requestsPerDay { limit remaining } "
    "costPerMinute { limit remaining resetAt } } }"
)


async def set_limits(app: Any, database_url: str, org_id: str, overrides: dict[str, int | None]) -> None:
    """What `portcullis org limits` and `changePlan` do: write the overrides, then tell every process."""
    value = json.dumps(overrides)
    cast = ":v" if database_url.startswith("sqlite") else "CAST(:v AS JSON)"
    sql(database_url, f"UPDATE organizations SET limit_overrides = {cast} WHERE id = :id", v=value, id=org_id)
    await app.state.services.revocations.publish([f"org:{org_id}"])


def logins(password_count: int, email: str) -> str:
    fields = " ".join(
        f'a{i}: login(email: "{email}", password: "wrong-{i}") {{ accessToken }}' for i in range(password_count)
    )
    return f"mutation {{ {fields} }}"


def assert_rate_limited(r: httpx.Response, policy: str) -> None:
    assert r.status_code == 429, r.text
    body = r.json()
    assert error_codes(body) == ["RATE_LIMITED"]
    retry = body["errors"][0]["extensions"]["retryAfter"]
    assert retry >= 1
    assert r.headers["retry-after"] == str(retry)
    assert r.headers["ratelimit-policy"].startswith(f'"{policy}";q=')
    assert r.headers["ratelimit"].startswith(f'"{policy}";r=')
    assert "data" not in body


async def test_zero_override_refuses_every_request(settings: Any, database_url: str, tenant: Tenant) -> None:
    app = create_app(settings)
    async with running(app) as client:
        token = (await login(client, tenant))["accessToken"]
        await set_limits(app, database_url, tenant.org_id, {"REQUESTS_PER_MINUTE": 0})
        for _ in range(3):
            r = await gql(client, ORG, token=token)
            assert_rate_limited(r, "tenant-minute")
            assert r.headers["ratelimit-policy"] == '"tenant-minute";q=0;w=60'
        assert (await client.get("/healthz")).status_code == 200  # not a tenant route


async def test_tenant_minute_limit_and_headers(settings: Any, database_url: str, tenant: Tenant) -> None:
    app = create_app(settings)
    async with running(app) as client:
        token = (await login(client, tenant))["accessToken"]
        await set_limits(app, database_url, tenant.org_id, {"REQUESTS_PER_MINUTE": 3})
        statuses = [(await gql(client, ORG, token=token)).status_code for _ in range(5)]
        assert statuses == [200, 200, 200, 429, 429]
        r = await gql(client, ORG, token=token)
        assert_rate_limited(r, "tenant-minute")
        assert 55 <= int(r.headers["retry-after"]) <= 61
        metrics = (await client.get("/metrics")).text
        assert 'portcullis_rate_limited_total{limit="tenant-minute"} 3.0' in metrics


async def test_c082_tenant_isolation(settings: Any, database_url: str, tenant: Tenant) -> None:
    """Tenant A exhausted; B, from the same address, unaffected; a client-sent X-Tenant-ID changes nothing."""
    other = await make_tenant(database_url, slug="initech", email="owner@initech.test")
    app = create_app(settings)
    async with running(app) as client:
        a = (await login(client, tenant))["accessToken"]
        b = (await login(client, other))["accessToken"]
        await set_limits(app, database_url, tenant.org_id, {"REQUESTS_PER_MINUTE": 2})
        for _ in range(2):
            assert (await gql(client, ORG, token=a)).status_code == 200
        spoofed = {"X-Tenant-ID": other.org_id}
        assert (await gql(client, ORG, token=a, headers=spoofed)).status_code == 429
        for _ in range(5):
            r = await gql(client, ORG, token=b, headers={"X-Tenant-ID": tenant.org_id})
            assert r.status_code == 200
            assert r.json()["data"]["organization"]["slug"] == "initech"


async def test_c081_tenant_limits_do_not_collapse_into_one_address(
    database_url: str, signing_key: str, tenant: Tenant
) -> None:
    """Every caller arrives from 127.0.0.1 (no real client address): the anonymous per-address limit is
    exhausted, yet each tenant is counted on its own budget."""
    other = await make_tenant(database_url, slug="initech", email="owner@initech.test")
    app = create_app(make_settings(database_url, signing_key, anonymous_requests_per_minute=2))
    async with running(app, client_ip="127.0.0.1") as client:
        a = (await login(client, tenant))["accessToken"]
        b = (await login(client, other))["accessToken"]
        assert (await gql(client, "{ __typename }")).status_code == 429  # the address's 2 went on logins
        await set_limits(app, database_url, tenant.org_id, {"REQUESTS_PER_MINUTE": 1})
        assert (await gql(client, ORG, token=a)).status_code == 200
        assert (await gql(client, ORG, token=a)).status_code == 429
        assert [(await gql(client, ORG, token=b)).status_code for _ in range(3)] == [200, 200, 200]


async def test_c080_forwarded_for_from_an_untrusted_peer_is_ignored(database_url: str, signing_key: str) -> None:
    app = create_app(make_settings(database_url, signing_key, anonymous_requests_per_minute=3))
    async with running(app) as client:
        statuses = [
            (await gql(client, "{ __typename }", headers={"X-Forwarded-For": f"1.2.3.{i}"})).status_code
            for i in range(6)
        ]
        assert statuses == [200, 200, 200, 429, 429, 429]


async def test_forwarded_for_from_a_trusted_proxy_keys_by_client(database_url: str, signing_key: str) -> None:
    app = create_app(
        make_settings(database_url, signing_key, anonymous_requests_per_minute=1, trusted_proxies=["203.0.113.0/24"])
    )
    async with running(app) as client:
        for i in range(3):
            r = await gql(client, "{ __typename }", headers={"X-Forwarded-For": f"198.51.100.{i}"})
            assert r.status_code == 200
        r = await gql(client, "{ __typename }", headers={"X-Forwarded-For": "198.51.100.0"})
        assert r.status_code == 429


async def test_c003_each_aliased_login_is_one_attempt(database_url: str, signing_key: str, tenant: Tenant) -> None:
    app = create_app(make_settings(database_url, signing_key, login_attempts_per_account_per_minute=3))
    async with running(app) as client:
        r = await gql(client, logins(4, tenant.email))
        assert_rate_limited(r, "login-account")  # 4 attempts in one document: over 3, nothing ran
        r = await gql(client, logins(2, tenant.email))
        assert r.status_code == 200  # admitted: the attempt fails on its password
        assert error_codes(r.json()) == ["UNAUTHENTICATED"]
        assert_rate_limited(await gql(client, logins(2, tenant.email.upper())), "login-account")
        r = await gql(client, LOGIN, {"email": tenant.email, "password": tenant.password})
        assert r.json()["data"]["login"]["accessToken"]  # the third attempt
        assert_rate_limited(
            await gql(client, LOGIN, {"email": tenant.email, "password": tenant.password}), "login-account"
        )
        # another account is not affected
        assert (await gql(client, logins(3, "someone@else.test"))).status_code == 200


async def test_c003_login_behind_fragments_counts_too(database_url: str, signing_key: str, tenant: Tenant) -> None:
    app = create_app(make_settings(database_url, signing_key, login_attempts_per_account_per_minute=2))
    async with running(app) as client:
        doc = (
            f'mutation {{ ...L ... on Mutation {{ b: login(email: "{tenant.email}", password: "x") '
            "{ accessToken } } }"
            f' fragment L on Mutation {{ a: login(email: "{tenant.email}", password: "y") {{ accessToken }}'
            f' c: login(email: "{tenant.email}", password: "z") {{ accessToken }} }}'
        )
        assert_rate_limited(await gql(client, doc), "login-account")


async def test_c088_one_account_from_many_addresses(database_url: str, signing_key: str, tenant: Tenant) -> None:
    """Guesses at one account from ever-new addresses are stopped by the account's own counter (the login
    throttle's ceiling): past it, even the right password from a new address is refused, while no single
    address was ever limited (C-127 keeps the account's own addresses working: tests/schema/
    test_accounts_across_organizations.py)."""
    app = create_app(
        make_settings(
            database_url,
            signing_key,
            lockout_account_ceiling=5,
            login_attempts_per_address_per_minute=1_000,
            trusted_proxies=["203.0.113.0/24"],
        )
    )
    async with running(app) as client:
        statuses = []
        for i in range(12):
            r = await gql(
                client,
                LOGIN,
                {"email": tenant.email, "password": f"guess-{i}"},
                headers={"X-Forwarded-For": f"198.51.{i}.1"},
            )
            statuses.append(r.status_code)
            assert error_codes(r.json()) == ["UNAUTHENTICATED"]
        assert statuses == [200] * 12
        right = await gql(
            client,
            LOGIN,
            {"email": tenant.email, "password": tenant.password},
            headers={"X-Forwarded-For": "198.51.99.1"},
        )
        assert error_codes(right.json()) == ["UNAUTHENTICATED"]
    reasons = [
        json.loads(d)["reason"] if isinstance(d, str) else d["reason"]
        for (d,) in sql(
            database_url, "SELECT details FROM audit_log WHERE action = 'authn_login_fail' ORDER BY at, sequence"
        )
    ]
    assert reasons == ["bad_password"] * 5 + ["account_ceiling"] * 8


async def test_login_per_address_limit(database_url: str, signing_key: str) -> None:
    app = create_app(make_settings(database_url, signing_key, login_attempts_per_address_per_minute=4))
    async with running(app) as client:
        statuses = [(await gql(client, logins(2, f"user{i}@example.test"))).status_code for i in range(3)]
        assert statuses == [200, 200, 429]


async def test_c083_cost_budget_is_debited_per_operation(settings: Any, database_url: str, tenant: Tenant) -> None:
    """An operation of cost 102 spends 102 of a 1,000 budget: 9 pass, the 10th is refused."""
    app = create_app(settings)
    async with running(app) as client:
        token = (await login(client, tenant))["accessToken"]
        await set_limits(app, database_url, tenant.org_id, {"COST_PER_MINUTE": 1_000})
        remaining = []
        for _ in range(9):
            r = await gql(client, TWO_KEY_LISTS, token=token)
            assert r.status_code == 200, r.text
            cost = r.json()["extensions"]["cost"]
            assert cost["requested"] == 102
            assert cost["resetAt"].endswith("Z")
            remaining.append(cost["remaining"])
        assert remaining == [1_000 - 102 * n for n in range(1, 10)]
        r = await gql(client, TWO_KEY_LISTS, token=token)
        assert_rate_limited(r, "tenant-cost")
        assert r.json()["extensions"]["cost"] == {
            "requested": 102,
            "remaining": 82,
            "resetAt": r.json()["extensions"]["cost"]["resetAt"],
        }
        # a cheaper operation still fits what is left
        assert (await gql(client, ORG, token=token)).status_code == 200


async def test_c085_downgrade_mid_window(settings: Any, database_url: str, tenant: Tenant) -> None:
    """From 10 to 3 a minute after 6 requests: refused at once (no negative remainder, no error); back to 10:
    admitted again."""
    app = create_app(settings)
    async with running(app) as client:
        token = (await login(client, tenant))["accessToken"]
        await set_limits(app, database_url, tenant.org_id, {"REQUESTS_PER_MINUTE": 10})
        for _ in range(6):
            assert (await gql(client, ORG, token=token)).status_code == 200
        await set_limits(app, database_url, tenant.org_id, {"REQUESTS_PER_MINUTE": 3})
        r = await gql(client, ORG, token=token)
        assert_rate_limited(r, "tenant-minute")
        assert r.headers["ratelimit"].startswith('"tenant-minute";r=0;')
        _, limits = await app.state.services.admission.orgs.get(tenant.org_id)
        budgets = await app.state.services.budgets.budgets(tenant.org_id, limits)
        state = budgets[QuotaResource.REQUESTS_PER_MINUTE]
        assert (state.limit, state.used, state.remaining) == (3, 6, 0)
        await set_limits(app, database_url, tenant.org_id, {"REQUESTS_PER_MINUTE": 10})
        assert (await gql(client, ORG, token=token)).status_code == 200


async def test_api_key_own_limit(settings: Any, tenant: Tenant) -> None:
    from tests.schema.test_api_keys import new_key, with_key

    app = create_app(settings)
    async with running(app) as client:
        token = (await login(client, tenant))["accessToken"]
        _, key = await new_key(client, token, rateLimitPerMinute=2)
        statuses = [(await gql(client, ORG, headers=with_key(key))).status_code for _ in range(3)]
        assert statuses == [200, 200, 429]
        assert_rate_limited(await gql(client, ORG, headers=with_key(key)), "api-key")
        assert (await gql(client, ORG, token=token)).status_code == 200  # the tenant is not exhausted


async def test_rate_limit_field_reports_without_spending(settings: Any, database_url: str, tenant: Tenant) -> None:
    app = create_app(settings)
    async with running(app) as client:
        token = (await login(client, tenant))["accessToken"]
        await set_limits(app, database_url, tenant.org_id, {"REQUESTS_PER_MINUTE": 100, "REQUESTS_PER_DAY": None})
        first = (await gql(client, RATE, token=token)).json()
        second = (await gql(client, RATE, token=token)).json()
        one, two = first["data"]["rateLimit"], second["data"]["rateLimit"]
        assert one["plan"] == "PROFESSIONAL"
        assert one["requestsPerMinute"]["limit"] == 100
        # each request counts once, the reading itself nothing
        assert one["requestsPerMinute"]["remaining"] == 99
        assert two["requestsPerMinute"]["remaining"] == 98
        assert one["requestsPerDay"] == {"limit": None, "remaining": None}
        assert one["costPerMinute"]["limit"] == 100_000
        spent = first["extensions"]["cost"]["requested"]
        assert two["costPerMinute"]["remaining"] == 100_000 - 2 * spent
        assert second["extensions"]["cost"]["remaining"] == 100_000 - 2 * spent


async def test_explain_header_is_a_dry_run(database_url: str, signing_key: str) -> None:
    viewer = await make_tenant(database_url, slug="viewco", email="viewer@viewco.test", role="viewer")
    app = create_app(make_settings(database_url, signing_key))
    async with running(app) as client:
        token = (await login(client, viewer))["accessToken"]
        query = "{ organization { slug billingEmail children { id } } }"
        r = await gql(client, query, token=token, headers={"X-Portcullis-Explain": "1"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["data"] is None
        explain = body["extensions"]["explain"]
        assert explain["cost"] == 11
        assert explain["operation"] == "query"
        assert explain["denied"] == [
            {
                "path": ["organization", "billingEmail"],
                "code": "FORBIDDEN",
                "message": explain["denied"][0]["message"],
                "requiredScopes": [["billing:read"]],
            }
        ]
        assert explain["operationLimits"]["cost"] == 10_000
        names = {limit["name"]: limit for limit in explain["rateLimits"]}
        assert set(names) == {"tenant-minute", "tenant-day", "tenant-cost"}
        assert names["tenant-cost"]["used"] == 0  # nothing spent on an explained operation
        assert body["extensions"]["cost"]["remaining"] == 100_000
        ran = (await gql(client, query, token=token)).json()
        assert ran["data"]["organization"]["slug"] == "viewco"
        assert ran["extensions"]["cost"]["remaining"] == 100_000 - 11


async def test_daily_usage_is_written(settings: Any, database_url: str, tenant: Tenant) -> None:
    app = create_app(settings)
    async with running(app) as client:
        token = (await login(client, tenant))["accessToken"]
        await set_limits(app, database_url, tenant.org_id, {"REQUESTS_PER_MINUTE": 4})
        for _ in range(6):
            await gql(client, TWO_KEY_LISTS, token=token)
        assert await app.state.services.usage.flush() == 2
        await gql(client, ORG, token=token)  # refused: counted on the next flush
        await app.state.services.usage.flush()
    rows = sql(
        database_url,
        "SELECT subject_type, subject_id, requests, cost, rate_limited FROM usage_daily "
        "WHERE organization_id = :o ORDER BY subject_type",
        o=tenant.org_id,
    )
    assert [tuple(r) for r in rows] == [("total", "", 4, 408, 3), ("user", tenant.user_id, 4, 408, 3)]


async def test_a_build_composed_without_admission_counts_nothing(
    settings: Any, database_url: str, tenant: Tenant
) -> None:
    """The benchmark's build without admission, composed from the gateway's public parts
    (bench/apps/gateway_no_admission.py): a tenant allowed no request at all is still served."""
    from bench.apps.gateway_no_admission import admits, without_admission
    from gateway.app import assemble, build_gateway_schema, gateway_parts

    parts = gateway_parts(settings)
    parts.schema = build_gateway_schema(settings, extensions=without_admission)
    parts.middleware = [m for m in parts.middleware if not admits(m)]
    app = assemble(parts)
    async with running(app) as client:
        token = (await login(client, tenant))["accessToken"]
        await set_limits(app, database_url, tenant.org_id, {"REQUESTS_PER_MINUTE": 0})
        r = await gql(client, ORG, token=token)
        assert r.status_code == 200
        assert r.json()["extensions"]["cost"] == {"requested": 1}


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics", "/.well-known/jwks.json"])
async def test_public_routes_are_not_limited(database_url: str, signing_key: str, path: str) -> None:
    app = create_app(make_settings(database_url, signing_key, anonymous_requests_per_minute=0))
    async with running(app) as client:
        assert (await gql(client, "{ __typename }")).status_code == 429
        for _ in range(3):
            assert (await client.get(path)).status_code == 200


async def test_a_document_that_does_not_parse_still_counts(database_url: str, signing_key: str) -> None:
    app = create_app(make_settings(database_url, signing_key, anonymous_requests_per_minute=2))
    async with running(app) as client:
        assert (await gql(client, "{ broken")).status_code == 400
        assert (await gql(client, "{ __typename }")).status_code == 200
        r = await gql(client, "{ broken")
        assert_rate_limited(r, "address")
