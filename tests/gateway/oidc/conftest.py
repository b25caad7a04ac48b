"""SSO fixtures: a real node `oidc-provider`, the rogue provider, and a browser for both sides.

The browser is one httpx client: requests to `http://testserver` go to the gateway in process,
everything else (the providers) over real HTTP on loopback, with one cookie jar for all.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urljoin, urlsplit

import httpx
import pytest

from gateway.app import create_app
from tests.conftest import CLIENT_IP, Tenant, gql, login, make_settings, make_tenant
from tests.idp import node_provider
from tests.idp.node_provider import oidc_provider
from tests.idp.rogue_op import RogueProvider, rogue_provider
from tests.services import ServiceUnavailable

GATEWAY = "http://testserver"
CALLBACK = GATEWAY + "/auth/oidc/callback"
RETURN_PATHS = ["/app", "/healthz"]

CONFIGURE = """
mutation Configure($input: OidcConnectionInput!) {
  configureOidc(input: $input) { id kind enabled issuer entityId defaultRole jitProvisioning allowedDomains }
}
"""


@pytest.fixture(scope="session")
def node_issuer() -> Iterator[str]:
    try:
        with oidc_provider([CALLBACK]) as issuer:
            yield issuer
    except ServiceUnavailable as exc:
        from tests.conftest import unavailable

        unavailable(str(exc))


@pytest.fixture(scope="session")
def rogue_session() -> Iterator[RogueProvider]:
    with rogue_provider() as op:
        yield op


@pytest.fixture
def rogue(rogue_session: RogueProvider) -> RogueProvider:
    rogue_session.reset()
    return rogue_session


def sso_settings(database_url: str, signing_key: str, **overrides: Any) -> Any:
    values: dict[str, Any] = {
        "public_url": GATEWAY,
        "session_cookie_secure": False,
        "frontend_return_paths": RETURN_PATHS,
    }
    values.update(overrides)
    return make_settings(database_url, signing_key, **values)


@dataclass
class Gateway:
    app: Any
    browser: httpx.AsyncClient
    tenant: Tenant
    owner_token: str

    def new_browser(self) -> httpx.AsyncClient:
        return browser_for(self.app)


def browser_for(app: Any) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=(CLIENT_IP, 40000))
    return httpx.AsyncClient(mounts={GATEWAY: transport}, follow_redirects=False, timeout=20)


@contextlib.asynccontextmanager
async def running_gateway(database_url: str, signing_key: str, **overrides: Any) -> AsyncIterator[Gateway]:
    app = create_app(sso_settings(database_url, signing_key, **overrides))
    tenant = await make_tenant(database_url)
    async with app.router.lifespan_context(app), browser_for(app) as browser:
        api = httpx.AsyncClient(transport=httpx.ASGITransport(app=app, client=(CLIENT_IP, 40000)), base_url=GATEWAY)
        async with api:
            token = (await login(api, tenant))["accessToken"]
            # the tenant's providers may provision accounts at its own domain
            claimed = await gql(api, CLAIM, {"d": "acme.test"}, token=token)
            assert claimed.json()["data"]["claimDomain"], claimed.json()
        yield Gateway(app, browser, tenant, token)


@pytest.fixture
async def gw(database_url: str, signing_key: str) -> AsyncIterator[Gateway]:
    async with running_gateway(database_url, signing_key) as g:
        yield g


async def configure(gw: Gateway, issuer: str, client_id: str, client_secret: str, **fields: Any) -> dict[str, Any]:
    variables = {
        "input": {
            "issuer": issuer,
            "clientId": client_id,
            "clientSecret": client_secret,
            "scopes": fields.pop("scopes", ["openid", "email", "profile", "groups"]),
            **fields,
        }
    }
    api = httpx.AsyncClient(transport=httpx.ASGITransport(app=gw.app, client=(CLIENT_IP, 40000)), base_url=GATEWAY)
    async with api:
        r = await gql(api, CONFIGURE, variables, token=gw.owner_token)
    return r.json()  # type: ignore[no-any-return]


async def configure_node(gw: Gateway, issuer: str, **fields: Any) -> dict[str, Any]:
    body = await configure(gw, issuer, node_provider.CLIENT_ID, node_provider.CLIENT_SECRET, **fields)
    assert body.get("data"), body
    return body


async def configure_rogue(gw: Gateway, op: RogueProvider, **fields: Any) -> dict[str, Any]:
    from tests.idp.rogue_op import CLIENT_ID, CLIENT_SECRET

    body = await configure(gw, op.issuer, CLIENT_ID, CLIENT_SECRET, **fields)
    assert body.get("data"), body
    return body


CLAIM = "mutation($d: String!) { claimDomain(domain: $d) { domain } }"
START_LINK = "mutation { startSsoLink { url expiresAt } }"


async def api_call(
    gw: Gateway, document: str, variables: dict[str, Any] | None = None, *, token: str | None = None
) -> dict[str, Any]:
    api = httpx.AsyncClient(transport=httpx.ASGITransport(app=gw.app, client=(CLIENT_IP, 40000)), base_url=GATEWAY)
    async with api:
        return (await gql(api, document, variables, token=token)).json()  # type: ignore[no-any-return]


async def start_link(gw: Gateway, token: str) -> str:
    """`startSsoLink` for the account signed in with `token`: the gateway address that makes the link."""
    body = await api_call(gw, START_LINK, token=token)
    assert (body.get("data") or {}).get("startSsoLink"), body
    url = body["data"]["startSsoLink"]["url"]
    assert url.startswith(GATEWAY + "/auth/sso/")
    return str(url)


_FORM_ACTION = re.compile(r'<form[^>]*action="([^"]+)"')


async def to_callback(browser: httpx.AsyncClient, start: str, login_name: str = "jdoe") -> str:
    """Start at the gateway, sign in at the provider; the callback URL the provider sends back (not yet followed)."""
    r = await browser.get(start)
    assert r.status_code == 302, r.text
    url = r.headers["location"]
    for _ in range(12):
        if url.startswith(CALLBACK):
            return url
        r = await browser.get(url)
        if r.status_code in (302, 303):
            url = urljoin(url, r.headers["location"])
            continue
        assert r.status_code == 200, r.text
        action = _FORM_ACTION.search(r.text)
        assert action, r.text
        r = await browser.post(
            urljoin(url, action.group(1)), data={"prompt": "login", "login": login_name, "password": "anything"}
        )
        assert r.status_code in (302, 303), r.text
        url = urljoin(url, r.headers["location"])
    raise AssertionError("the provider never sent the browser back")


def session_cookie(r: httpx.Response) -> str | None:
    for value in r.headers.get_list("set-cookie"):
        name, _, rest = value.partition("=")
        if name == "__Host-portcullis":
            return rest.split(";")[0] or None
    return None


def csrf_cookie(r: httpx.Response) -> str | None:
    for value in r.headers.get_list("set-cookie"):
        name, _, rest = value.partition("=")
        if name == "__Host-portcullis-csrf":
            return rest.split(";")[0] or None
    return None


def query_of(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
