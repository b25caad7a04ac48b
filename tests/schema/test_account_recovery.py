"""Account recovery and the address (C-134): password reset by email, email verification, email change."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest

from gateway.app import create_app
from tests.conftest import LOGIN, Tenant, error_codes, gql, login, make_settings, make_tenant, running, sql
from tests.invitations import join
from tests.mail import last_mail, mails_to, token_in

REQUEST = "mutation($e: String!) { requestPasswordReset(email: $e) }"
RESET = "mutation($t: String!, $p: String!) { resetPassword(token: $t, newPassword: $p) }"
SEND_VERIFICATION = "mutation { sendEmailVerification }"
VERIFY = "mutation($t: String!) { verifyEmail(token: $t) }"
CHANGE = "mutation($e: String!, $p: String) { changeEmail(newEmail: $e, currentPassword: $p) }"
CONFIRM = "mutation($t: String!) { confirmEmailChange(token: $t) }"
ME = "{ me { user { email emailVerified } } }"
NEW_PASSWORD = "a brand new long passphrase"


def at(value: Any) -> datetime:
    return datetime.fromisoformat(value) if isinstance(value, str) else value


async def reset_token(client: httpx.AsyncClient, database_url: str, email: str) -> str:
    body = (await gql(client, REQUEST, {"e": email})).json()
    assert body["data"] == {"requestPasswordReset": True}, body
    return token_in(await last_mail(database_url, email, "password_reset"))


async def test_c134_the_answer_is_the_same_for_existing_and_unknown_addresses(
    client: httpx.AsyncClient, database_url: str, tenant: Tenant
) -> None:
    known = await gql(client, REQUEST, {"e": tenant.email})
    unknown = await gql(client, REQUEST, {"e": "nobody@acme.test"})
    malformed = await gql(client, REQUEST, {"e": "not an address"})
    assert known.status_code == unknown.status_code == malformed.status_code == 200
    assert known.json()["data"] == unknown.json()["data"] == malformed.json()["data"] == {"requestPasswordReset": True}
    assert [r.json().get("errors") for r in (known, unknown, malformed)] == [None, None, None]
    assert await mails_to(database_url, "nobody@acme.test") == []
    assert len(await mails_to(database_url, tenant.email, "password_reset")) == 1
    # both requests were recorded alike; only the account's can be spent
    assert sql(database_url, "SELECT count(*) FROM account_tokens WHERE purpose = 'password_reset'")[0][0] == 3


async def test_c134_a_reset_sets_the_password_once_and_ends_every_session(
    client: httpx.AsyncClient, database_url: str, tenant: Tenant
) -> None:
    session = await login(client, tenant)
    token = await reset_token(client, database_url, tenant.email)
    assert (await gql(client, RESET, {"t": token, "p": NEW_PASSWORD})).json()["data"] == {"resetPassword": True}
    # single use
    again = (await gql(client, RESET, {"t": token, "p": "yet another long passphrase"})).json()
    assert error_codes(again) == ["UNAUTHENTICATED"]
    # the old session, its refresh token and the old password are gone; the new password signs in
    assert (await gql(client, ME, token=session["accessToken"])).status_code == 401
    refreshed = await gql(
        client,
        "mutation($r: String) { refreshToken(refreshToken: $r) { accessToken } }",
        {"r": session["refreshToken"]},
    )
    assert error_codes(refreshed.json()) == ["UNAUTHENTICATED"]
    assert error_codes((await gql(client, LOGIN, {"email": tenant.email, "password": tenant.password})).json()) == [
        "UNAUTHENTICATED"
    ]
    assert (await gql(client, LOGIN, {"email": tenant.email, "password": NEW_PASSWORD})).json()["data"]["login"]
    notice = await last_mail(database_url, tenant.email, "password_changed")
    assert "password" in notice.subject.lower()


async def test_c134_a_reset_token_expires_after_thirty_minutes(
    client: httpx.AsyncClient, app: Any, database_url: str, tenant: Tenant
) -> None:
    token = await reset_token(client, database_url, tenant.email)
    expires = sql(
        database_url, "SELECT expires_at, created_at FROM account_tokens WHERE user_id = :u", u=tenant.user_id
    )
    assert [(at(e) - at(c)) for e, c in expires] == [timedelta(minutes=30)]
    sql(database_url, "UPDATE account_tokens SET expires_at = :t", t=app.state.services.now() - timedelta(seconds=1))
    assert error_codes((await gql(client, RESET, {"t": token, "p": NEW_PASSWORD})).json()) == ["UNAUTHENTICATED"]


async def test_c134_a_token_for_one_account_never_resets_another(
    client: httpx.AsyncClient, database_url: str, tenant: Tenant
) -> None:
    other = await make_tenant(database_url, slug="other", email="owner@other.test")
    token = await reset_token(client, database_url, other.email)
    assert (await gql(client, RESET, {"t": token, "p": NEW_PASSWORD})).json()["data"]["resetPassword"]
    # only the token's own account changed
    assert (await gql(client, LOGIN, {"email": tenant.email, "password": tenant.password})).json()["data"]["login"]
    assert (await gql(client, LOGIN, {"email": other.email, "password": NEW_PASSWORD})).json()["data"]["login"]
    for bad in ("ptr_" + "A" * 43, "pti_" + "A" * 43, "", "ptr_" + "x" * 200):
        assert error_codes((await gql(client, RESET, {"t": bad, "p": NEW_PASSWORD})).json()) == ["UNAUTHENTICATED"]


async def test_c134_a_reset_link_sent_before_an_address_change_is_dead(
    client: httpx.AsyncClient, database_url: str, tenant: Tenant
) -> None:
    token = await reset_token(client, database_url, tenant.email)
    owner = (await login(client, tenant))["accessToken"]
    await gql(client, CHANGE, {"e": "moved@acme.test", "p": tenant.password}, token=owner)
    confirm = token_in(await last_mail(database_url, "moved@acme.test", "email_change_confirm"))
    assert (await gql(client, CONFIRM, {"t": confirm})).json()["data"] == {"confirmEmailChange": True}
    assert error_codes((await gql(client, RESET, {"t": token, "p": NEW_PASSWORD})).json()) == ["UNAUTHENTICATED"]


async def test_c134_a_reset_clears_the_lockout(database_url: str, signing_key: str, tenant: Tenant) -> None:
    async with running(create_app(make_settings(database_url, signing_key))) as client:
        for i in range(7):
            await gql(client, LOGIN, {"email": tenant.email, "password": f"wrong guess {i}"})
        locked = await gql(client, LOGIN, {"email": tenant.email, "password": tenant.password})
        assert error_codes(locked.json()) == ["UNAUTHENTICATED"]
        token = await reset_token(client, database_url, tenant.email)
        assert (await gql(client, RESET, {"t": token, "p": NEW_PASSWORD})).json()["data"]["resetPassword"]
        assert (await gql(client, LOGIN, {"email": tenant.email, "password": NEW_PASSWORD})).json()["data"]["login"]


async def test_c134_requests_are_limited_per_address_and_per_account(
    database_url: str, signing_key: str, tenant: Tenant
) -> None:
    settings = make_settings(database_url, signing_key, trusted_proxies=["203.0.113.0/24"])
    async with running(create_app(settings)) as client:
        # per account: a handful of mails an hour, the rest recorded and not sent, the answer unchanged
        for i in range(5):
            r = await gql(client, REQUEST, {"e": tenant.email}, headers={"X-Forwarded-For": f"192.0.2.{i + 1}"})
            assert r.json()["data"] == {"requestPasswordReset": True}
        assert len(await mails_to(database_url, tenant.email, "password_reset")) == 3
        # per client address: beyond the limit, RATE_LIMITED, the same for any address asked about
        attacker = {"X-Forwarded-For": "198.51.100.99"}
        for i in range(10):
            assert (await gql(client, REQUEST, {"e": f"probe{i}@acme.test"}, headers=attacker)).json()["data"]
        for email in (tenant.email, "nobody@acme.test"):
            body = (await gql(client, REQUEST, {"e": email}, headers=attacker)).json()
            assert error_codes(body) == ["RATE_LIMITED"]
            assert body["errors"][0]["extensions"]["retryAfter"] > 0


@pytest.mark.parametrize("password", ["short", "owner@acme.test", "x" * 1025])
async def test_c134_a_weak_or_oversized_password_is_refused_and_the_token_kept(
    client: httpx.AsyncClient, database_url: str, tenant: Tenant, password: str
) -> None:
    token = await reset_token(client, database_url, tenant.email)
    assert error_codes((await gql(client, RESET, {"t": token, "p": password})).json()) == ["BAD_USER_INPUT"]
    assert (await gql(client, RESET, {"t": token, "p": NEW_PASSWORD})).json()["data"]["resetPassword"]


async def test_an_api_key_cannot_reset_or_change_an_account(client: httpx.AsyncClient, tenant: Tenant) -> None:
    owner = (await login(client, tenant))["accessToken"]
    created = (
        await gql(
            client, 'mutation { createApiKey(input: {name: "k", scopes: ["members:read"]}) { secret } }', token=owner
        )
    ).json()["data"]["createApiKey"]["secret"]
    for doc, variables in (
        (REQUEST, {"e": tenant.email}),
        (RESET, {"t": "ptr_x", "p": NEW_PASSWORD}),
        (CHANGE, {"e": "k@acme.test", "p": None}),
        (SEND_VERIFICATION, {}),
    ):
        r = await client.post("/graphql", json={"query": doc, "variables": variables}, headers={"X-API-Key": created})
        assert r.status_code == 403, (doc, r.text)


# -- verification and change of the address -----------------------------------------------------------


async def test_an_account_made_by_invitation_is_verified_and_one_made_by_the_operator_verifies_by_email(
    client: httpx.AsyncClient, database_url: str, tenant: Tenant
) -> None:
    owner = (await login(client, tenant))["accessToken"]
    # the owner was made by the operator: not verified yet
    assert (await gql(client, ME, token=owner)).json()["data"]["me"]["user"]["emailVerified"] is False
    joined = await join(client, database_url, owner, "invited@acme.test", "viewer", NEW_PASSWORD)
    assert (await gql(client, ME, token=joined.access_token)).json()["data"]["me"]["user"]["emailVerified"] is True
    assert error_codes((await gql(client, SEND_VERIFICATION, token=joined.access_token)).json()) == ["CONFLICT"]
    assert (await gql(client, SEND_VERIFICATION, token=owner)).json()["data"] == {"sendEmailVerification": True}
    token = token_in(await last_mail(database_url, tenant.email, "email_verification"))
    assert (await gql(client, VERIFY, {"t": token})).json()["data"] == {"verifyEmail": True}
    assert (await gql(client, ME, token=owner)).json()["data"]["me"]["user"]["emailVerified"] is True
    assert error_codes((await gql(client, VERIFY, {"t": token})).json()) == ["UNAUTHENTICATED"]


async def test_an_address_change_is_confirmed_from_the_new_address_and_told_to_the_old(
    client: httpx.AsyncClient, database_url: str, tenant: Tenant
) -> None:
    owner = (await login(client, tenant))["accessToken"]
    # the account's own password is required: a stolen session alone cannot move the account
    assert error_codes((await gql(client, CHANGE, {"e": "new@acme.test", "p": None}, token=owner)).json()) == [
        "BAD_USER_INPUT"
    ]
    assert error_codes(
        (await gql(client, CHANGE, {"e": "new@acme.test", "p": "not the password"}, token=owner)).json()
    ) == ["UNAUTHENTICATED"]
    changed = await gql(client, CHANGE, {"e": "new@acme.test", "p": tenant.password}, token=owner)
    assert changed.json()["data"] == {"changeEmail": True}
    # nothing moves until the new address confirms
    assert (await gql(client, ME, token=owner)).json()["data"]["me"]["user"]["email"] == tenant.email
    token = token_in(await last_mail(database_url, "new@acme.test", "email_change_confirm"))
    assert (await gql(client, CONFIRM, {"t": token})).json()["data"] == {"confirmEmailChange": True}
    assert (await gql(client, ME, token=owner)).json()["data"]["me"]["user"] == {
        "email": "new@acme.test",
        "emailVerified": True,
    }
    notice = await last_mail(database_url, tenant.email, "email_changed")
    assert "n***@acme.test" in notice.text
    assert "new@acme.test" not in notice.text
    assert (await gql(client, LOGIN, {"email": "new@acme.test", "password": tenant.password})).json()["data"]["login"]


async def test_an_address_change_to_a_taken_address_answers_the_same_and_moves_nothing(
    client: httpx.AsyncClient, database_url: str, tenant: Tenant
) -> None:
    other = await make_tenant(database_url, slug="other", email="owner@other.test")
    owner = (await login(client, tenant))["accessToken"]
    body = (await gql(client, CHANGE, {"e": other.email, "p": tenant.password}, token=owner)).json()
    assert body["data"] == {"changeEmail": True}
    # the other address is told someone tried, with no link; no token went anywhere
    notice = await last_mail(database_url, other.email)
    assert notice.template == "email_in_use"
    assert "#token=" not in notice.text
    assert (await gql(client, ME, token=owner)).json()["data"]["me"]["user"]["email"] == tenant.email


@pytest.mark.parametrize("email", ["not an address", "a@b@c", "x" * 330 + "@acme.test", ""])
async def test_an_invalid_new_address_is_bad_input(client: httpx.AsyncClient, tenant: Tenant, email: str) -> None:
    owner = (await login(client, tenant))["accessToken"]
    body = (await gql(client, CHANGE, {"e": email, "p": tenant.password}, token=owner)).json()
    assert error_codes(body) == ["BAD_USER_INPUT"]
