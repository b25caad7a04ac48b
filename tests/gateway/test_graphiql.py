"""GraphiQL from the package's own files (gateway/graphiql.py, docs/browsers.md): the page and its files in
development, nothing in prod, and in headless Chromium with every request to another host aborted, GraphiQL
loads the schema and runs a query.

The screenshot in the docs is this test's: `PORTCULLIS_TEST_GRAPHIQL_PICTURE=docs/images .venv/bin/python -m
pytest tests/gateway/test_graphiql.py` writes docs/images/graphiql-offline.png.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from gateway.app import create_app
from gateway.graphiql import ASSETS, GRAPHIQL_CSP, VERSIONS
from tests.conftest import Tenant, login, make_settings, running, unavailable
from tests.gateway.test_edge import PROD_SECRETS
from tests.served import serving
from tests.services import free_port

CHROMIUM = os.environ.get("PORTCULLIS_TEST_CHROMIUM", "/usr/bin/chromium")
HAVE_CHROMIUM = os.path.exists(CHROMIUM)
PICTURE = os.environ.get("PORTCULLIS_TEST_GRAPHIQL_PICTURE")
FILES = ("graphiql.min.js", "graphiql.min.css", "react.production.min.js", "react-dom.production.min.js")


def test_vendored_files_are_the_registrys_and_licensed() -> None:
    sums = dict(reversed(line.split()) for line in (ASSETS / "SHA256SUMS").read_text().splitlines())
    assert sorted(sums) == sorted(FILES)
    for name, digest in sums.items():
        assert hashlib.sha256((ASSETS / name).read_bytes()).hexdigest() == digest, name
    for package in VERSIONS:
        assert (ASSETS / f"LICENSE.{package}").read_text().startswith("MIT License")
    sources = (ASSETS / "SOURCES.md").read_text()
    for package, version in VERSIONS.items():
        assert f"{package} {version}" in sources


@pytest.fixture(scope="module")
async def dev(sqlite_url: str, signing_key: str) -> AsyncIterator[httpx.AsyncClient]:
    async with running(create_app(make_settings(sqlite_url, signing_key, env="dev"))) as client:
        yield client


async def test_the_page_loads_only_the_gateways_own_files(dev: httpx.AsyncClient) -> None:
    r = await dev.get("/graphql", headers={"accept": "text/html"})
    assert r.status_code == 200
    assert r.headers["content-security-policy"] == GRAPHIQL_CSP.decode()
    assert "unsafe-inline" not in r.headers["content-security-policy"]
    assert "<script>" not in r.text  # no inline script: the policy would refuse it
    referenced = re.findall(r'(?:src|href)="([^"]+)"', r.text)
    assert referenced
    assert all(ref.startswith("/graphiql/") or ref == "data:," for ref in referenced), referenced
    for ref in referenced:
        if ref.startswith("/graphiql/"):
            asset = await dev.get(ref)
            assert asset.status_code == 200, ref
            assert asset.headers["cache-control"] == "public, max-age=86400"
            assert "etag" in asset.headers
            assert asset.headers["content-type"].split(";")[0] in ("text/javascript", "text/css"), ref
            again = await dev.get(ref, headers={"if-none-match": asset.headers["etag"]})
            assert again.status_code == 304


async def test_prod_serves_neither_page_nor_files(sqlite_url: str, signing_key: str) -> None:
    settings = make_settings(sqlite_url, signing_key, env="prod", **PROD_SECRETS)
    async with running(create_app(settings)) as client:
        r = await client.get("/graphql", headers={"accept": "text/html"})
        assert r.status_code == 404
        assert "graphiql" not in r.text.lower()
        for name in FILES:
            assert (await client.get(f"/graphiql/{name}")).status_code == 404


@pytest.mark.slow
async def test_graphiql_loads_the_schema_and_runs_a_query_with_no_network(
    database_url: str, signing_key: str, tenant: Tenant, tmp_path: Path
) -> None:
    """Signed in as a developer does in GraphiQL (a Bearer token in its headers editor): the query answers and
    the documentation explorer shows the schema the caller may use."""
    if not HAVE_CHROMIUM:
        unavailable(f"no Chromium at {CHROMIUM} (Debian package chromium; .ci/run installs it)")
    from playwright.async_api import Route, async_playwright

    elsewhere: list[str] = []
    problems: list[str] = []

    async def only_loopback(route: Route) -> None:
        if urlsplit(route.request.url).hostname == "127.0.0.1":
            await route.continue_()
        else:
            elsewhere.append(route.request.url)
            await route.abort()

    def console(message: Any) -> None:
        if message.type in ("error", "warning"):
            problems.append(message.text)

    with serving(create_app(make_settings(database_url, signing_key, env="dev")), free_port()) as gateway:
        async with httpx.AsyncClient(base_url=gateway) as client:
            token = (await login(client, tenant))["accessToken"]
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(
                executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-dev-shm-usage"]
            )
            try:
                context = await browser.new_context(viewport={"width": 1280, "height": 720})
                await context.route("**/*", only_loopback)
                page = await context.new_page()
                page.on("console", console)
                page.on("pageerror", lambda exc: problems.append(str(exc)))
                await page.goto(f"{gateway}/graphql")
                await page.wait_for_selector(".graphiql-query-editor .CodeMirror", timeout=20_000)
                first = await page.evaluate(
                    "() => document.querySelector('.graphiql-query-editor .CodeMirror').CodeMirror.getValue()"
                )
                assert "Re-fetch GraphQL schema" in first  # how to sign in, before anything is typed
                assert "mutation SignIn" in first
                await page.get_by_role("button", name="Headers").click()
                await page.evaluate(
                    """(token) => [...document.querySelectorAll('.graphiql-editor-tool .graphiql-editor')]
                        .find((e) => !e.classList.contains('hidden')).querySelector('.CodeMirror').CodeMirror
                        .setValue(JSON.stringify({Authorization: 'Bearer ' + token}, null, 2))""",
                    token,
                )
                await page.evaluate(
                    """() => document.querySelector('.graphiql-query-editor .CodeMirror').CodeMirror
                        .setValue('{\\n  me {\\n    user { email }\\n    role\\n  }\\n}')"""
                )
                # GraphiQL reads the operations of the edited document after a short debounce: until then it
                # would send the operation name of the text before (`SignIn`)
                await page.wait_for_timeout(500)
                await page.click(".graphiql-execute-button")
                result = page.locator(".graphiql-response .CodeMirror")
                await result.get_by_text(tenant.email).wait_for(timeout=20_000)
                assert '"role": "owner"' in await result.inner_text()
                # the schema again, with the header: the documentation explorer shows what the caller may use
                await page.click("button[aria-label='Re-fetch GraphQL schema']")
                await page.click("button[aria-label='Show Documentation Explorer']")
                explorer = page.locator(".graphiql-doc-explorer")
                await explorer.get_by_text("Query", exact=True).click(timeout=20_000)
                await explorer.get_by_role("link", name="organization", exact=True).wait_for(timeout=20_000)
                assert "Schema is invalid" not in await explorer.inner_text()
                await page.screenshot(path=str(tmp_path / "graphiql-offline.png"))
                if PICTURE:
                    await page.screenshot(path=str(Path(PICTURE) / "graphiql-offline.png"))
            finally:
                await browser.close()
    assert elsewhere == []  # nothing was even asked of another host
    assert [p for p in problems if "Content Security Policy" in p or "Failed to load" in p] == []
