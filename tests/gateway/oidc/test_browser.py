"""End to end in headless Chromium: sign in through node `oidc-provider`, query from the page, log out.

Debian's `chromium` (/usr/bin/chromium, installed by `.ci/run`) driven by Playwright; the gateway is
served by uvicorn on a loopback port, the provider is node `oidc-provider` on another.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn

from gateway.app import create_app
from tests.conftest import _truncate, claim_domain, make_settings, make_tenant, unavailable
from tests.gateway.oidc.conftest import CONFIGURE
from tests.idp import node_provider
from tests.idp.node_provider import oidc_provider
from tests.services import ServiceUnavailable, free_port

CHROMIUM = os.environ.get("PORTCULLIS_TEST_CHROMIUM", "/usr/bin/chromium")


@contextlib.contextmanager
def serving(app: Any, port: int) -> Iterator[None]:
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", ws="none", access_log=False)
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "the gateway did not start"
        time.sleep(0.05)
    try:
        yield
    finally:
        server.should_exit = True
        thread.join(timeout=20)


@pytest.fixture
def chromium() -> str:
    if not os.path.exists(CHROMIUM):
        unavailable(f"no Chromium at {CHROMIUM} (Debian package chromium; .ci/run installs it)")
    return CHROMIUM


@pytest.mark.slow
async def test_browser_signs_in_queries_and_logs_out(sqlite_url: str, signing_key: str, chromium: str) -> None:
    from playwright.async_api import async_playwright

    port = free_port()
    gateway = f"http://127.0.0.1:{port}"
    try:
        provider = oidc_provider([f"{gateway}/auth/oidc/callback"])
        issuer = provider.__enter__()
    except ServiceUnavailable as exc:
        unavailable(str(exc))
    try:
        tenant = await make_tenant(sqlite_url)
        claim_domain(sqlite_url, tenant.org_id, "acme.test")
        settings = make_settings(sqlite_url, signing_key, public_url=gateway, frontend_return_paths=["/healthz"])
        with serving(create_app(settings), port):
            import httpx

            async with httpx.AsyncClient(base_url=gateway) as api:
                r = await api.post(
                    "/graphql",
                    json={
                        "query": "mutation($e:String!,$p:String!){login(email:$e,password:$p){accessToken}}",
                        "variables": {"e": tenant.email, "p": tenant.password},
                    },
                )
                token = r.json()["data"]["login"]["accessToken"]
                r = await api.post(
                    "/graphql",
                    headers={"Authorization": f"Bearer {token}"},
                    json={
                        "query": CONFIGURE,
                        "variables": {
                            "input": {
                                "issuer": issuer,
                                "clientId": node_provider.CLIENT_ID,
                                "clientSecret": node_provider.CLIENT_SECRET,
                                "scopes": ["openid", "email", "profile", "groups"],
                            }
                        },
                    },
                )
                assert r.json().get("data"), r.text
            async with async_playwright() as pw:
                browser = await pw.chromium.launch(
                    executable_path=chromium, headless=True, args=["--no-sandbox", "--disable-dev-shm-usage"]
                )
                try:
                    # the landing page stands in for the frontend: the gateway's own strict CSP
                    # (default-src 'none') on /healthz would forbid the page's fetch
                    page = await browser.new_page(bypass_csp=True)
                    await page.goto(f"{gateway}/auth/sso/acme?return_to=/healthz")
                    assert page.url.startswith(issuer), page.url
                    await page.fill("input[name=login]", "jane")
                    await page.fill("input[name=password]", "any password")
                    await page.click("button[type=submit]")
                    await page.wait_for_url(f"{gateway}/healthz", timeout=20_000)
                    cookies = {c["name"]: c for c in await page.context.cookies(gateway)}
                    session = cookies["__Host-portcullis"]
                    assert session["httpOnly"]
                    assert session["secure"]
                    assert session["sameSite"] == "Lax"
                    result = await page.evaluate("""async () => {
                        const csrf = document.cookie.split('; ').find(c => c.startsWith('__Host-portcullis-csrf='))
                            .split('=')[1];
                        const me = await fetch('/graphql', {method: 'POST', headers: {
                            'content-type': 'application/json', 'x-csrf-token': csrf},
                            body: JSON.stringify({query: '{ me { user { email } role authMethod } }'})});
                        const body = await me.json();
                        const visible = document.cookie.includes('__Host-portcullis=');
                        const out = await fetch('/auth/logout', {method: 'POST', headers: {'x-csrf-token': csrf}});
                        const after = await fetch('/graphql?query=' + encodeURIComponent('{ me { role } }'));
                        return {body, visible, logout: out.status, after: after.status};
                    }""")
                    assert result["body"]["data"] == {
                        "me": {"user": {"email": "jane@acme.test"}, "role": "viewer", "authMethod": "oidc"}
                    }
                    assert result["visible"] is False  # HttpOnly: the page cannot read the credential
                    assert result["logout"] == 200
                    assert result["after"] == 200  # anonymous now: the cookie is gone
                    names = {c["name"] for c in await page.context.cookies(gateway)}
                    assert "__Host-portcullis" not in names
                finally:
                    await browser.close()
    finally:
        provider.__exit__(None, None, None)
        _truncate(sqlite_url)
