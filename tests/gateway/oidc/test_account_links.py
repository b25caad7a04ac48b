"""C-126: a tenant's identity provider speaks only for the accounts that tenant owns.

It provisions accounts only at a domain its organization has claimed, signs in only the accounts it made
or that their holders linked to it, and a session it opens never changes what is account-wide (second
factor, other organizations' sessions) unless its organization owns the account's domain."""

from __future__ import annotations

import logging

import httpx
import pyotp
import pytest

from tests.conftest import LOGIN, error_codes, make_tenant, sql
from tests.gateway.oidc.conftest import (
    GATEWAY,
    Gateway,
    api_call,
    configure_rogue,
    csrf_cookie,
    start_link,
)
from tests.idp.rogue_op import RogueProvider
from tests.invitations import accept, invitation_token, invite

ME = "{ me { user { email } organization { slug } role authMethod } }"
CLAIM = "mutation($d: String!) { claimDomain(domain: $d) { domain } }"
HOLDER_PASSWORD = "the holder's own long passphrase"


@pytest.fixture(autouse=True)
def _events(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="portcullis.security")


def reasons(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.reason for r in caplog.records if r.getMessage() == "authn_sso_fail"]  # type: ignore[attr-defined]


async def through_provider(browser: httpx.AsyncClient, start: str) -> httpx.Response:
    """Start (a sign-in or a link), pass the rogue provider, and follow its callback."""
    r = await browser.get(start)
    assert r.status_code == 302, r.text
    r = await browser.get(r.headers["location"])
    assert r.status_code == 302, r.text
    return await browser.get(r.headers["location"])


def counts(database_url: str) -> tuple[int, int, int]:
    return (
        sql(database_url, "SELECT count(*) FROM users")[0][0],
        sql(database_url, "SELECT count(*) FROM sso_identities")[0][0],
        sql(database_url, "SELECT count(*) FROM memberships")[0][0],
    )


async def test_c126_another_tenants_admin_is_never_signed_in_by_this_tenants_provider(
    gw: Gateway, rogue: RogueProvider, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """B's admin exists; A (acme) claims B's still unclaimed domain and has its provider assert the admin's
    verified address: no sign-in, no link, no membership, whatever A's claims."""
    beta = await make_tenant(database_url, slug="beta", email="admin@beta.test")
    assert (await api_call(gw, CLAIM, {"d": "beta.test"}, token=gw.owner_token))["data"]["claimDomain"]
    await configure_rogue(gw, rogue)
    rogue.behaviour.subject, rogue.behaviour.email = "attacker-made-sub", beta.email
    before = counts(database_url)
    r = await through_provider(gw.browser, f"{GATEWAY}/auth/sso/acme?return_to=/app")
    assert r.status_code == 400
    assert "sso_link_requires_consent" in reasons(caplog)
    assert counts(database_url) == before
    # B's admin still signs in to B with their own password, and nothing of theirs changed
    login = await api_call(gw, LOGIN, {"email": beta.email, "password": beta.password})
    assert login["data"]["login"]["accessToken"]


async def test_c126_an_unclaimed_domain_provisions_nothing(
    gw: Gateway, rogue: RogueProvider, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    await configure_rogue(gw, rogue)
    rogue.behaviour.subject, rogue.behaviour.email = "someone", "someone@not-claimed.test"
    before = counts(database_url)
    assert (await through_provider(gw.browser, f"{GATEWAY}/auth/sso/acme")).status_code == 400
    assert "sso_domain_not_claimed" in reasons(caplog)
    assert counts(database_url) == before


async def test_c126_a_domain_has_one_claimant_and_public_mailbox_domains_none(gw: Gateway, database_url: str) -> None:
    other = await make_tenant(database_url, slug="other", email="owner@other.test")
    other_token = (await api_call(gw, LOGIN, {"email": other.email, "password": other.password}))["data"]["login"][
        "accessToken"
    ]
    taken = await api_call(gw, CLAIM, {"d": "ACME.test"}, token=other_token)
    assert error_codes(taken) == ["CONFLICT"]
    for public in ("gmail.com", "outlook.com"):
        assert error_codes(await api_call(gw, CLAIM, {"d": public}, token=other_token)) == ["BAD_USER_INPUT"]
    for bad in ("localhost", "-x.test", "a..b", "x" * 300 + ".test", "1.2.3.4", ""):
        assert error_codes(await api_call(gw, CLAIM, {"d": bad}, token=other_token)) == ["BAD_USER_INPUT"], bad
    # a viewer cannot claim
    assert sql(database_url, "SELECT domain FROM email_domains")[0][0] == "acme.test"


async def test_c126_an_existing_account_is_linked_only_by_its_holder(
    gw: Gateway, rogue: RogueProvider, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    await configure_rogue(gw, rogue)
    rogue.behaviour.subject, rogue.behaviour.email = "owner-at-idp", gw.tenant.email
    # the provider alone: refused, even at the tenant's own claimed domain
    assert (await through_provider(gw.browser, f"{GATEWAY}/auth/sso/acme")).status_code == 400
    assert "sso_link_requires_consent" in reasons(caplog)
    assert sql(database_url, "SELECT count(*) FROM sso_identities")[0][0] == 0
    # the holder, signed in, asks for the link and follows it: linked
    link = await start_link(gw, gw.owner_token)
    r = await through_provider(gw.browser, link)
    assert r.status_code == 303, r.text
    assert sql(database_url, "SELECT subject FROM sso_identities")[0][0] == "owner-at-idp"
    # from now on the provider signs the account in
    gw.browser.cookies.clear()
    r = await through_provider(gw.browser, f"{GATEWAY}/auth/sso/acme")
    assert r.status_code == 303
    me = (await gw.browser.get(f"{GATEWAY}/graphql", params={"query": ME})).json()["data"]["me"]
    assert me == {
        "user": {"email": gw.tenant.email},
        "organization": {"slug": "acme"},
        "role": "owner",
        "authMethod": "oidc",
    }
    # the link address works once
    gw.browser.cookies.clear()
    again = await gw.browser.get(link)
    assert again.status_code == 400
    assert "sso_link_invalid" in reasons(caplog)


async def test_c126_a_link_needs_the_providers_verified_address_to_be_the_accounts_own(
    gw: Gateway, rogue: RogueProvider, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    await configure_rogue(gw, rogue)
    rogue.behaviour.subject, rogue.behaviour.email = "someone-else", "someone.else@acme.test"
    r = await through_provider(gw.browser, await start_link(gw, gw.owner_token))
    assert r.status_code == 400
    assert "sso_link_email_mismatch" in reasons(caplog)
    rogue.behaviour.email, rogue.behaviour.email_verified = gw.tenant.email, False
    gw.browser.cookies.clear()
    r = await through_provider(gw.browser, await start_link(gw, gw.owner_token))
    assert r.status_code == 400
    assert sql(database_url, "SELECT count(*) FROM sso_identities")[0][0] == 0


@pytest.mark.parametrize("forged", ["ptl_" + "A" * 43, "ptr_" + "A" * 43, "", "x" * 300])
async def test_c126_a_forged_link_address_is_refused(
    gw: Gateway, rogue: RogueProvider, forged: str, caplog: pytest.LogCaptureFixture
) -> None:
    await configure_rogue(gw, rogue)
    r = await gw.browser.get(f"{GATEWAY}/auth/sso/acme", params={"link": forged})
    assert r.status_code == 400
    assert rogue.authorize_requests == []


async def test_c126_a_link_address_of_one_organization_opens_nothing_in_another(
    gw: Gateway, rogue: RogueProvider, database_url: str
) -> None:
    await configure_rogue(gw, rogue)
    link = await start_link(gw, gw.owner_token)
    other = await make_tenant(database_url, slug="other", email="owner@other.test")
    other_token = (await api_call(gw, LOGIN, {"email": other.email, "password": other.password}))["data"]["login"][
        "accessToken"
    ]
    await configure_rogue(Gateway(gw.app, gw.browser, other, other_token), rogue)
    r = await gw.browser.get(link.replace("/auth/sso/acme", "/auth/sso/other"))
    assert r.status_code == 400
    assert rogue.authorize_requests == []


async def test_c126_a_session_from_a_provider_that_does_not_own_the_domain_changes_nothing_account_wide(
    gw: Gateway, rogue: RogueProvider, database_url: str
) -> None:
    """The person belongs to B (their home, with a password) and joined A by consent, and even linked A's
    provider: a session A's provider opens cannot enroll a second factor (which would end the person's
    sessions in B and lock B's sign-in behind a seed A holds), nor move the address."""
    beta = await make_tenant(database_url, slug="beta", email="owner@beta.test")
    person = "person@beta.test"
    beta_owner = (await api_call(gw, LOGIN, {"email": beta.email, "password": beta.password}))["data"]["login"][
        "accessToken"
    ]
    api = httpx.AsyncClient(transport=httpx.ASGITransport(app=gw.app, client=("203.0.113.7", 40000)), base_url=GATEWAY)
    async with api:
        await invite(api, beta_owner, person, "admin")
        home = (await accept(api, await invitation_token(database_url, person), HOLDER_PASSWORD)).json()
        home_session = home["data"]["acceptInvitation"]["accessToken"]
        await invite(api, gw.owner_token, person, "viewer")
        joined = (await accept(api, await invitation_token(database_url, person), HOLDER_PASSWORD)).json()
        in_acme = joined["data"]["acceptInvitation"]["accessToken"]
    await configure_rogue(gw, rogue)
    rogue.behaviour.subject, rogue.behaviour.email = "person-at-acme", person
    assert (await through_provider(gw.browser, await start_link(gw, in_acme))).status_code == 303
    gw.browser.cookies.clear()
    signed_in = await through_provider(gw.browser, f"{GATEWAY}/auth/sso/acme")
    csrf = csrf_cookie(signed_in) or ""
    for document in (
        "mutation { enrollTotp { secret } }",
        'mutation { changeEmail(newEmail: "taken.over@acme.test") }',
        "mutation { sendEmailVerification }",
    ):
        r = await gw.browser.post(f"{GATEWAY}/graphql", json={"query": document}, headers={"X-CSRF-Token": csrf})
        body = r.json()
        assert error_codes(body) == ["FORBIDDEN"], (document, body)
        assert body["errors"][0]["extensions"]["reason"] == "ACCOUNT_HOLDER_REQUIRED"
    # the person's session in B is alive, B's sign-in asks for no second factor
    assert (await api_call(gw, ME, token=home_session))["data"]["me"]["organization"]["slug"] == "beta"
    [(mfa, pending)] = sql(
        database_url, "SELECT mfa_enabled, totp_pending_secret_encrypted FROM users WHERE email = :e", e=person
    )
    assert (bool(mfa), pending) == (False, None)
    # with the account's own password, from its own session, the person does it themselves
    own = (await api_call(gw, "mutation { enrollTotp { secret } }", token=home_session))["data"]["enrollTotp"]
    assert pyotp.TOTP(own["secret"]).now()


async def test_c126_the_provider_that_made_an_account_speaks_for_it(
    gw: Gateway, rogue: RogueProvider, database_url: str
) -> None:
    """An account the tenant's provider made (no password, no other provider): that provider is its only way in,
    so its session may manage it."""
    await configure_rogue(gw, rogue)
    rogue.behaviour.subject, rogue.behaviour.email = "staff-1", "staff@acme.test"
    r = await through_provider(gw.browser, f"{GATEWAY}/auth/sso/acme")
    assert r.status_code == 303
    assert sql(database_url, "SELECT email_verified_at IS NOT NULL FROM users WHERE email = 'staff@acme.test'")[0][0]
    r = await gw.browser.post(
        f"{GATEWAY}/graphql",
        json={"query": "mutation { enrollTotp { secret } }"},
        headers={"X-CSRF-Token": csrf_cookie(r) or ""},
    )
    assert r.json()["data"]["enrollTotp"]["secret"]


async def _joins_acme_and_links_its_provider(
    gw: Gateway, rogue: RogueProvider, database_url: str, email: str, password: str
) -> None:
    """The person (a member of another organization) accepts acme's invitation and links acme's provider."""
    api = httpx.AsyncClient(transport=httpx.ASGITransport(app=gw.app, client=("203.0.113.7", 40000)), base_url=GATEWAY)
    async with api:
        await invite(api, gw.owner_token, email, "viewer")
        joined = (await accept(api, await invitation_token(database_url, email), password)).json()
    in_acme = joined["data"]["acceptInvitation"]["accessToken"]
    await configure_rogue(gw, rogue)
    rogue.behaviour.subject, rogue.behaviour.email = "subject-0", email
    assert (await through_provider(gw.browser, await start_link(gw, in_acme))).status_code == 303
    gw.browser.cookies.clear()


async def test_c126_the_first_claimant_of_a_domain_cannot_take_over_another_organizations_member(
    gw: Gateway, rogue: RogueProvider, database_url: str
) -> None:
    """Found by the two-tenant property test: acme claims beta.test before beta does (first claim wins), beta's
    owner joins acme and links acme's provider; the provider's session must still change nothing account-wide."""
    beta = await make_tenant(database_url, slug="beta", email="owner@beta.test")
    assert (await api_call(gw, CLAIM, {"d": "beta.test"}, token=gw.owner_token))["data"]["claimDomain"]
    b_session = (await api_call(gw, LOGIN, {"email": beta.email, "password": beta.password}))["data"]["login"][
        "accessToken"
    ]
    await _joins_acme_and_links_its_provider(gw, rogue, database_url, beta.email, beta.password)
    signed_in = await through_provider(gw.browser, f"{GATEWAY}/auth/sso/acme")
    assert signed_in.status_code == 303
    r = await gw.browser.post(
        f"{GATEWAY}/graphql",
        json={"query": "mutation { enrollTotp { secret } }"},
        headers={"X-CSRF-Token": csrf_cookie(signed_in) or ""},
    )
    assert error_codes(r.json()) == ["FORBIDDEN"], r.json()
    assert (await api_call(gw, ME, token=b_session))["data"]["me"]["organization"]["slug"] == "beta"
    assert (await api_call(gw, LOGIN, {"email": beta.email, "password": beta.password}))["data"]["login"]


async def test_c125_a_removed_member_is_not_brought_back_by_the_provider_they_once_linked(
    gw: Gateway, rogue: RogueProvider, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Found by the two-tenant property test: removal ends the person's links to the organization's providers,
    so the provider alone cannot make them a member again."""
    beta = await make_tenant(database_url, slug="beta", email="owner@beta.test")
    await _joins_acme_and_links_its_provider(gw, rogue, database_url, beta.email, beta.password)
    members = (
        await api_call(
            gw,
            "{ organization { members(first: 100) { edges { node { id user { email } } } } } }",
            token=gw.owner_token,
        )
    )["data"]["organization"]["members"]["edges"]
    [membership] = [e["node"]["id"] for e in members if e["node"]["user"]["email"] == beta.email]
    removed = await api_call(
        gw, "mutation($id: ID!) { removeMember(membershipId: $id) }", {"id": membership}, token=gw.owner_token
    )
    assert removed["data"] == {"removeMember": True}
    assert sql(database_url, "SELECT count(*) FROM sso_identities")[0][0] == 0
    r = await through_provider(gw.browser, f"{GATEWAY}/auth/sso/acme")
    assert r.status_code == 400
    assert "sso_link_requires_consent" in reasons(caplog)
    assert (
        sql(
            database_url,
            "SELECT count(*) FROM memberships WHERE organization_id = :o AND user_id = :u",
            o=gw.tenant.org_id,
            u=beta.user_id,
        )[0][0]
        == 0
    )
