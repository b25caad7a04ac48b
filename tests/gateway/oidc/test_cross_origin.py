"""A frontend on another origin calls the gateway from headless Chromium (docs/browsers.md): with the browser
session that single sign-on opened (the cookie and its CSRF token) and with a Bearer token; a page of an
origin not in PORTCULLIS_CORS_ALLOWED_ORIGINS can read nothing.

Three loopback servers: the gateway (127.0.0.1:A), the frontend's page (127.0.0.1:B, allowed) and another
page (127.0.0.1:C, not allowed). B and C are other origins than A but the same site, as a frontend served by
its development server on another port is, so the session cookie (SameSite=Lax) rides along.
"""

from __future__ import annotations

import os
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import HTMLResponse
from starlette.routing import Route

from gateway.app import create_app
from tests.conftest import claim_domain, gql, login, make_settings, make_tenant, unavailable
from tests.gateway.oidc.conftest import CONFIGURE
from tests.idp import node_provider
from tests.idp.node_provider import oidc_provider
from tests.served import serving
from tests.services import ServiceUnavailable, free_port

CHROMIUM = os.environ.get("PORTCULLIS_TEST_CHROMIUM", "/usr/bin/chromium")
HAVE_CHROMIUM = os.path.exists(CHROMIUM)

ME = "{ me { user { email } role authMethod } }"

# what the frontend's code does, run in its page: the gateway's URL and the query are its arguments
WITH_COOKIE = """async ([gateway, query]) => {
    const csrf = document.cookie.split('; ').find((c) => c.startsWith('__Host-portcullis-csrf='));
    const call = (headers) => fetch(gateway + '/graphql', {method: 'POST', credentials: 'include',
        headers: {'content-type': 'application/json', ...headers}, body: JSON.stringify({query})});
    const signed = await call({'x-csrf-token': csrf.split('=')[1]});
    const unsigned = await call({});
    return {status: signed.status, body: await signed.json(), requestId: signed.headers.get('x-request-id'),
            withoutCsrf: unsigned.status, withoutCsrfBody: await unsigned.json()};
}"""

WITH_BEARER = """async ([gateway, email, password, query]) => {
    const post = (body, headers) => fetch(gateway + '/graphql', {method: 'POST', credentials: 'omit',
        headers: {'content-type': 'application/json', ...headers}, body: JSON.stringify(body)});
    const signIn = await post({query: 'mutation($e: String!, $p: String!) { login(email: $e, password: $p) '
        + '{ accessToken } }', variables: {e: email, p: password}});
    const token = (await signIn.json()).data.login.accessToken;
    const me = await post({query}, {authorization: 'Bearer ' + token});
    const bad = await post({query}, {authorization: 'Bearer not-a-token'});
    return {status: me.status, body: await me.json(), requestId: me.headers.get('x-request-id'),
            badStatus: bad.status, badAuthenticate: bad.headers.get('www-authenticate')};
}"""

FROM_ELSEWHERE = """async ([gateway, query]) => {
    const attempt = async (init) => {
        try { const r = await fetch(gateway + '/graphql', init); return 'read ' + r.status; }
        catch (e) { return e.name; }
    };
    return {
        withCookie: await attempt({method: 'POST', credentials: 'include',
            headers: {'content-type': 'application/json', 'x-csrf-token': 'x'}, body: JSON.stringify({query})}),
        simple: await attempt({method: 'GET', credentials: 'omit'}),
    };
}"""


def page_server() -> Starlette:
    async def index(_: Any) -> HTMLResponse:
        return HTMLResponse("<!doctype html><title>frontend</title><p>frontend</p>")

    return Starlette(routes=[Route("/", index)])


@pytest.mark.slow
async def test_a_page_on_another_origin_calls_with_the_cookie_session_and_with_a_bearer_token(
    database_url: str, signing_key: str
) -> None:
    if not HAVE_CHROMIUM:
        unavailable(f"no Chromium at {CHROMIUM} (Debian package chromium; .ci/run installs it)")
    from playwright.async_api import async_playwright

    port, frontend_port, other_port = free_port(), free_port(), free_port()
    gateway = f"http://127.0.0.1:{port}"
    frontend = f"http://127.0.0.1:{frontend_port}"
    try:
        provider = oidc_provider([f"{gateway}/auth/oidc/callback"])
        issuer = provider.__enter__()
    except ServiceUnavailable as exc:
        unavailable(str(exc))
    try:
        tenant = await make_tenant(database_url)
        claim_domain(database_url, tenant.org_id, "acme.test")
        settings = make_settings(
            database_url,
            signing_key,
            public_url=gateway,
            frontend_return_paths=["/healthz"],
            cors_allowed_origins=frontend,
        )
        with (
            serving(create_app(settings), port),
            serving(page_server(), frontend_port),
            serving(page_server(), other_port) as elsewhere,
        ):
            async with httpx.AsyncClient(base_url=gateway) as api:
                owner = (await login(api, tenant))["accessToken"]
                configured = await gql(
                    api,
                    CONFIGURE,
                    {
                        "input": {
                            "issuer": issuer,
                            "clientId": node_provider.CLIENT_ID,
                            "clientSecret": node_provider.CLIENT_SECRET,
                            "scopes": ["openid", "email", "profile", "groups"],
                        }
                    },
                    token=owner,
                )
                assert configured.json().get("data"), configured.text
            async with async_playwright() as pw:
                browser = await pw.chromium.launch(
                    executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-dev-shm-usage"]
                )
                try:
                    page = await browser.new_page()
                    # single sign-on at the gateway opens the browser session
                    await page.goto(f"{gateway}/auth/sso/acme?return_to=/healthz")
                    assert page.url.startswith(issuer), page.url
                    await page.fill("input[name=login]", "jane")
                    await page.fill("input[name=password]", "any password")
                    await page.click("button[type=submit]")
                    await page.wait_for_url(f"{gateway}/healthz", timeout=20_000)

                    await page.goto(frontend)
                    cookie = await page.evaluate(WITH_COOKIE, [gateway, ME])
                    assert cookie["status"] == 200, cookie
                    assert cookie["body"]["data"] == {
                        "me": {"user": {"email": "jane@acme.test"}, "role": "viewer", "authMethod": "oidc"}
                    }
                    assert cookie["requestId"]  # exposed to the page
                    assert cookie["withoutCsrf"] == 403  # the cookie alone is not enough for a POST
                    assert cookie["withoutCsrfBody"]["errors"][0]["extensions"]["code"] == "FORBIDDEN"

                    bearer = await page.evaluate(WITH_BEARER, [gateway, tenant.email, tenant.password, ME])
                    assert bearer["status"] == 200, bearer
                    assert bearer["body"]["data"]["me"]["user"]["email"] == tenant.email
                    assert bearer["body"]["data"]["me"]["authMethod"] == "password"
                    assert bearer["requestId"]
                    assert bearer["badStatus"] == 401
                    assert bearer["badAuthenticate"].startswith("Bearer")

                    # a page of an origin not allowed reads nothing, with the cookie or without
                    await page.goto(elsewhere)
                    refused = await page.evaluate(FROM_ELSEWHERE, [gateway, ME])
                    assert refused == {"withCookie": "TypeError", "simple": "TypeError"}
                finally:
                    await browser.close()
    finally:
        provider.__exit__(None, None, None)
