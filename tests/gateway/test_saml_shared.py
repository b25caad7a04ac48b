"""SAML in shared mode: gateway processes on one PostgreSQL and one Redis.

C-067 across processes: a response consumed by one process is refused by another, and by a process
started afterwards (the replay cache is in Redis, not in memory)."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from gateway.app import create_app
from tests.conftest import make_settings
from tests.gateway.test_saml import PUBLIC_URL, Recorder, Sso, assert_refused, browser, refusal_codes, sso_setup
from tests.saml_idp import TestIdp, b64

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


@pytest.fixture
def idp() -> Iterator[TestIdp]:
    server = TestIdp()
    yield server
    server.close()


async def test_c067_replay_refused_by_another_process_and_after_a_restart(
    postgresql_url: str, redis_url: str, signing_key: str, idp: TestIdp, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="portcullis.saml")
    try:
        async for sso in sso_setup(postgresql_url, signing_key, idp, slug="acme", redis_url=redis_url):
            url = await sso.start()
            pending = sso.client.cookies.get("__Host-portcullis-saml")
            xml = idp.respond(url)
            await check_other_processes(sso, postgresql_url, redis_url, signing_key, xml, pending)
        assert [reason for reason, _ in refusal_codes(caplog)] == ["saml_replay", "saml_replay"]
    finally:
        from tests.conftest import _truncate

        _truncate(postgresql_url)


async def check_other_processes(
    sso: Sso, postgresql_url: str, redis_url: str, signing_key: str, xml: str, pending: str | None
) -> None:
    assert pending is not None
    settings = make_settings(postgresql_url, signing_key, public_url=PUBLIC_URL, redis_url=redis_url)
    second, third = Recorder(), Recorder()
    two = create_app(settings, saml_login=second)
    # the login started on process one completes on process two: the pending request is in the cookie
    async with two.router.lifespan_context(two), browser(two) as c2:
        c2.cookies.set("__Host-portcullis-saml", pending, domain="gw.example.com")
        r = await c2.post("/auth/saml/acme/acs", data={"SAMLResponse": b64(xml)})
        assert r.status_code == 303
        assert len(second.calls) == 1
        # the same response on process one
        assert_refused(sso, await sso.post(xml))
    # a process started afterwards still refuses it
    three = create_app(settings, saml_login=third)
    async with three.router.lifespan_context(three), browser(three) as c3:
        c3.cookies.set("__Host-portcullis-saml", pending, domain="gw.example.com")
        r = await c3.post("/auth/saml/acme/acs", data={"SAMLResponse": b64(xml)})
        assert r.status_code == 400
        assert third.calls == []
