"""API keys over HTTP, in embedded mode and in shared mode (Redis for the key cache's invalidations and
the per-key limit), each on SQLite and PostgreSQL: lifecycle, edge checks and bad inputs.

Security cases: C-077, C-109, C-118 to C-123 (../shared/design/security.md)."""

from __future__ import annotations

import asyncio
import hmac
import time
from datetime import UTC, datetime, timedelta
from hashlib import sha256
from typing import Any

import httpx
import pytest

from gateway.app import create_app
from gateway.settings import Settings
from identity import api_keys as api_keys_module
from identity.api_keys import LastUsedRecorder, checksum, parse
from tests.conftest import Tenant, cost_of, error_codes, gql, login, make_settings, make_tenant, running, sql

CREATE = """mutation($input: CreateApiKeyInput!) {
  createApiKey(input: $input) { secret apiKey { id name prefix scopes allowedIps rateLimitPerMinute expiresAt } }
}"""
KEYS = "{ organization { apiKeys { id name prefix scopes lastUsedAt revokedAt } } }"
ORG = "{ organization { slug } }"
REVOKE = "mutation($id: ID!) { revokeApiKey(id: $id) { id revokedAt } }"
ROTATE = "mutation($id: ID!, $g: Int) { rotateApiKey(id: $id, gracePeriodSeconds: $g) { secret apiKey { id } } }"
UNAUTHENTICATED_BODY = {
    "errors": [{"message": "Invalid or missing credentials.", "extensions": {"code": "UNAUTHENTICATED"}}]
}


async def create_key(client: httpx.AsyncClient, token: str, **fields: Any) -> dict[str, Any]:
    fields.setdefault("name", "ci")
    fields.setdefault("scopes", ["organization:read"])
    r = await gql(client, CREATE, {"input": fields}, token=token)
    return r.json()  # type: ignore[no-any-return]


async def new_key(client: httpx.AsyncClient, token: str, **fields: Any) -> tuple[str, str]:
    body = await create_key(client, token, **fields)
    assert body.get("data"), body
    created = body["data"]["createApiKey"]
    return created["apiKey"]["id"], created["secret"]


def with_key(key: str) -> dict[str, str]:
    return {"X-API-Key": key}


@pytest.fixture(params=["embedded", "shared"])
def settings(request: pytest.FixtureRequest, database_url: str, signing_key: str) -> Settings:
    """Every test here runs without and with Redis."""
    if request.param == "shared":
        return make_settings(database_url, signing_key, redis_url=request.getfixturevalue("redis_url"))
    return make_settings(database_url, signing_key)


@pytest.fixture
async def owner_token(client: httpx.AsyncClient, tenant: Tenant) -> str:
    return (await login(client, tenant))["accessToken"]  # type: ignore[no-any-return]


# -- format and storage -------------------------------------------------------------------------------


async def test_create_returns_the_secret_once_and_stores_only_its_hmac(
    client: httpx.AsyncClient, owner_token: str, database_url: str, settings: Any
) -> None:
    body = await create_key(
        client,
        owner_token,
        name="deploy",
        scopes=["organization:read", "members:read"],
        allowedIps=["198.51.100.0/24", "2001:db8::1"],
        rateLimitPerMinute=100,
    )
    created = body["data"]["createApiKey"]
    secret = created["secret"]
    parsed = parse(secret)
    assert secret.startswith("ptc_test_")
    assert parsed.prefix in created["apiKey"]["prefix"]
    assert created["apiKey"]["allowedIps"] == ["198.51.100.0/24", "2001:db8::1/128"]
    listed = (await gql(client, KEYS, token=owner_token)).json()["data"]["organization"]["apiKeys"]
    assert [k["id"] for k in listed] == [created["apiKey"]["id"]]
    assert secret not in str(listed)
    (row,) = sql(database_url, "SELECT secret_hash, prefix FROM api_keys")
    pepper = settings.api_key_pepper.get_secret_value().encode()
    assert row[0] == hmac.new(pepper, parsed.secret.encode(), sha256).hexdigest()
    assert parsed.secret not in str(row)


async def test_a_key_authenticates_with_exactly_its_scopes(client: httpx.AsyncClient, owner_token: str) -> None:
    _, key = await new_key(client, owner_token, scopes=["organization:read"])
    r = await gql(client, ORG, headers=with_key(key))
    assert r.status_code == 200
    assert r.json()["data"]["organization"]["slug"] == "acme"
    also = await gql(client, ORG, headers={"Authorization": f"ApiKey {key}"})
    assert also.json()["data"]["organization"]["slug"] == "acme"
    denied = (await gql(client, "{ organization { billingEmail } }", headers=with_key(key))).json()
    assert error_codes(denied) == ["FORBIDDEN"]
    perms = (await gql(client, "{ organization { apiKeys { id } } }", headers=with_key(key))).json()
    assert error_codes(perms) == ["FORBIDDEN"]


def test_format_has_enough_randomness_and_a_checksum() -> None:
    key = api_keys_module.new_secret("test", api_keys_module.new_prefix())
    parsed = parse(key)
    assert len(parsed.secret) == api_keys_module.RANDOM_LENGTH + api_keys_module.CHECKSUM_LENGTH
    assert api_keys_module.RANDOM_LENGTH * 5.954 >= 160
    assert key.endswith(checksum(key[: -api_keys_module.CHECKSUM_LENGTH]))


# -- C-121: malformed keys --------------------------------------------------------------------------------


async def test_c121_malformed_truncated_or_altered_keys_are_401_alike(
    client: httpx.AsyncClient, owner_token: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, key = await new_key(client, owner_token)
    parsed = parse(key)
    body = key[: -api_keys_module.CHECKSUM_LENGTH]
    flipped_random = body[:-1] + ("A" if body[-1] != "A" else "B")
    one_char_off = flipped_random + checksum(flipped_random)  # valid checksum, wrong secret
    wrong_checksum = body + ("0" * 6 if not key.endswith("000000") else "111111")
    only_id = f"ptc_test_{parsed.prefix}"
    candidates = [only_id, key[:-3], wrong_checksum, one_char_off, "ptc_live_" + key[9:], "garbage", key + "x"]
    for candidate in candidates:
        r = await gql(client, ORG, headers=with_key(candidate))
        assert r.status_code == 401, candidate
        assert r.json() == UNAUTHENTICATED_BODY

    async def no_lookup(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("database consulted for a key failing its checksum")

    monkeypatch.setattr(api_keys_module, "load_api_key", no_lookup)
    assert (await gql(client, ORG, headers=with_key(wrong_checksum))).status_code == 401


async def test_two_credentials_are_401(client: httpx.AsyncClient, owner_token: str) -> None:
    """A key sent both as X-API-Key and Authorization (or with a bearer token) is refused: two credentials."""
    _, key = await new_key(client, owner_token)
    both = await gql(client, ORG, headers={"X-API-Key": key, "Authorization": f"ApiKey {key}"})
    assert both.status_code == 401
    mixed = await gql(client, ORG, headers={"X-API-Key": key, "Authorization": f"Bearer {owner_token}"})
    assert mixed.status_code == 401


# -- C-077 / C-122: never in the URL ----------------------------------------------------------------------


@pytest.mark.parametrize("param", ["api_key", "access_token"])
async def test_c077_c122_key_in_query_string_is_refused_even_when_valid(
    client: httpx.AsyncClient, owner_token: str, param: str, caplog: pytest.LogCaptureFixture
) -> None:
    _, key = await new_key(client, owner_token)
    r = await client.get("/graphql", params={"query": ORG, param: key})
    assert r.status_code == 401
    r = await client.post(f"/graphql?{param}={key}", json={"query": ORG}, headers=with_key(key))
    assert r.status_code == 401
    assert key not in caplog.text


async def test_c122_key_in_a_cookie_is_not_a_credential(client: httpx.AsyncClient, owner_token: str) -> None:
    _, key = await new_key(client, owner_token)
    r = await gql(client, ORG, headers={"Cookie": f"api_key={key}"})
    assert error_codes(r.json()) == ["UNAUTHENTICATED"]


# -- C-118: expired and revoked ---------------------------------------------------------------------------


async def test_c118_expired_key_is_401(client: httpx.AsyncClient, owner_token: str, database_url: str) -> None:
    """`expires_at` = now - 1 s → 401."""
    key_id, key = await new_key(client, owner_token, expiresAt=(datetime.now(UTC) + timedelta(hours=1)).isoformat())
    past = datetime.now(UTC) - timedelta(seconds=1)
    sql(database_url, "UPDATE api_keys SET expires_at = :t WHERE id = :id", t=past, id=key_id)
    r = await gql(client, ORG, headers=with_key(key))
    assert r.status_code == 401
    assert r.json() == UNAUTHENTICATED_BODY


async def test_c118_expiry_is_checked_on_cached_keys(app: Any, owner_token: str) -> None:
    client = app.state.client
    _, key = await new_key(client, owner_token, expiresAt=(datetime.now(UTC) + timedelta(seconds=1.5)).isoformat())
    assert (await gql(client, ORG, headers=with_key(key))).status_code == 200
    await asyncio.sleep(1.6)
    assert (await gql(client, ORG, headers=with_key(key))).status_code == 401


async def test_c118_revoked_key_is_401_on_the_next_request(client: httpx.AsyncClient, owner_token: str) -> None:
    key_id, key = await new_key(client, owner_token)
    assert (await gql(client, ORG, headers=with_key(key))).status_code == 200  # now cached
    revoked = (await gql(client, REVOKE, {"id": key_id}, token=owner_token)).json()
    assert revoked["data"]["revokeApiKey"]["revokedAt"]
    assert (await gql(client, ORG, headers=with_key(key))).status_code == 401
    listed = (await gql(client, KEYS, token=owner_token)).json()["data"]["organization"]["apiKeys"]
    assert listed[0]["revokedAt"]


# -- rotation -------------------------------------------------------------------------------------------


async def test_rotation_keeps_the_old_secret_for_the_grace_period(client: httpx.AsyncClient, owner_token: str) -> None:
    key_id, old = await new_key(client, owner_token)
    assert (await gql(client, ORG, headers=with_key(old))).status_code == 200
    grace = 5  # long enough for the two requests below on a loaded machine
    rotating = time.monotonic()
    rotated = (await gql(client, ROTATE, {"id": key_id, "g": grace}, token=owner_token)).json()["data"]["rotateApiKey"]
    new = rotated["secret"]
    assert rotated["apiKey"]["id"] == key_id
    assert new != old
    assert parse(new).prefix == parse(old).prefix
    assert (await gql(client, ORG, headers=with_key(old))).status_code == 200
    assert (await gql(client, ORG, headers=with_key(new))).status_code == 200
    await asyncio.sleep(max(0.0, rotating + grace + 0.2 - time.monotonic()))
    assert (await gql(client, ORG, headers=with_key(old))).status_code == 401
    assert (await gql(client, ORG, headers=with_key(new))).status_code == 200


async def test_rotation_without_grace_stops_the_old_secret_at_once(client: httpx.AsyncClient, owner_token: str) -> None:
    key_id, old = await new_key(client, owner_token)
    assert (await gql(client, ORG, headers=with_key(old))).status_code == 200
    new = (await gql(client, ROTATE, {"id": key_id}, token=owner_token)).json()["data"]["rotateApiKey"]["secret"]
    assert (await gql(client, ORG, headers=with_key(old))).status_code == 401
    assert (await gql(client, ORG, headers=with_key(new))).status_code == 200


# -- C-119 / C-123: what a key may not do -------------------------------------------------------------------


async def test_c119_key_without_the_scope_cannot_mutate_nothing_written(
    client: httpx.AsyncClient, owner_token: str, database_url: str
) -> None:
    victim_id, _ = await new_key(client, owner_token, name="victim")
    _, key = await new_key(client, owner_token, scopes=["organization:read", "apikeys:read"])
    documents = [
        (REVOKE, {"id": victim_id}),
        ("mutation($id: ID!) { a: revokeApiKey(id: $id) { id } b: revokeApiKey(id: $id) { id } }", {"id": victim_id}),
        ("mutation($id: ID!) { ...F } fragment F on Mutation { revokeApiKey(id: $id) { id } }", {"id": victim_id}),
        ('mutation { addMember(email: "x@acme.test", role: "viewer") { invitationToken } }', {}),
        ('mutation { updateOrganization(input: {name: "pwned"}) { name } }', {}),
    ]
    for document, variables in documents:
        r = await gql(client, document, variables, headers=with_key(key))
        assert r.status_code == 403, (document, r.text)
        assert set(error_codes(r.json())) == {"FORBIDDEN"}
    assert sql(database_url, "SELECT revoked_at FROM api_keys WHERE id = :id", id=victim_id) == [(None,)]
    assert sql(database_url, "SELECT count(*) FROM memberships")[0][0] == 1
    assert sql(database_url, "SELECT name FROM organizations")[0][0] == "Acme"


async def test_c123_a_key_cannot_sign_in_refresh_or_change_passwords(
    client: httpx.AsyncClient, owner_token: str, tenant: Tenant
) -> None:
    every = ["organization:read", "apikeys:manage", "apikeys:read", "members:manage", "members:read"]
    _, key = await new_key(client, owner_token, scopes=every)
    auth = await login(client, tenant)
    documents = [
        (
            "mutation($e: String!, $p: String!) { login(email: $e, password: $p) { accessToken } }",
            {"e": tenant.email, "p": tenant.password},
        ),
        ("mutation($t: String) { refreshToken(refreshToken: $t) { accessToken } }", {"t": auth["refreshToken"]}),
        ('mutation { changePassword(currentPassword: "a", newPassword: "b") }', {}),
        ("mutation { logout }", {}),
    ]
    for document, variables in documents:
        r = await gql(client, document, variables, headers=with_key(key))
        assert r.status_code == 403, (document, r.text)
        assert error_codes(r.json()) == ["FORBIDDEN"]


async def test_c123_creating_keys_needs_the_scope_explicitly(client: httpx.AsyncClient, owner_token: str) -> None:
    _, plain = await new_key(client, owner_token, scopes=["organization:read"])
    r = await gql(client, CREATE, {"input": {"name": "x", "scopes": ["organization:read"]}}, headers=with_key(plain))
    assert r.status_code == 403
    assert error_codes(r.json()) == ["FORBIDDEN"]
    _, manager = await new_key(client, owner_token, scopes=["organization:read", "apikeys:manage"])
    made = await gql(
        client, CREATE, {"input": {"name": "y", "scopes": ["organization:read"]}}, headers=with_key(manager)
    )
    assert made.json()["data"]["createApiKey"]["secret"]
    beyond = await gql(client, CREATE, {"input": {"name": "z", "scopes": ["members:read"]}}, headers=with_key(manager))
    assert error_codes(beyond.json()) == ["FORBIDDEN"]


# -- C-120: IP allowlist -----------------------------------------------------------------------------------


async def test_c120_allowlist_refuses_other_addresses_and_spoofed_forwarding(
    database_url: str, signing_key: str, tenant: Tenant
) -> None:
    app = create_app(make_settings(database_url, signing_key, trusted_proxies=["10.0.0.0/8"]))
    async with (
        running(app, client_ip="203.0.113.7") as outside,
        running(app, client_ip="198.51.100.9") as inside,
        running(app, client_ip="10.1.2.3") as proxy,
    ):
        token = (await login(outside, tenant))["accessToken"]
        _, key = await new_key(outside, token, allowedIps=["198.51.100.0/24"])
        refused = await gql(outside, ORG, headers=with_key(key))
        assert refused.status_code == 403
        assert error_codes(refused.json()) == ["FORBIDDEN"]
        spoofed = await gql(outside, ORG, headers={**with_key(key), "X-Forwarded-For": "198.51.100.5"})
        assert spoofed.status_code == 403
        assert (await gql(inside, ORG, headers=with_key(key))).status_code == 200
        via_proxy = await gql(proxy, ORG, headers={**with_key(key), "X-Forwarded-For": "198.51.100.5"})
        assert via_proxy.status_code == 200
        proxied_outsider = await gql(proxy, ORG, headers={**with_key(key), "X-Forwarded-For": "203.0.113.7"})
        assert proxied_outsider.status_code == 403


# -- bad inputs --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"allowedIps": ["not-a-cidr"]}, "allowedIps"),
        ({"allowedIps": ["10.0.0.0/33"]}, "allowedIps"),
        ({"expiresAt": "2020-01-01T00:00:00Z"}, "expiresAt"),
        ({"scopes": ["projects:delete"]}, "scopes"),
        ({"scopes": ["platform:audit:read"]}, "scopes"),
        ({"scopes": []}, "scopes"),
        ({"name": ""}, "name"),
        ({"rateLimitPerMinute": 0}, "rateLimitPerMinute"),
    ],
)
async def test_bad_input_is_refused(
    client: httpx.AsyncClient, owner_token: str, fields: dict[str, Any], field: str, database_url: str
) -> None:
    body = await create_key(client, owner_token, **fields)
    assert error_codes(body) == ["BAD_USER_INPUT"], body
    assert body["errors"][0]["extensions"].get("field") == field
    assert sql(database_url, "SELECT count(*) FROM api_keys")[0][0] == 0


async def test_scopes_beyond_the_creator_are_forbidden(client: httpx.AsyncClient, database_url: str) -> None:
    admin = await make_tenant(database_url, slug="adm", email="admin@adm.test", role="admin")
    token = (await login(client, admin))["accessToken"]
    body = await create_key(client, token, scopes=["organization:read", "plan:manage"])
    assert error_codes(body) == ["FORBIDDEN"]
    assert body["errors"][0]["extensions"]["requiredScopes"] == [["plan:manage"]]


# -- C-109 and tenancy ---------------------------------------------------------------------------------------


async def test_c109_key_of_tenant_a_cannot_touch_tenant_b(
    client: httpx.AsyncClient, owner_token: str, database_url: str
) -> None:
    other = await make_tenant(database_url, slug="globex", email="owner@globex.test")
    other_token = (await login(client, other))["accessToken"]
    b_key_id, b_key = await new_key(client, other_token)
    _, a_key = await new_key(client, owner_token, scopes=["organization:read", "apikeys:manage", "apikeys:read"])
    for document, variables in [(REVOKE, {"id": b_key_id}), (ROTATE, {"id": b_key_id, "g": 0})]:
        r = (await gql(client, document, variables, headers=with_key(a_key))).json()
        assert error_codes(r) == ["NOT_FOUND"]
    r = (await gql(client, '{ organization(slug: "globex") { apiKeys { id } } }', headers=with_key(a_key))).json()
    assert error_codes(r) == ["NOT_FOUND"]
    assert (await gql(client, ORG, headers=with_key(b_key))).json()["data"]["organization"]["slug"] == "globex"


async def test_key_of_a_deleted_organization_is_401(
    client: httpx.AsyncClient, owner_token: str, database_url: str, tenant: Tenant
) -> None:
    """C-110: offboarding a tenant ends its keys."""
    _, key = await new_key(client, owner_token)
    for table in (
        "security_events",  # the key without expiry is one
        "sign_ins",
        "api_keys",
        "refresh_tokens",
        "refresh_token_families",
        "auth_sessions",
        "invitations",
        "memberships",
        "roles",
    ):
        sql(database_url, f"DELETE FROM {table} WHERE organization_id = :o", o=tenant.org_id)
    sql(database_url, "DELETE FROM organizations WHERE id = :o", o=tenant.org_id)
    assert (await gql(client, ORG, headers=with_key(key))).status_code == 401


async def test_key_follows_its_creator_and_dies_with_their_membership(
    client: httpx.AsyncClient, database_url: str, tenant: Tenant
) -> None:
    """The rule: a key acts for its holder, here its creator. Its permissions are its scopes ∩ the holder's
    current ones, and once the holder is removed from the organization the key is 401 (C-131)."""
    second = await make_tenant(database_url, slug="second", email="second@acme.test")
    sql(
        database_url,
        "INSERT INTO memberships (id, organization_id, user_id, role, created_at) VALUES ('m-2', :o, :u, 'owner', :t)",
        o=tenant.org_id,
        u=second.user_id,
        t=datetime(2026, 1, 1, tzinfo=UTC),
    )
    first_token = (await login(client, tenant))["accessToken"]
    _, key = await new_key(client, first_token, scopes=["organization:read", "billing:read"])
    assert (await gql(client, "{ organization { billingEmail } }", headers=with_key(key))).status_code == 200
    second_token = (
        await gql(
            client,
            """mutation { login(email: "second@acme.test",
        password: "correct horse battery staple", organization: "acme") { accessToken } }""",
        )
    ).json()
    second_token = second_token["data"]["login"]["accessToken"]
    first_membership = sql(
        database_url,
        "SELECT id FROM memberships WHERE user_id = :u AND organization_id = :o",
        u=tenant.user_id,
        o=tenant.org_id,
    )[0][0]
    demote = 'mutation($id: ID!) { updateMemberRole(membershipId: $id, role: "viewer") { role } }'
    assert (await gql(client, demote, {"id": first_membership}, token=second_token)).json()["data"]
    narrowed = (await gql(client, "{ organization { slug billingEmail } }", headers=with_key(key))).json()
    assert narrowed["data"]["organization"]["slug"] == "acme"
    assert error_codes(narrowed) == ["FORBIDDEN"]
    removed = await gql(
        client, "mutation($id: ID!) { removeMember(membershipId: $id) }", {"id": first_membership}, token=second_token
    )
    assert removed.json() == {"data": {"removeMember": True}, "extensions": {"cost": cost_of(10)}}
    assert (await gql(client, ORG, headers=with_key(key))).status_code == 401


# -- the key's own limit ------------------------------------------------------------------------------------


async def test_key_rate_limit_is_429_with_retry_after(client: httpx.AsyncClient, owner_token: str) -> None:
    _, key = await new_key(client, owner_token, rateLimitPerMinute=3)
    for _ in range(3):
        assert (await gql(client, ORG, headers=with_key(key))).status_code == 200
    r = await gql(client, ORG, headers=with_key(key))
    assert r.status_code == 429
    # a hit counts until the end of its 0.5 s slice plus the minute (docs/limits.md, "Windows")
    assert 1 <= int(r.headers["retry-after"]) <= 61
    assert error_codes(r.json()) == ["RATE_LIMITED"]


# -- quota ------------------------------------------------------------------------------------------------


async def test_plan_quota_is_enforced_and_revoked_keys_do_not_count(
    client: httpx.AsyncClient, database_url: str
) -> None:
    free = await make_tenant(database_url, slug="tiny", email="owner@tiny.test", plan="free")
    token = (await login(client, free))["accessToken"]
    first, _ = await new_key(client, token)
    await new_key(client, token)
    refused = await create_key(client, token)
    assert error_codes(refused) == ["QUOTA_EXCEEDED"]
    await gql(client, REVOKE, {"id": first}, token=token)
    await new_key(client, token)


async def test_concurrent_creations_at_the_boundary_admit_exactly_the_limit(
    client: httpx.AsyncClient, database_url: str
) -> None:
    """C-111's rule for API keys: 12 parallel creations on a FREE plan (2 keys) → exactly 2 succeed."""
    free = await make_tenant(database_url, slug="race", email="owner@race.test", plan="free")
    token = (await login(client, free))["accessToken"]
    results = await asyncio.gather(*(create_key(client, token, name=f"k{i}") for i in range(12)))
    ok = [r for r in results if r.get("data")]
    assert len(ok) == 2, results
    assert all(error_codes(r) == ["QUOTA_EXCEEDED"] for r in results if not r.get("data"))
    assert sql(database_url, "SELECT count(*) FROM api_keys")[0][0] == 2


# -- lastUsedAt -----------------------------------------------------------------------------------------------


async def test_last_used_at_is_written_off_the_request_path_and_survives_restart(
    database_url: str, signing_key: str, tenant: Tenant
) -> None:
    settings = make_settings(database_url, signing_key)
    first = create_app(settings)
    async with running(first) as c:
        token = (await login(c, tenant))["accessToken"]
        _, key = await new_key(c, token)
        assert (await gql(c, ORG, headers=with_key(key))).status_code == 200
    second = create_app(settings)
    async with running(second) as c:
        token = (await login(c, tenant))["accessToken"]
        (listed,) = (await gql(c, KEYS, token=token)).json()["data"]["organization"]["apiKeys"]
        assert listed["lastUsedAt"] is not None


def test_last_used_is_noted_at_most_once_a_minute() -> None:
    now = [1000.0]
    recorder = LastUsedRecorder(db=None, clock=lambda: now[0])  # type: ignore[arg-type]
    recorder.record("k")
    recorder._pending.clear()
    now[0] += 59
    recorder.record("k")
    assert recorder.pending == {}
    now[0] += 2
    recorder.record("k")
    assert recorder.pending == {"k": 1061.0}
