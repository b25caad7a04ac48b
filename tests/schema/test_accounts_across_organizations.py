"""Accounts across organizations, tried as an attacker would (C-124, C-125, C-127): an organization never
creates, claims, changes, unlocks or learns about an account that is not its member by that person's act."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import httpx
import pyotp
import pytest

from gateway.app import create_app
from tests.conftest import LOGIN, Tenant, error_codes, gql, login, make_settings, make_tenant, running, sql
from tests.invitations import accept, invitation_token, invite, join
from tests.mail import last_mail, mails_to

PASSWORD_OF_HOLDER = "the holder's own long passphrase"
PASSWORD_A_WOULD_CHOOSE = "the attacker's chosen passphrase"
LOGIN_ORG = """
mutation($email: String!, $password: String!, $org: String, $totp: String) {
  login(email: $email, password: $password, organization: $org, totp: $totp) { accessToken organization { slug } }
}
"""
INVITATIONS = """
query($status: InvitationStatus) { organization { invitations(first: 50, status: $status) {
  edges { node { id email role status sendCount } } } } }
"""
RESEND = "mutation($id: ID!) { resendInvitation(id: $id) { id status sendCount expiresAt } }"
REVOKE = "mutation($id: ID!) { revokeInvitation(id: $id) { id status } }"
ADD = 'mutation($e: String!) { addMember(email: $e, role: "viewer") { invitation { id } } }'
UNLOCK = "mutation($id: ID!) { unlockUser(userId: $id) }"
MEMBERS = "{ organization { members(first: 100) { edges { node { id role user { id email } } } } } }"


@pytest.fixture
async def two(database_url: str) -> tuple[Tenant, Tenant]:
    a = await make_tenant(database_url, slug="alpha", email="owner@alpha.test")
    b = await make_tenant(database_url, slug="beta", email="owner@beta.test")
    return a, b


async def token_of(client: httpx.AsyncClient, t: Tenant) -> str:
    return str((await login(client, t))["accessToken"])


def shape(value: Any) -> Any:
    """The answer with what differs by nature between two invitations (ids, times, the address) blanked."""
    if isinstance(value, dict):
        return {k: ("*" if k in {"id", "expiresAt", "email"} else shape(v)) for k, v in value.items()}
    return value


# -- C-124: pre-hijack ---------------------------------------------------------------------------------


async def test_c124_the_inviting_organization_never_gets_the_invitation_token(
    client: httpx.AsyncClient, database_url: str, two: tuple[Tenant, Tenant]
) -> None:
    a, _ = two
    added = await invite(client, await token_of(client, a), "new.cfo@beta.test", "admin")
    assert added["invitationToken"] is None
    assert added["membership"] is None
    assert added["invitation"]["status"] == "PENDING"
    # nothing was created for the address: no account, no membership
    assert sql(database_url, "SELECT count(*) FROM users WHERE email_key = 'new.cfo@beta.test'")[0][0] == 0
    # the token went to the address, and only there
    [mail] = await mails_to(database_url, "new.cfo@beta.test", "invitation")
    assert "Alpha" in mail.text
    assert "/invitations/accept#token=pti_" in mail.text


async def test_c124_a_pre_registered_address_never_lets_the_first_inviter_into_a_later_organization(
    client: httpx.AsyncClient, database_url: str, two: tuple[Tenant, Tenant]
) -> None:
    """A invites first; the holder of the address accepts (their account, their password); B invites later:
    the account joins B only when its holder accepts B's invitation too, and A holds no credential."""
    a, b = two
    email = "new.cfo@beta.test"
    await invite(client, await token_of(client, a), email, "viewer")
    first = await accept(client, await invitation_token(database_url, email), PASSWORD_OF_HOLDER)
    assert first.json()["data"]["acceptInvitation"]["organization"]["slug"] == "alpha"
    tb = await token_of(client, b)
    added = await invite(client, tb, email, "admin")
    assert added["invitationToken"] is None  # "user exists" used to answer here, and attach the account
    members = (await gql(client, MEMBERS, token=tb)).json()["data"]["organization"]["members"]["edges"]
    assert email not in [e["node"]["user"]["email"] for e in members]
    # a password the inviting organization might have chosen opens nothing, anywhere
    for org in ("alpha", "beta"):
        r = await gql(client, LOGIN_ORG, {"email": email, "password": PASSWORD_A_WOULD_CHOOSE, "org": org})
        assert error_codes(r.json()) == ["UNAUTHENTICATED"]
    # B's token, spent with a password other than the account's own, joins nothing
    token_b = await invitation_token(database_url, email)
    refused = await accept(client, token_b, PASSWORD_A_WOULD_CHOOSE)
    assert error_codes(refused.json()) == ["UNAUTHENTICATED"]
    # the holder accepts with their own password: now a member of B, and the password is unchanged
    joined = await accept(client, token_b, PASSWORD_OF_HOLDER)
    assert joined.json()["data"]["acceptInvitation"]["organization"]["slug"] == "beta"
    r = await gql(client, LOGIN_ORG, {"email": email, "password": PASSWORD_OF_HOLDER, "org": "beta"})
    assert r.json()["data"]["login"]["organization"]["slug"] == "beta"


async def test_c124_a_spent_or_guessed_invitation_token_answers_like_a_random_one(
    client: httpx.AsyncClient, database_url: str, two: tuple[Tenant, Tenant]
) -> None:
    a, _ = two
    await invite(client, await token_of(client, a), "x@elsewhere.test", "viewer")
    token = await invitation_token(database_url, "x@elsewhere.test")
    assert (await accept(client, token, PASSWORD_OF_HOLDER)).json()["data"]["acceptInvitation"]
    for bad in (token, "pti_" + "A" * 43, "", "x" * 129):
        body = (await accept(client, bad, PASSWORD_OF_HOLDER)).json()
        assert error_codes(body) == ["UNAUTHENTICATED"], bad
        assert body["errors"][0]["message"] == "Invalid or expired invitation."


# -- C-125: membership without consent --------------------------------------------------------------


async def test_c125_an_invitation_answers_the_same_whether_or_not_the_address_has_an_account(
    client: httpx.AsyncClient, database_url: str, two: tuple[Tenant, Tenant]
) -> None:
    a, b = two
    ta = await token_of(client, a)
    existing = await invite(client, ta, b.email, "viewer")  # B's owner has an account
    fresh = await invite(client, ta, "nobody-yet@beta.test", "viewer")
    assert shape(existing) == shape(fresh)
    # nothing about B's owner reaches A: no user id, second factor, last sign-in, not even existence
    listed = (await gql(client, INVITATIONS, token=ta)).json()["data"]["organization"]["invitations"]["edges"]
    assert [shape(e["node"]) for e in listed] == [shape(e["node"]) for e in reversed(listed)]
    members = (await gql(client, MEMBERS, token=ta)).json()["data"]["organization"]["members"]["edges"]
    assert b.email not in [e["node"]["user"]["email"] for e in members]
    # nor can A act on the account: unlock, role change or removal name nothing it can reach
    assert error_codes((await gql(client, UNLOCK, {"id": b.user_id}, token=ta)).json()) == ["NOT_FOUND"]


async def test_c125_the_account_joins_only_when_its_holder_accepts_while_signed_in(
    client: httpx.AsyncClient, database_url: str, two: tuple[Tenant, Tenant]
) -> None:
    a, b = two
    await invite(client, await token_of(client, a), b.email, "analyst")
    token = await invitation_token(database_url, b.email)
    tb = await token_of(client, b)
    # signed in as the account and giving its password: joins, and the session is in the new organization
    body = (await accept(client, token, b.password, bearer=tb)).json()
    assert body["data"]["acceptInvitation"]["organization"]["slug"] == "alpha"
    me = (
        await gql(
            client, "{ me { organization { slug } role } }", token=body["data"]["acceptInvitation"]["accessToken"]
        )
    ).json()
    assert me["data"]["me"] == {"organization": {"slug": "alpha"}, "role": "analyst"}
    # B's session and membership are untouched
    assert (await gql(client, "{ me { organization { slug } } }", token=tb)).json()["data"]["me"] == {
        "organization": {"slug": "beta"}
    }


async def test_c125_an_account_with_a_second_factor_accepts_only_signed_in(
    client: httpx.AsyncClient, app: Any, database_url: str, two: tuple[Tenant, Tenant]
) -> None:
    a, b = two
    tb = await token_of(client, b)
    secret = (await gql(client, "mutation { enrollTotp { secret } }", token=tb)).json()["data"]["enrollTotp"]["secret"]
    confirmed = await gql(
        client, "mutation($c: String!) { confirmTotp(code: $c) }", {"c": pyotp.TOTP(secret).now()}, token=tb
    )
    assert "errors" not in confirmed.json(), confirmed.json()
    await invite(client, await token_of(client, a), b.email, "viewer")
    token = await invitation_token(database_url, b.email)
    # the password alone would pass the second factor by: refused, with the way forward
    body = (await accept(client, token, b.password)).json()
    assert error_codes(body) == ["UNAUTHENTICATED"]
    assert body["errors"][0]["extensions"]["reason"] == "SIGN_IN_REQUIRED"
    assert (await accept(client, token, b.password, bearer=tb)).json()["data"]["acceptInvitation"]


# -- invitations: re-sent, revoked, expired, counted ---------------------------------------------------


async def test_an_invitation_is_resent_with_a_new_token_and_the_old_one_stops(
    client: httpx.AsyncClient, app: Any, database_url: str, tenant: Tenant
) -> None:
    owner = await token_of(client, tenant)
    added = await invite(client, owner, "resend@acme.test", "viewer")
    first = await invitation_token(database_url, "resend@acme.test")
    too_soon = (await gql(client, RESEND, {"id": added["invitation"]["id"]}, token=owner)).json()
    assert error_codes(too_soon) == ["CONFLICT"]
    sql(database_url, "UPDATE invitations SET sent_at = :t", t=app.state.services.now() - timedelta(minutes=2))
    resent = (await gql(client, RESEND, {"id": added["invitation"]["id"]}, token=owner)).json()
    assert resent["data"]["resendInvitation"]["sendCount"] == 2
    second = await invitation_token(database_url, "resend@acme.test")
    assert second != first
    assert error_codes((await accept(client, first, PASSWORD_OF_HOLDER)).json()) == ["UNAUTHENTICATED"]
    assert (await accept(client, second, PASSWORD_OF_HOLDER)).json()["data"]["acceptInvitation"]
    accepted = (await gql(client, INVITATIONS, {"status": "ACCEPTED"}, token=owner)).json()
    assert [e["node"]["email"] for e in accepted["data"]["organization"]["invitations"]["edges"]] == [
        "resend@acme.test"
    ]
    assert error_codes((await gql(client, RESEND, {"id": added["invitation"]["id"]}, token=owner)).json()) == [
        "CONFLICT"
    ]


async def test_a_revoked_or_expired_invitation_cannot_be_accepted(
    client: httpx.AsyncClient, app: Any, database_url: str, tenant: Tenant
) -> None:
    owner = await token_of(client, tenant)
    revoked = await invite(client, owner, "revoked@acme.test", "viewer")
    body = (await gql(client, REVOKE, {"id": revoked["invitation"]["id"]}, token=owner)).json()
    assert body["data"]["revokeInvitation"]["status"] == "REVOKED"
    token = await invitation_token(database_url, "revoked@acme.test")
    assert error_codes((await accept(client, token, PASSWORD_OF_HOLDER)).json()) == ["UNAUTHENTICATED"]
    await invite(client, owner, "late@acme.test", "viewer")
    sql(
        database_url,
        "UPDATE invitations SET expires_at = :t WHERE email = 'late@acme.test'",
        t=app.state.services.now() - timedelta(seconds=1),
    )
    late = await invitation_token(database_url, "late@acme.test")
    assert error_codes((await accept(client, late, PASSWORD_OF_HOLDER)).json()) == ["UNAUTHENTICATED"]
    expired = (await gql(client, INVITATIONS, {"status": "EXPIRED"}, token=owner)).json()
    assert [e["node"]["email"] for e in expired["data"]["organization"]["invitations"]["edges"]] == ["late@acme.test"]
    assert (
        sql(database_url, "SELECT count(*) FROM users WHERE email IN ('revoked@acme.test', 'late@acme.test')")[0][0]
        == 0
    )


async def test_another_tenants_invitation_answers_not_found(
    client: httpx.AsyncClient, database_url: str, two: tuple[Tenant, Tenant]
) -> None:
    a, b = two
    theirs = await invite(client, await token_of(client, b), "someone@beta.test", "viewer")
    ta = await token_of(client, a)
    for doc in (RESEND, REVOKE):
        assert error_codes((await gql(client, doc, {"id": theirs["invitation"]["id"]}, token=ta)).json()) == [
            "NOT_FOUND"
        ]
    assert sql(database_url, "SELECT revoked_at FROM invitations")[0][0] is None


async def test_pending_invitations_count_against_the_members_quota(
    client: httpx.AsyncClient, database_url: str
) -> None:
    t = await make_tenant(database_url, slug="tiny", email="owner@tiny.test", limits={"MEMBERS": 2})
    owner = await token_of(client, t)
    await invite(client, owner, "one@tiny.test", "viewer")
    body = (await gql(client, ADD, {"e": "two@tiny.test"}, token=owner)).json()
    assert error_codes(body) == ["QUOTA_EXCEEDED"]


async def test_an_address_already_member_or_invited_is_a_conflict(
    client: httpx.AsyncClient, database_url: str, tenant: Tenant
) -> None:
    owner = await token_of(client, tenant)
    await join(client, database_url, owner, "member@acme.test", "viewer", PASSWORD_OF_HOLDER)
    await invite(client, owner, "pending@acme.test", "viewer")
    for email in ("MEMBER@acme.test", "pending@acme.test", tenant.email):
        body = (await gql(client, ADD, {"e": email}, token=owner)).json()
        assert error_codes(body) == ["CONFLICT"], email


# -- C-127: lockout and unlock scoped to the organization ------------------------------------------------


@pytest.fixture
async def shared_member(
    client: httpx.AsyncClient, database_url: str, two: tuple[Tenant, Tenant]
) -> tuple[Tenant, Tenant, str, str]:
    """Someone who joined both A and B by their own act: (A, B, their email, their user id)."""
    a, b = two
    email = "both@shared.test"
    joined = await join(client, database_url, await token_of(client, b), email, "viewer", PASSWORD_OF_HOLDER)
    await invite(client, await token_of(client, a), email, "viewer")
    body = (await accept(client, await invitation_token(database_url, email), PASSWORD_OF_HOLDER)).json()
    assert body["data"]["acceptInvitation"]
    return a, b, email, joined.user_id


async def test_c127_failures_aimed_at_one_organization_never_lock_the_account_out_of_another(
    client: httpx.AsyncClient, shared_member: tuple[Tenant, Tenant, str, str]
) -> None:
    _, _, email, _ = shared_member
    for _ in range(7):
        r = await gql(client, LOGIN_ORG, {"email": email, "password": "wrong guess here", "org": "alpha"})
        assert error_codes(r.json()) == ["UNAUTHENTICATED"]
    locked = await gql(client, LOGIN_ORG, {"email": email, "password": PASSWORD_OF_HOLDER, "org": "alpha"})
    assert error_codes(locked.json()) == ["UNAUTHENTICATED"]
    ok = await gql(client, LOGIN_ORG, {"email": email, "password": PASSWORD_OF_HOLDER, "org": "beta"})
    assert ok.json()["data"]["login"]["organization"]["slug"] == "beta"


async def test_c127_an_organizations_unlock_clears_only_its_own_counters(
    client: httpx.AsyncClient, database_url: str, shared_member: tuple[Tenant, Tenant, str, str]
) -> None:
    a, _, email, user_id = shared_member
    for _ in range(7):
        await gql(client, LOGIN_ORG, {"email": email, "password": "wrong guess here", "org": "beta"})
    admin_a = await token_of(client, a)
    others = (
        "SELECT key, failures, locked_until FROM login_throttle WHERE account_key = :e "
        "AND (organization_id IS NULL OR organization_id <> :a) ORDER BY key"
    )
    counters = sql(database_url, others, e=email, a=a.org_id)
    assert any(row[2] is not None for row in counters)  # B's pair is locked
    assert (await gql(client, UNLOCK, {"id": user_id}, token=admin_a)).json()["data"] == {"unlockUser": True}
    # B's lock on this address stands: A's unlock cleared nothing of B's, nor the account's own counter
    assert sql(database_url, others, e=email, a=a.org_id) == counters
    still = await gql(client, LOGIN_ORG, {"email": email, "password": PASSWORD_OF_HOLDER, "org": "beta"})
    assert error_codes(still.json()) == ["UNAUTHENTICATED"]


async def test_c127_an_account_ceiling_reached_from_elsewhere_spares_known_addresses_and_second_factors(
    database_url: str, signing_key: str, tenant: Tenant
) -> None:
    settings = make_settings(database_url, signing_key, lockout_account_ceiling=5, trusted_proxies=["203.0.113.0/24"])
    app = create_app(settings)
    async with running(app) as client:
        home = {"X-Forwarded-For": "198.51.100.10"}
        assert (await gql(client, LOGIN, {"email": tenant.email, "password": tenant.password}, headers=home)).json()[
            "data"
        ]["login"]
        # many addresses guess at the account, past its ceiling
        for i in range(12):
            await gql(
                client,
                LOGIN,
                {"email": tenant.email, "password": f"guess {i} here"},
                headers={"X-Forwarded-For": f"192.0.2.{i + 1}"},
            )
        # a new address with the right password alone: refused, like any failure
        new = {"X-Forwarded-For": "192.0.2.200"}
        body = (await gql(client, LOGIN, {"email": tenant.email, "password": tenant.password}, headers=new)).json()
        assert error_codes(body) == ["UNAUTHENTICATED"]
        # the address where the account signed in before still signs in
        assert (await gql(client, LOGIN, {"email": tenant.email, "password": tenant.password}, headers=home)).json()[
            "data"
        ]["login"]
        # and with a second factor, a new address does too
        token = (await gql(client, LOGIN, {"email": tenant.email, "password": tenant.password}, headers=home)).json()[
            "data"
        ]["login"]["accessToken"]
        secret = (await gql(client, "mutation { enrollTotp { secret } }", token=token, headers=home)).json()["data"][
            "enrollTotp"
        ]["secret"]
        totp = pyotp.TOTP(secret)
        await gql(
            client, "mutation($c: String!) { confirmTotp(code: $c) }", {"c": totp.now()}, token=token, headers=home
        )
        step = int(app.state.services.totp.clock() // 30) + 1
        with_code = await gql(
            client,
            LOGIN_ORG,
            {"email": tenant.email, "password": tenant.password, "totp": totp.generate_otp(step)},
            headers={"X-Forwarded-For": "192.0.2.201"},
        )
        assert with_code.json()["data"]["login"], with_code.json()
        # a wrong password with a right code, or a right password with a wrong code: the same refusal
        for password, code in ((tenant.password, "000000"), ("wrong guess here", totp.generate_otp(step + 1))):
            r = await gql(
                client,
                LOGIN_ORG,
                {"email": tenant.email, "password": password, "totp": code},
                headers={"X-Forwarded-For": "192.0.2.202"},
            )
            assert r.json()["errors"][0]["message"] == "Invalid credentials."
            assert "reason" not in r.json()["errors"][0]["extensions"]


async def test_c127_one_address_exhausting_an_accounts_attempts_does_not_stop_the_account_elsewhere(
    database_url: str, signing_key: str, tenant: Tenant
) -> None:
    settings = make_settings(
        database_url, signing_key, login_attempts_per_account_per_minute=3, trusted_proxies=["203.0.113.0/24"]
    )
    async with running(create_app(settings)) as client:
        attacker = {"X-Forwarded-For": "192.0.2.66"}
        statuses = [
            (
                await gql(client, LOGIN, {"email": tenant.email, "password": f"guess {i} here"}, headers=attacker)
            ).status_code
            for i in range(5)
        ]
        assert statuses[-1] == 429
        r = await gql(
            client,
            LOGIN,
            {"email": tenant.email, "password": tenant.password},
            headers={"X-Forwarded-For": "198.51.100.10"},
        )
        assert r.status_code == 200
        assert r.json()["data"]["login"]["accessToken"]


# -- the new sign-in notice ------------------------------------------------------------------------------


async def test_a_sign_in_from_an_unknown_address_is_told_to_the_account(
    database_url: str, signing_key: str, tenant: Tenant
) -> None:
    settings = make_settings(database_url, signing_key, trusted_proxies=["203.0.113.0/24"])
    async with running(create_app(settings)) as client:
        for ip in ("198.51.100.1", "198.51.100.1", "198.51.100.2"):
            r = await gql(
                client, LOGIN, {"email": tenant.email, "password": tenant.password}, headers={"X-Forwarded-For": ip}
            )
            assert r.json()["data"]["login"]
    notices = await mails_to(database_url, tenant.email, "new_sign_in")
    # the first sign-in ever and the known address say nothing; the new address does
    assert len(notices) == 1
    assert "198.51.100.2" in notices[0].text
    assert (await last_mail(database_url, tenant.email)).template == "new_sign_in"
