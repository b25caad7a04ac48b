"""Shared mode: a sign-in started on one process finishes on another (state in Redis), once."""

from __future__ import annotations

import logging

import httpx
import pytest

from gateway.app import create_app
from tests.conftest import CLIENT_IP, Tenant, claim_domain, gql, login
from tests.gateway.oidc.conftest import CALLBACK, CONFIGURE, GATEWAY, session_cookie, sso_settings
from tests.idp.rogue_op import CLIENT_ID, CLIENT_SECRET, RogueProvider

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


async def test_callback_on_another_process_and_state_spent_everywhere(
    postgresql_url: str,
    redis_url: str,
    signing_key: str,
    shared_tenant: Tenant,
    rogue: RogueProvider,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="portcullis.security")
    one = create_app(sso_settings(postgresql_url, signing_key, redis_url=redis_url))
    two = create_app(sso_settings(postgresql_url, signing_key, redis_url=redis_url))
    async with one.router.lifespan_context(one), two.router.lifespan_context(two):
        b1 = httpx.AsyncClient(mounts={GATEWAY: httpx.ASGITransport(app=one, client=(CLIENT_IP, 40000))})
        b2 = httpx.AsyncClient(mounts={GATEWAY: httpx.ASGITransport(app=two, client=(CLIENT_IP, 40000))})
        async with b1, b2:
            api = httpx.AsyncClient(transport=httpx.ASGITransport(app=one, client=(CLIENT_IP, 40000)), base_url=GATEWAY)
            async with api:
                token = (await login(api, shared_tenant))["accessToken"]
                r = await gql(
                    api,
                    CONFIGURE,
                    {"input": {"issuer": rogue.issuer, "clientId": CLIENT_ID, "clientSecret": CLIENT_SECRET}},
                    token=token,
                )
                assert r.json().get("data"), r.text
            claim_domain(postgresql_url, shared_tenant.org_id, "acme.test")  # where the provider's users are
            start = await b1.get(f"{GATEWAY}/auth/sso/{shared_tenant.slug}")
            assert start.status_code == 302
            back = await b1.get(start.headers["location"])
            callback = back.headers["location"]
            assert callback.startswith(CALLBACK)
            b2.cookies = b1.cookies  # the same browser, whose next request a load balancer sent elsewhere
            done = await b2.get(callback)
            assert done.status_code == 303, done.text
            assert session_cookie(done)
            again = await b1.get(callback)
            assert again.status_code == 400
            assert session_cookie(again) is None
    reasons = [r.reason for r in caplog.records if r.getMessage() == "authn_sso_fail"]  # type: ignore[attr-defined]
    assert reasons == ["oidc_state_unknown"]
