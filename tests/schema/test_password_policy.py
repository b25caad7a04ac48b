"""An organization's password policy wherever a password is set (a new account through an invitation, a reset,
a change): the minimum length, the breached list, the history (across the person's organizations), and the
maximum age, which restricts a password sign-in to changing the password."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from identity.passwords import common_passwords, floor_passwords
from tests.conftest import Tenant, error_codes, gql, login, make_tenant, sql
from tests.invitations import accept, invitation_token, invite, join
from tests.mail import last_mail, token_in
from tests.policy_rows import set_policy

CHANGE = "mutation($c: String!, $n: String!) { changePassword(currentPassword: $c, newPassword: $n) }"
REQUEST = "mutation($e: String!) { requestPasswordReset(email: $e) }"
RESET = "mutation($t: String!, $p: String!) { resetPassword(token: $t, newPassword: $p) }"
ORG = "{ organization { id slug } }"
ME = "{ me { user { email } } }"
LONG = "a long enough passphrase"  # 24 characters
LONGER = "an even longer passphrase, twenty-eight"
RARE_BREACHED = sorted(p for p in common_passwords() - floor_passwords() if len(p) >= 12 and p.isascii())[0]
FLOOR_BREACHED = "qwerty123456"


class PasswordSetter:
    """Sets a password through one of the three ways, the same attempt after attempt."""

    def __init__(self, flow: str, client: httpx.AsyncClient, database_url: str, tenant: Tenant) -> None:
        self.flow, self.client, self.url, self.tenant = flow, client, database_url, tenant
        self.current = tenant.password
        self.token: str | None = None
        self.admin: str | None = None
        self.joined = 0

    async def attempt(self, password: str) -> dict[str, Any]:
        if self.flow == "change":
            token = (await login(self.client, self.tenant, self.current))["accessToken"]
            body = (await gql(self.client, CHANGE, {"c": self.current, "n": password}, token=token)).json()
        elif self.flow == "reset":
            if self.token is None:
                assert (await gql(self.client, REQUEST, {"e": self.tenant.email})).json()["data"]
                self.token = token_in(await last_mail(self.url, self.tenant.email, "password_reset"))
            body = (await gql(self.client, RESET, {"t": self.token, "p": password})).json()
        else:
            if self.admin is None:
                self.admin = (await login(self.client, self.tenant))["accessToken"]
            email = f"new{self.joined}@acme.test"
            if self.token is None:
                await invite(self.client, self.admin, email, "viewer")
                self.token = await invitation_token(self.url, email)
            body = (await accept(self.client, self.token, password)).json()
        if not body.get("errors"):
            self.current, self.token = password, None
            self.joined += 1
        return body  # type: ignore[no-any-return]


def refused(body: dict[str, Any], fragment: str) -> None:
    assert error_codes(body) == ["BAD_USER_INPUT"], body
    assert fragment in body["errors"][0]["message"], body


@pytest.fixture(params=["signup", "reset", "change"])
def setter(request: pytest.FixtureRequest, client: httpx.AsyncClient, database_url: str, tenant: Tenant) -> Any:
    return PasswordSetter(request.param, client, database_url, tenant)


async def test_the_organizations_minimum_length(setter: PasswordSetter, database_url: str, tenant: Tenant) -> None:
    await set_policy(database_url, tenant.org_id, password_min_length=26)
    refused(await setter.attempt(LONG), "at least 26 characters (the organization's password policy)")
    assert not (await setter.attempt(LONGER)).get("errors")


async def test_the_floor_applies_without_a_policy(setter: PasswordSetter) -> None:
    refused(await setter.attempt("elevenchars"), "at least 12 characters")


async def test_breached_passwords_are_refused_by_default(setter: PasswordSetter) -> None:
    refused(await setter.attempt(RARE_BREACHED), "breached")
    assert not (await setter.attempt(LONGER)).get("errors")


async def test_breached_check_off_still_refuses_the_floor_list(
    setter: PasswordSetter, database_url: str, tenant: Tenant
) -> None:
    await set_policy(database_url, tenant.org_id, breached_password_check=False)
    refused(await setter.attempt(FLOOR_BREACHED), "breached")
    assert not (await setter.attempt(RARE_BREACHED)).get("errors")


@pytest.mark.parametrize("flow", ["reset", "change"])
async def test_history_refuses_the_last_passwords(
    flow: str, client: httpx.AsyncClient, database_url: str, tenant: Tenant
) -> None:
    await set_policy(database_url, tenant.org_id, password_history=3)
    changes = PasswordSetter("change", client, database_url, tenant)
    setter = PasswordSetter(flow, client, database_url, tenant)
    first, second, third = (f"{LONG} number {n}" for n in ("one", "two", "three"))
    for password in (first, second):
        assert not (await changes.attempt(password)).get("errors")
    setter.current = changes.current
    # the current password and the one before it are among the last three
    refused(await setter.attempt(second), "the last 3 passwords")
    refused(await setter.attempt(first), "used recently")
    assert not (await setter.attempt(third)).get("errors")
    changes.current = third
    refused(await changes.attempt(first), "used recently")  # first, second, third: the last three
    assert not (await changes.attempt(f"{LONG} number four")).get("errors")
    # now `first` is the fourth most recent: allowed again
    assert not (await changes.attempt(first)).get("errors")
    [(count,)] = sql(database_url, "SELECT count(*) FROM password_history WHERE user_id = :u", u=tenant.user_id)
    assert count == 5


async def test_every_password_set_is_remembered_even_without_a_history_rule(
    client: httpx.AsyncClient, database_url: str, tenant: Tenant
) -> None:
    setter = PasswordSetter("change", client, database_url, tenant)
    assert not (await setter.attempt(LONGER)).get("errors")
    assert not (await setter.attempt(tenant.password)).get("errors")  # no rule: the old one may come back
    [(count,)] = sql(database_url, "SELECT count(*) FROM password_history WHERE user_id = :u", u=tenant.user_id)
    assert count == 2


async def test_history_of_the_strictest_organization_applies(
    client: httpx.AsyncClient, database_url: str, tenant: Tenant
) -> None:
    """A person in two organizations: the other organization's history rule refuses a change made while
    signed in to the lenient one."""
    other = await make_tenant(database_url, slug="globex", email="owner@globex.test")
    await set_policy(database_url, other.org_id, password_history=5)
    admin = (await login(client, other))["accessToken"]
    await join(client, database_url, admin, tenant.email, "viewer", tenant.password)
    token = (await login(client, tenant))["accessToken"]  # the first membership: acme, no rule
    assert (await gql(client, ORG, token=token)).json()["data"]["organization"]["slug"] == "acme"
    for current, new in ((tenant.password, LONGER), (LONGER, LONG)):
        body = (await gql(client, CHANGE, {"c": current, "n": new}, token=token)).json()
        assert body["data"] == {"changePassword": True}, body
    body = (await gql(client, CHANGE, {"c": LONG, "n": LONGER}, token=token)).json()
    refused(body, "the last 5 passwords")
    # and the strictest minimum length too
    await set_policy(database_url, other.org_id, password_min_length=40)
    refused((await gql(client, CHANGE, {"c": LONG, "n": LONG + " and more"}, token=token)).json(), "at least 40")


async def test_an_old_password_signs_in_only_to_change_it(
    app: Any, client: httpx.AsyncClient, database_url: str, tenant: Tenant
) -> None:
    await set_policy(database_url, tenant.org_id, password_max_age_days=30)
    old = datetime.now(UTC) - timedelta(days=31)
    sql(database_url, "UPDATE users SET password_changed_at = :t WHERE id = :u", t=old, u=tenant.user_id)
    token = (await login(client, tenant))["accessToken"]
    body = (await gql(client, ORG, token=token)).json()
    assert error_codes(body) == ["FORBIDDEN"]
    assert body["errors"][0]["extensions"]["reason"] == "PASSWORD_CHANGE_REQUIRED"
    assert "changePassword" in body["errors"][0]["message"]
    create = 'mutation { createApiKey(input: {name: "k", scopes: ["organization:read"]}) { secret } }'
    assert (await gql(client, create, token=token)).json()["errors"][0]["extensions"]["reason"] == (
        "PASSWORD_CHANGE_REQUIRED"
    )
    assert (await gql(client, ME, token=token)).json()["data"]["me"]["user"]["email"] == tenant.email
    body = (await gql(client, CHANGE, {"c": tenant.password, "n": LONGER}, token=token)).json()
    assert body["data"] == {"changePassword": True}, body
    # the same session, at once: no longer restricted
    assert (await gql(client, ORG, token=token)).json()["data"]["organization"]["slug"] == "acme"
    fresh = (await login(client, tenant, LONGER))["accessToken"]
    assert (await gql(client, ORG, token=fresh)).json()["data"]["organization"]["slug"] == "acme"


async def test_a_recent_password_is_not_restricted(
    client: httpx.AsyncClient, database_url: str, tenant: Tenant
) -> None:
    await set_policy(database_url, tenant.org_id, password_max_age_days=30)
    recent = datetime.now(UTC) - timedelta(days=29)
    sql(database_url, "UPDATE users SET password_changed_at = :t WHERE id = :u", t=recent, u=tenant.user_id)
    token = (await login(client, tenant))["accessToken"]
    assert (await gql(client, ORG, token=token)).json()["data"]["organization"]["slug"] == "acme"
