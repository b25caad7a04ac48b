"""OIDC bad inputs (security.md §4.3, C-039 to C-053), C-115, and the refusals of a tenant's connection.

Every refusal: the same plain error page reflecting nothing, no session cookie, no user, identity or
session written, and an `authn_sso_fail` security event naming the reason.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
from typing import Any

import httpx
import pytest
from joserfc.jwk import RSAKey

from tests.conftest import LOGIN, claim_domain, error_codes, gql, sql
from tests.gateway.oidc.conftest import (
    CALLBACK,
    GATEWAY,
    Gateway,
    configure_node,
    configure_rogue,
    csrf_cookie,
    query_of,
    session_cookie,
    start_link,
    to_callback,
)
from tests.idp.rogue_op import REMOVE, RogueProvider

ME = "{ me { user { email } role authMethod } }"


@pytest.fixture(autouse=True)
def _events(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="portcullis.security")


def counts(database_url: str) -> tuple[int, int, int]:
    return (
        sql(database_url, "SELECT count(*) FROM users")[0][0],
        sql(database_url, "SELECT count(*) FROM sso_identities")[0][0],
        sql(database_url, "SELECT count(*) FROM auth_sessions WHERE auth_method = 'oidc'")[0][0],
    )


def failure_reasons(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.reason for r in caplog.records if r.getMessage() == "authn_sso_fail"]  # type: ignore[attr-defined]


def assert_refused(r: httpx.Response, caplog: pytest.LogCaptureFixture, reason: str, *, status: int = 400) -> None:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("text/html")
    assert "Sign-in failed" in r.text
    assert session_cookie(r) is None
    assert csrf_cookie(r) is None
    assert "location" not in r.headers
    assert reason in failure_reasons(caplog), failure_reasons(caplog)


async def rogue_callback(gw: Gateway, browser: httpx.AsyncClient | None = None, return_to: str = "/app") -> str:
    browser = browser or gw.browser
    r = await browser.get(f"{GATEWAY}/auth/sso/acme", params={"return_to": return_to})
    assert r.status_code == 302, r.text
    r = await browser.get(r.headers["location"])
    assert r.status_code == 302
    location = r.headers["location"]
    assert location.startswith(CALLBACK)
    return location


async def rogue_login(gw: Gateway, return_to: str = "/app") -> httpx.Response:
    return await gw.browser.get(await rogue_callback(gw, return_to=return_to))


# -- C-039 / C-040 / C-041: state and code ---------------------------------------------------------


async def test_c039_callback_without_state(
    gw: Gateway, rogue: RogueProvider, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    await configure_rogue(gw, rogue)
    before = counts(database_url)
    url = await rogue_callback(gw)
    r = await gw.browser.get(CALLBACK, params={"code": query_of(url)["code"]})
    assert_refused(r, caplog, "oidc_state_missing")
    assert counts(database_url) == before
    # the failure is audited on its own, with the reason
    [entry] = sql(database_url, "SELECT result, details FROM audit_log WHERE action = 'authn_sso_fail'")
    assert entry[0] == "denied"
    details = entry[1] if isinstance(entry[1], dict) else json.loads(entry[1])
    assert len(details.pop("traceId")) == 32  # the request's trace
    assert details == {"protocol": "oidc", "reason": "oidc_state_missing"}


async def test_c040_state_from_another_browser(
    gw: Gateway, rogue: RogueProvider, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    await configure_rogue(gw, rogue)
    before = counts(database_url)
    url = await rogue_callback(gw)
    async with gw.new_browser() as other:
        r = await other.get(url)
    assert_refused(r, caplog, "oidc_state_mismatch")
    assert counts(database_url) == before
    # the state is spent by that attempt: the browser that started cannot use it any more either
    assert_refused(await gw.browser.get(url), caplog, "oidc_state_unknown")


async def test_c040_state_replayed(
    gw: Gateway, rogue: RogueProvider, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    await configure_rogue(gw, rogue)
    url = await rogue_callback(gw)
    assert (await gw.browser.get(url)).status_code == 303
    after_first = counts(database_url)
    assert_refused(await gw.browser.get(url), caplog, "oidc_state_unknown")
    assert counts(database_url) == after_first


async def test_c041_code_replayed(
    gw: Gateway, node_issuer: str, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The real provider answers invalid_grant to a code spent once; the first session is not duplicated."""
    await configure_node(gw, node_issuer)
    first = await to_callback(gw.browser, f"{GATEWAY}/auth/sso/acme", "jdoe")
    assert (await gw.browser.get(first)).status_code == 303
    after_first = counts(database_url)
    second = await to_callback(gw.browser, f"{GATEWAY}/auth/sso/acme", "jdoe")
    replay = {**query_of(second), "code": query_of(first)["code"]}
    r = await gw.browser.get(CALLBACK, params=replay)
    assert_refused(r, caplog, "oidc_token_request_failed")
    assert counts(database_url) == after_first


# -- C-042: PKCE -----------------------------------------------------------------------------------


async def test_c042_pkce_s256_with_a_matching_verifier(gw: Gateway, rogue: RogueProvider) -> None:
    await configure_rogue(gw, rogue)
    assert (await rogue_login(gw)).status_code == 303
    [auth] = rogue.authorize_requests
    [token] = rogue.token_requests
    assert auth["code_challenge_method"] == "S256"
    verifier = token["code_verifier"]
    assert 43 <= len(verifier) <= 128
    expected = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    assert auth["code_challenge"] == expected
    assert auth["nonce"]
    assert auth["state"]
    assert auth["response_type"] == "code"


# -- C-043: nonce -----------------------------------------------------------------------------------


@pytest.mark.parametrize("nonce", ["different", "missing", "earlier"])
async def test_c043_nonce(
    gw: Gateway, rogue: RogueProvider, database_url: str, caplog: pytest.LogCaptureFixture, nonce: str
) -> None:
    await configure_rogue(gw, rogue)
    if nonce == "earlier":
        assert (await rogue_login(gw)).status_code == 303
        rogue.behaviour.claims["nonce"] = rogue.last_nonce
        gw.browser.cookies.clear()
    else:
        rogue.behaviour.claims["nonce"] = "not-the-nonce" if nonce == "different" else REMOVE
    before = counts(database_url)
    assert_refused(await rogue_login(gw), caplog, "oidc_id_token_nonce")
    assert counts(database_url) == before


# -- C-044: signature -------------------------------------------------------------------------------


def _attacker_jwk_header() -> dict[str, Any]:
    attacker = RSAKey.generate_key(2048, parameters={"kid": "attacker"})
    return {"jwk": attacker.as_dict(private=False), "jku": "http://127.0.0.1:9/evil-jwks"}


@pytest.mark.parametrize("case", ["flipped_byte", "alg_none", "hs256_client_secret", "jku_and_jwk_header"])
async def test_c044_signature(
    gw: Gateway, rogue: RogueProvider, database_url: str, caplog: pytest.LogCaptureFixture, case: str
) -> None:
    await configure_rogue(gw, rogue)
    b = rogue.behaviour
    if case == "flipped_byte":
        b.signing = "bad_signature"
    elif case == "alg_none":
        b.signing = "none"
    elif case == "hs256_client_secret":
        b.signing = "hs256_client_secret"
    else:
        # signed with a key the provider does not publish, which the header offers in `jwk` and `jku`
        b.signing_key = 2
        b.header = _attacker_jwk_header()
    before = counts(database_url)
    r = await rogue_login(gw)
    assert r.status_code == 400
    assert_refused(r, caplog, failure_reasons(caplog)[-1])
    assert failure_reasons(caplog)[-1].startswith("oidc_")
    assert counts(database_url) == before


# -- C-045: claims ------------------------------------------------------------------------------------


def _claims_case(case: str, op: RogueProvider) -> dict[str, Any]:
    import time

    now = int(time.time())
    from tests.idp.rogue_op import CLIENT_ID

    return {
        "iss_trailing_slash": {"iss": op.issuer + "/"},
        "iss_other_case": {"iss": op.issuer.upper()},
        "aud_other_client": {"aud": "other-client"},
        "aud_two_without_azp": {"aud": [CLIENT_ID, "other-client"]},
        "azp_other_client": {"aud": [CLIENT_ID, "other-client"], "azp": "other-client"},
        "exp_past": {"exp": now - 600, "iat": now - 900},
        "iat_missing": {"iat": REMOVE},
        "iat_future": {"iat": now + 3600, "exp": now + 7200},
        "sub_missing": {"sub": REMOVE},
        "sub_empty": {"sub": ""},
    }[case]


@pytest.mark.parametrize(
    "case",
    [
        "iss_trailing_slash",
        "iss_other_case",
        "aud_other_client",
        "aud_two_without_azp",
        "azp_other_client",
        "exp_past",
        "iat_missing",
        "iat_future",
        "sub_missing",
        "sub_empty",
    ],
)
async def test_c045_claims(
    gw: Gateway, rogue: RogueProvider, database_url: str, caplog: pytest.LogCaptureFixture, case: str
) -> None:
    await configure_rogue(gw, rogue)
    rogue.behaviour.claims = _claims_case(case, rogue)
    before = counts(database_url)
    r = await rogue_login(gw)
    assert r.status_code == 400, r.text
    assert_refused(r, caplog, failure_reasons(caplog)[-1])
    assert failure_reasons(caplog)[-1].startswith("oidc_id_token")
    assert counts(database_url) == before


# -- C-046: key rotation --------------------------------------------------------------------------------


async def test_c046_unknown_kid_refetches_the_jwks_once(gw: Gateway, rogue: RogueProvider) -> None:
    await configure_rogue(gw, rogue)
    assert (await rogue_login(gw)).status_code == 303
    assert rogue.jwks_fetches == 1
    rogue.behaviour.rotate_on_token = 1  # the provider rotates just before signing
    gw.browser.cookies.clear()
    assert (await rogue_login(gw)).status_code == 303
    assert rogue.jwks_fetches == 2


async def test_c046_random_kids_do_not_amplify(
    gw: Gateway, rogue: RogueProvider, caplog: pytest.LogCaptureFixture
) -> None:
    await configure_rogue(gw, rogue)
    import secrets

    for _ in range(15):
        rogue.behaviour.kid = secrets.token_hex(8)
        gw.browser.cookies.clear()
        r = await rogue_login(gw)
        assert r.status_code == 400
    # the first fetch, and one forced refetch in the interval
    assert rogue.jwks_fetches <= 2
    assert "oidc_jwks_refetch_limited" in failure_reasons(caplog)


@pytest.mark.parametrize("signer", [0, 1])
async def test_c046_kid_absent_with_two_keys_is_never_a_500(gw: Gateway, rogue: RogueProvider, signer: int) -> None:
    await configure_rogue(gw, rogue)
    rogue.behaviour.published = [0, 1]
    rogue.behaviour.signing_key = signer
    rogue.behaviour.kid = REMOVE
    r = await rogue_login(gw)
    assert r.status_code in (303, 400)


# -- C-047: account linking -------------------------------------------------------------------------------


async def test_c047_identity_of_one_idp_is_not_taken_over_by_another(
    gw: Gateway,
    rogue: RogueProvider,
    node_issuer: str,
    database_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # the owner links IdP A (the rogue provider, behaving) to the account, by their own act
    await configure_rogue(gw, rogue)
    rogue.behaviour.subject, rogue.behaviour.email = "owner-at-a", gw.tenant.email
    r = await gw.browser.get(await start_link(gw, gw.owner_token))
    r = await gw.browser.get(r.headers["location"])
    assert (await gw.browser.get(r.headers["location"])).status_code == 303
    assert sql(database_url, "SELECT issuer, subject FROM sso_identities")[0][1] == "owner-at-a"
    # IdP B asserts the very same verified email for another subject: an existing account, never linked by it
    await configure_node(gw, node_issuer)
    gw.browser.cookies.clear()
    callback = await to_callback(gw.browser, f"{GATEWAY}/auth/sso/acme", gw.tenant.email)
    assert_refused(await gw.browser.get(callback), caplog, "sso_link_requires_consent")
    assert sql(database_url, "SELECT count(*) FROM sso_identities")[0][0] == 1


async def test_c047_unverified_email_never_links(
    gw: Gateway, rogue: RogueProvider, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    await configure_rogue(gw, rogue)
    rogue.behaviour.email, rogue.behaviour.email_verified = gw.tenant.email, False
    before = counts(database_url)
    assert_refused(await rogue_login(gw), caplog, "sso_email_unverified")
    assert counts(database_url) == before


# -- C-048 to C-053 --------------------------------------------------------------------------------------


async def test_c048_mix_up_issuer_in_the_callback(
    gw: Gateway, rogue: RogueProvider, node_issuer: str, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    await configure_rogue(gw, rogue)
    rogue.behaviour.callback_iss = node_issuer
    before = counts(database_url)
    assert_refused(await rogue_login(gw), caplog, "oidc_response_issuer_mismatch")
    assert counts(database_url) == before
    assert rogue.token_requests == []  # the code was never redeemed


async def test_c049_discovery_names_another_issuer(
    gw: Gateway, rogue: RogueProvider, caplog: pytest.LogCaptureFixture
) -> None:
    rogue.behaviour.discovery_issuer = "https://evil.example"
    from tests.gateway.oidc.conftest import configure
    from tests.idp.rogue_op import CLIENT_ID, CLIENT_SECRET

    body = await configure(gw, rogue.issuer, CLIENT_ID, CLIENT_SECRET)
    assert error_codes(body) == ["BAD_USER_INPUT"]
    # configured while it behaved, the provider changes its document: no browser is sent to it
    rogue.behaviour.discovery_issuer = None
    await configure_rogue(gw, rogue)
    rogue.behaviour.discovery_issuer = "https://evil.example"
    r = await gw.browser.get(f"{GATEWAY}/auth/sso/acme")
    assert_refused(r, caplog, "oidc_discovery_issuer_mismatch", status=502)
    assert rogue.authorize_requests == []


async def test_c050_userinfo_sub_differs(
    gw: Gateway, rogue: RogueProvider, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    await configure_rogue(gw, rogue)
    rogue.behaviour.userinfo_sub = "somebody-else"
    before = counts(database_url)
    assert_refused(await rogue_login(gw), caplog, "oidc_userinfo_sub_mismatch")
    assert counts(database_url) == before


@pytest.mark.parametrize(
    "return_to",
    [
        "https://evil.com",
        "//evil.com",
        "/\\evil.com",
        "/%5Cevil.com/../x",
        "javascript:alert(1)",
        "/admin",
        "/app/../admin",
        "http:/evil.com",
        " /app",
    ],
)
async def test_c051_open_redirect(gw: Gateway, rogue: RogueProvider, return_to: str) -> None:
    await configure_rogue(gw, rogue)
    r = await rogue_login(gw, return_to=return_to)
    assert r.status_code == 303
    assert r.headers["location"] == "/app"


async def test_c051_allowed_return_path_is_kept(gw: Gateway, rogue: RogueProvider) -> None:
    await configure_rogue(gw, rogue)
    r = await rogue_login(gw, return_to="/app/reports?tab=2")
    assert r.headers["location"] == "/app/reports?tab=2"


async def test_c052_error_callback_reflects_nothing(
    gw: Gateway, rogue: RogueProvider, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    await configure_rogue(gw, rogue)
    start = await gw.browser.get(f"{GATEWAY}/auth/sso/acme")
    state = query_of(start.headers["location"])["state"]
    before = counts(database_url)
    r = await gw.browser.get(
        CALLBACK, params={"error": "access_denied", "state": state, "error_description": "<script>alert(1)</script>"}
    )
    assert_refused(r, caplog, "oidc_provider_error")
    assert "<script" not in r.text
    assert "access_denied" not in r.text
    assert "alert" not in r.text
    assert counts(database_url) == before


@pytest.mark.parametrize("token_shape", ["no_events", "with_nonce", "wrong_typ"])
async def test_c053_back_channel_logout_is_not_accepted(gw: Gateway, rogue: RogueProvider, token_shape: str) -> None:
    """Back-channel logout is not supported: no route takes a logout token, and the session lives on."""
    import time

    from tests.idp.rogue_op import CLIENT_ID

    await configure_rogue(gw, rogue)
    assert (await rogue_login(gw)).status_code == 303
    claims: dict[str, Any] = {
        "iss": rogue.issuer,
        "aud": CLIENT_ID,
        "iat": int(time.time()),
        "jti": "x",
        "sub": rogue.behaviour.subject,
        "events": {"http://schemas.openid.net/event/backchannel-logout": {}},
    }
    if token_shape == "no_events":
        claims.pop("events")
    elif token_shape == "with_nonce":
        claims["nonce"] = "n"
    else:
        rogue.behaviour.header = {"typ": "JWT"}
    token = rogue.sign(claims)
    for path in ("/auth/oidc/backchannel-logout", "/auth/oidc/logout", "/auth/logout"):
        r = await gw.new_browser().post(f"{GATEWAY}{path}", data={"logout_token": token})
        assert r.status_code in (401, 404, 405), (path, r.status_code)
    assert (await gw.browser.get(f"{GATEWAY}/graphql", params={"query": ME})).status_code == 200


# -- C-115 and the connection's own refusals --------------------------------------------------------------


async def test_c115_sso_works_while_password_login_is_locked(gw: Gateway, rogue: RogueProvider) -> None:
    await configure_rogue(gw, rogue)
    rogue.behaviour.subject, rogue.behaviour.email = "owner-sub", gw.tenant.email
    r = await gw.browser.get(await start_link(gw, gw.owner_token))
    r = await gw.browser.get(r.headers["location"])
    assert (await gw.browser.get(r.headers["location"])).status_code == 303
    gw.browser.cookies.clear()
    api = httpx.AsyncClient(transport=httpx.ASGITransport(app=gw.app, client=("203.0.113.7", 40000)), base_url=GATEWAY)
    async with api:
        for _ in range(6):
            await gql(api, LOGIN, {"email": gw.tenant.email, "password": "wrong password, again"})
        locked = await gql(api, LOGIN, {"email": gw.tenant.email, "password": gw.tenant.password})
        assert error_codes(locked.json()) == ["UNAUTHENTICATED"]
    assert (await rogue_login(gw)).status_code == 303
    me = (await gw.browser.get(f"{GATEWAY}/graphql", params={"query": ME})).json()["data"]["me"]
    assert me == {"user": {"email": gw.tenant.email}, "role": "owner", "authMethod": "oidc"}


async def test_organization_without_sso(gw: Gateway, caplog: pytest.LogCaptureFixture) -> None:
    for slug in ("acme", "no-such-org"):
        r = await gw.browser.get(f"{GATEWAY}/auth/sso/{slug}", params={"return_to": "/app"})
        assert_refused(r, caplog, "sso_not_configured", status=404)


async def test_disabled_connection(
    gw: Gateway, rogue: RogueProvider, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    await configure_rogue(gw, rogue, enabled=False)
    assert_refused(await gw.browser.get(f"{GATEWAY}/auth/sso/acme"), caplog, "sso_not_configured", status=404)
    assert rogue.authorize_requests == []
    # disabled between the start and the callback
    await configure_rogue(gw, rogue)
    url = await rogue_callback(gw)
    await configure_rogue(gw, rogue, enabled=False)
    before = counts(database_url)
    assert_refused(await gw.browser.get(url), caplog, "sso_connection_disabled")
    assert counts(database_url) == before


async def test_email_outside_the_allowed_domains(
    gw: Gateway, rogue: RogueProvider, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    await configure_rogue(gw, rogue, allowedDomains=["corp.example"])
    before = counts(database_url)
    assert_refused(await rogue_login(gw), caplog, "sso_email_domain_not_allowed")
    assert counts(database_url) == before
    rogue.behaviour.email = "jdoe@Corp.Example".lower()
    claim_domain(database_url, gw.tenant.org_id, "corp.example")
    gw.browser.cookies.clear()
    assert (await rogue_login(gw)).status_code == 303


async def test_jit_disabled_meets_an_unknown_user(
    gw: Gateway, rogue: RogueProvider, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    await configure_rogue(gw, rogue, jitProvisioning=False)
    before = counts(database_url)
    assert_refused(await rogue_login(gw), caplog, "sso_jit_disabled")
    assert counts(database_url) == before
    assert sql(database_url, "SELECT count(*) FROM users WHERE email = 'jdoe@acme.test'")[0][0] == 0
