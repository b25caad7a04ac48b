"""Address blocks at the edge (docs/address-blocking.md): a tenant's blocks refuse that tenant's credentials
and sign-ins from the address, and nobody else's; a platform-wide block refuses everything from it before
any other work; blocks expire and are lifted; every change is audited."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from authz import AuthMethod
from gateway.app import create_app
from identity.sessions import create_browser_session
from resolvers import address_blocks
from resolvers.deps import RequestContext
from tests.conftest import (
    CLIENT_IP,
    Tenant,
    error_codes,
    gql,
    login,
    make_settings,
    make_tenant,
    running,
    sql,
)
from tests.schema.test_api_keys import ORG, new_key, with_key

ADMIN_IP = "198.51.100.10"
BLOCKED_IP = CLIENT_IP
OTHER_IP = "192.0.2.50"

BLOCK = """
mutation Block($cidr: String!, $reason: String!, $expiresAt: DateTime) {
  blockAddress(cidr: $cidr, reason: $reason, expiresAt: $expiresAt) { id cidr reason source signal expiresAt }
}
"""
UNBLOCK = "mutation Unblock($id: ID!) { unblockAddress(id: $id) }"
BLOCKED = "{ organization { blockedAddresses { id cidr reason source } } }"
LOGIN = "mutation L($e: String!, $p: String!) { login(email: $e, password: $p) { accessToken } }"


def client_at(app: Any, ip: str) -> httpx.AsyncClient:
    """Another client of the same (running) app, from `ip`."""
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app, client=(ip, 40000)), base_url="http://testserver")


@contextlib.asynccontextmanager
async def gateway(database_url: str, signing_key: str, **overrides: Any) -> AsyncIterator[Any]:
    """The app running, with a client from the administrator's address (`app.state.client`)."""
    app = create_app(make_settings(database_url, signing_key, **overrides))
    async with running(app, client_ip=ADMIN_IP) as admin:
        app.state.client = admin
        yield app


def assert_blocked(r: httpx.Response) -> None:
    assert r.status_code == 403, r.text
    body = r.json()
    assert error_codes(body) == ["ADDRESS_BLOCKED"]
    assert body["errors"][0]["message"] == "Requests from this address are blocked."
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["x-request-id"]


async def block(client: httpx.AsyncClient, token: str, cidr: str, **variables: Any) -> dict[str, Any]:
    r = await gql(client, BLOCK, {"cidr": cidr, "reason": "credential stuffing", **variables}, token=token)
    body = r.json()
    assert body.get("data"), body
    assert body["data"]["blockAddress"], body
    return body["data"]["blockAddress"]  # type: ignore[no-any-return]


async def cookie_for(app: Any, t: Tenant) -> str:
    """A browser session of `t`'s owner, as single sign-on opens one: the cookie's header value."""
    services = app.state.services
    async with services.db.transaction() as db:
        session = await create_browser_session(
            db,
            user_id=t.user_id,
            organization_id=t.org_id,
            auth_method=AuthMethod.OIDC.value,
            client_ip=BLOCKED_IP,
            user_agent=None,
            lifetime_seconds=3600,
            now=services.now(),
        )
    return f"__Host-portcullis={services.browser.cookie_value(session.id)}"


async def as_operator(app: Any, action: Any, *args: Any) -> Any:
    """A service function run as the platform operator (what `portcullis blocks ...` does) on the app's
    own services."""
    ctx = RequestContext.for_operator(app.state.services, "ops")
    async with ctx.unit_of_work():
        return await action(ctx, *args)


async def test_tenant_block_refuses_that_tenants_credentials_from_the_address(
    database_url: str, signing_key: str
) -> None:
    a = await make_tenant(database_url)
    b = await make_tenant(database_url, slug="globex", email="owner@globex.test")
    async with gateway(database_url, signing_key) as app, client_at(app, BLOCKED_IP) as there:
        admin_token = (await login(app.state.client, a))["accessToken"]
        bearer = (await login(there, a))["accessToken"]
        other_tenant = (await login(there, b))["accessToken"]
        _, key = await new_key(app.state.client, admin_token)
        cookie = await cookie_for(app, a)
        cookie_query = {"query": "{ organization { id } }"}
        assert (await gql(there, ORG, token=bearer)).status_code == 200
        with_bearer = {"Authorization": f"Bearer {bearer}"}
        assert (
            await there.get("/reports/00000000-0000-0000-0000-000000000000.csv", headers=with_bearer)
        ).status_code == 404
        assert (await there.get("/graphql", params=cookie_query, headers={"cookie": cookie})).status_code == 200

        made = await block(app.state.client, admin_token, f"{BLOCKED_IP}/24")
        assert (made["cidr"], made["source"], made["expiresAt"]) == ("203.0.113.0/24", "MANUAL", None)

        assert_blocked(await gql(there, ORG, token=bearer))
        assert_blocked(await gql(there, ORG, headers=with_key(key)))
        assert_blocked(await there.get("/graphql", params=cookie_query, headers={"cookie": cookie}))
        # an HTTP route, refused before it runs
        assert_blocked(await there.get("/reports/00000000-0000-0000-0000-000000000000.csv", headers=with_bearer))
        # a sign-in into the tenant, with the right password
        r = await gql(there, LOGIN, {"e": a.email, "p": a.password})
        assert (r.status_code, error_codes(r.json())) == (403, ["ADDRESS_BLOCKED"]), r.text
        # another tenant's credential, an anonymous caller, and the tenant from elsewhere are not refused
        assert (await gql(there, ORG, token=other_tenant)).status_code == 200
        assert (await gql(there, "{ __typename }")).status_code == 200
        assert (await gql(app.state.client, ORG, headers=with_key(key))).status_code == 200
        async with client_at(app, OTHER_IP) as elsewhere:
            assert (await gql(elsewhere, ORG, token=bearer)).status_code == 200
        assert (await gql(there, LOGIN, {"e": b.email, "p": b.password})).json()["data"]["login"]

        listed = (await gql(app.state.client, BLOCKED, token=admin_token)).json()["data"]["organization"]
        assert listed["blockedAddresses"] == [
            {"id": made["id"], "cidr": "203.0.113.0/24", "reason": "credential stuffing", "source": "MANUAL"}
        ]
        globex_admin = (await login(app.state.client, b))["accessToken"]
        others = (await gql(app.state.client, BLOCKED, token=globex_admin)).json()["data"]["organization"]
        assert others["blockedAddresses"] == []
        metrics = (await app.state.client.get("/metrics")).text
        assert 'portcullis_address_blocks_active{scope="tenant"} 1.0' in metrics
        assert 'portcullis_address_block_refusals_total{scope="tenant"} 5.0' in metrics

    audit = sql(database_url, "SELECT chain, resource_id FROM audit_log WHERE action = 'address_blocked'")
    assert audit == [(a.org_id, made["id"])]
    events = sql(
        database_url, "SELECT organization_id, kind, client_ip FROM security_events WHERE kind = 'address_blocked'"
    )
    assert events == [(a.org_id, "address_blocked", ADMIN_IP)]


async def test_platform_block_refuses_everything_before_any_other_work(database_url: str, signing_key: str) -> None:
    t = await make_tenant(database_url)
    async with gateway(database_url, signing_key) as app, client_at(app, BLOCKED_IP) as there:
        token = (await login(there, t))["accessToken"]
        row = await as_operator(app, address_blocks.block_platform, "203.0.113.0/28", "botnet", None)
        assert_blocked(await gql(there, ORG, token=token))
        assert_blocked(await gql(there, "{ __typename }"))
        assert_blocked(await gql(there, LOGIN, {"e": t.email, "p": t.password}))
        # before the body limit, the request-target check and authentication: whatever is sent
        assert_blocked(await there.post("/graphql", content=b"x" * (2 * 1024 * 1024)))
        assert_blocked(await there.get("/graphql", params={"query": "{ __typename }", "token": "x"}))
        assert_blocked(await gql(there, ORG, headers={"Authorization": "Bearer not-a-token"}))
        assert_blocked(await there.get("/.well-known/jwks.json"))
        assert_blocked(await there.get("/auth/sso/acme"))
        # the probes and the scraper stay reachable
        for path in ("/healthz", "/readyz", "/metrics"):
            assert (await there.get(path)).status_code == 200, path
        async with client_at(app, "203.0.113.16") as outside:
            assert (await gql(outside, ORG, token=token)).status_code == 200
        assert (await gql(app.state.client, ORG, token=token)).status_code == 200

        assert await as_operator(app, address_blocks.unblock_platform, row.id) is True
        assert (await gql(there, ORG, token=token)).status_code == 200
        assert await as_operator(app, address_blocks.unblock_platform, row.id) is False
    audit = sql(database_url, "SELECT chain, action, actor_id FROM audit_log WHERE action LIKE 'address_%' ORDER BY at")
    # the second lift lifted nothing, and says so in its entry
    assert audit == [("platform", "address_blocked", "ops"), *[("platform", "address_unblocked", "ops")] * 2]
    assert sql(database_url, "SELECT count(*) FROM security_events") == [(0,)]


async def test_allowlisted_address_is_never_refused(database_url: str, signing_key: str) -> None:
    t = await make_tenant(database_url)
    async with (
        gateway(database_url, signing_key, block_allowlist=f"{BLOCKED_IP}/32") as app,
        client_at(app, BLOCKED_IP) as there,
    ):
        token = (await login(there, t))["accessToken"]
        admin = (await login(app.state.client, t))["accessToken"]
        await as_operator(app, address_blocks.block_platform, "203.0.113.0/24", "botnet", None)
        await block(app.state.client, admin, "203.0.113.0/24")
        assert (await gql(there, ORG, token=token)).status_code == 200
        async with client_at(app, "203.0.113.8") as neighbour:
            assert_blocked(await gql(neighbour, ORG, token=token))


async def test_block_expires(database_url: str, signing_key: str) -> None:
    t = await make_tenant(database_url)
    async with gateway(database_url, signing_key) as app, client_at(app, BLOCKED_IP) as there:
        admin = (await login(app.state.client, t))["accessToken"]
        token = (await login(there, t))["accessToken"]
        until = datetime.now(UTC) + timedelta(seconds=1.5)
        made = await block(app.state.client, admin, BLOCKED_IP, expiresAt=until.isoformat())
        assert made["cidr"] == f"{BLOCKED_IP}/32"
        assert made["expiresAt"]
        assert_blocked(await gql(there, ORG, token=token))
        await asyncio.sleep(max(0.0, (until - datetime.now(UTC)).total_seconds()) + 0.1)
        assert (await gql(there, ORG, token=token)).status_code == 200
        listed = (await gql(app.state.client, BLOCKED, token=admin)).json()["data"]["organization"]
        assert listed["blockedAddresses"] == []
        # lifting an expired block lifts nothing
        assert (await gql(app.state.client, UNBLOCK, {"id": made["id"]}, token=admin)).json()["data"] == {
            "unblockAddress": False
        }


async def test_unblock(database_url: str, signing_key: str) -> None:
    t = await make_tenant(database_url)
    async with gateway(database_url, signing_key) as app, client_at(app, BLOCKED_IP) as there:
        admin = (await login(app.state.client, t))["accessToken"]
        token = (await login(there, t))["accessToken"]
        made = await block(app.state.client, admin, "2001:db8::/48")
        async with client_at(app, "2001:db8::7") as v6:
            assert_blocked(await gql(v6, ORG, token=token))
            r = await gql(app.state.client, UNBLOCK, {"id": made["id"]}, token=admin)
            assert r.json()["data"] == {"unblockAddress": True}
            assert (await gql(v6, ORG, token=token)).status_code == 200
        r = await gql(app.state.client, UNBLOCK, {"id": made["id"]}, token=admin)
        assert r.json()["data"] == {"unblockAddress": False}
    actions = sql(database_url, "SELECT chain, action FROM audit_log WHERE action LIKE 'address_%' ORDER BY at")
    assert actions == [(t.org_id, "address_blocked"), (t.org_id, "address_unblocked"), (t.org_id, "address_unblocked")]


async def test_a_platform_block_from_the_command_line_in_embedded_mode(
    database_url: str, signing_key: str, monkeypatch: Any, tmp_path: Any, capsys: Any
) -> None:
    """No bus joins the command and the gateway without Redis: the gateway's periodic reload applies the
    command's block (its period here is one second; the bound leaves room for a loaded machine)."""
    import os

    from gateway import cli

    for name in list(os.environ):
        if name.startswith("PORTCULLIS_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PORTCULLIS_DATABASE_URL", database_url)
    t = await make_tenant(database_url)
    async with (
        gateway(database_url, signing_key, block_reload_seconds=1) as app,
        client_at(app, BLOCKED_IP) as there,
    ):
        token = (await login(there, t))["accessToken"]
        assert await asyncio.to_thread(cli.main, ["blocks", "add", BLOCKED_IP, "--reason", "abuse desk ticket"]) == 0
        assert capsys.readouterr().out.startswith(f"blocked {BLOCKED_IP}/32 platform-wide: ")
        started = asyncio.get_running_loop().time()
        while (r := await gql(there, ORG, token=token)).status_code == 200:
            assert asyncio.get_running_loop().time() - started < 10, "not applied by the periodic reload"
            await asyncio.sleep(0.05)
        assert_blocked(r)


async def test_a_block_command_leaves_nothing_running_when_it_returns(
    database_url: str, monkeypatch: Any, capsys: Any
) -> None:
    """The command's own process reloads its list when a block changes (the bus's subscriber starts that read):
    the read ends before the command's database and event loop do, so none is cut off half-way."""
    import argparse
    import os

    from gateway.cli.blocks import _blocks_command
    from gateway.cli.common import load_settings

    for name in list(os.environ):
        if name.startswith("PORTCULLIS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("PORTCULLIS_DATABASE_URL", database_url)
    await make_tenant(database_url)

    def command(**args: Any) -> tuple[int, set[str]]:
        async def run() -> tuple[int, set[str]]:
            code = await _blocks_command(load_settings(), argparse.Namespace(**args))
            left = {t.get_name() for t in asyncio.all_tasks() if t is not asyncio.current_task()}
            return code, left

        return asyncio.run(run())

    added = await asyncio.to_thread(
        command, blocks_command="add", cidr=OTHER_IP, reason="abuse desk ticket", expires_at=None
    )
    assert added == (0, set())
    block_id = capsys.readouterr().out.split(": ")[-1].strip()
    assert await asyncio.to_thread(command, blocks_command="remove", id=block_id) == (0, set())
    assert capsys.readouterr().out.strip() == f"lifted {block_id}"


def test_block_settings() -> None:
    import pytest
    from pydantic import ValidationError

    s = make_settings("sqlite:///unused", "unused", block_allowlist="10.0.0.0/8, 2001:db8::/32")
    assert s.block_allowlist == ["10.0.0.0/8", "2001:db8::/32"]
    assert make_settings("sqlite:///unused", "unused", block_durations_seconds="60,120").block_durations_seconds == [
        60,
        120,
    ]
    for bad in ({"block_allowlist": "not-a-cidr"}, {"block_durations_seconds": "0"}, {"block_rate_limited": -1}):
        with pytest.raises(ValidationError):
            make_settings("sqlite:///unused", "unused", **bad)
