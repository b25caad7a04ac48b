"""TOTP second factor over HTTP: enrollment, recovery codes, sign-in with a code, replay, lockout,
odd inputs, disabling, and an organization's `requireMfa`."""

from __future__ import annotations

import asyncio
import logging
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlparse

import httpx
import pyotp
import pytest
from starlette.routing import Route

from identity.secrets import SecretBox, SecretDecryptionError
from schema import build_schema
from schema.enums import Plan
from schema.limits import OPERATION_LIMITS, OperationLimits
from tests.conftest import Tenant, error_codes, gql, login, sql
from tests.invitations import join

ENROLL = "mutation { enrollTotp { secret otpauthUri qrSvg } }"
CONFIRM = "mutation($c: String!) { confirmTotp(code: $c) }"
DISABLE = "mutation($c: String!) { disableTotp(code: $c) }"
LOGIN_TOTP = """
mutation($email: String!, $password: String!, $totp: String) {
  login(email: $email, password: $password, totp: $totp) { accessToken refreshToken user { mfaEnabled } }
}
"""
ME = "{ me { user { email mfaEnabled } authMethod } }"


@dataclass
class Clock:
    now: float

    def __call__(self) -> float:
        return self.now

    def next_step(self) -> None:
        self.now += 30


@pytest.fixture
def clock(app: Any) -> Clock:
    """The TOTP clock, frozen 5 s into a 30 s step so a slow test never crosses a step by accident."""
    c = Clock((time.time() // 30) * 30 + 5)
    app.state.services.totp.clock = c
    return c


def code(secret: str, clock: Clock, offset: int = 0) -> str:
    return pyotp.TOTP(secret).generate_otp(int(clock.now // 30) + offset)


@dataclass
class Enrolled:
    token: str
    secret: str
    recovery: list[str]


async def enroll(client: httpx.AsyncClient, t: Tenant, clock: Clock) -> Enrolled:
    """Enroll and confirm, then move the clock on a step so the next code is fresh."""
    token = (await login(client, t))["accessToken"]
    started = (await gql(client, ENROLL, token=token)).json()["data"]["enrollTotp"]
    r = (await gql(client, CONFIRM, {"c": code(started["secret"], clock)}, token=token)).json()
    assert "errors" not in r, r
    clock.next_step()
    return Enrolled(token, started["secret"], r["data"]["confirmTotp"])


async def sign_in(
    client: httpx.AsyncClient, t: Tenant, totp: str | None, password: str | None = None
) -> dict[str, Any]:
    r = await gql(client, LOGIN_TOTP, {"email": t.email, "password": password or t.password, "totp": totp})
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def reason(body: dict[str, Any]) -> str | None:
    [error] = body["errors"]
    value: str | None = error["extensions"].get("reason")
    return value


def signed_in(body: dict[str, Any]) -> bool:
    return bool(body.get("data") and body["data"].get("login") and body["data"]["login"]["accessToken"])


# --- enrollment ---------------------------------------------------------------------------------------


async def test_enroll_returns_a_secret_an_otpauth_uri_and_a_clean_svg(
    client, tenant: Tenant, database_url: str, app: Any
) -> None:
    token = (await login(client, tenant))["accessToken"]
    r = (await gql(client, ENROLL, token=token)).json()
    e = r["data"]["enrollTotp"]
    uri = urlparse(e["otpauthUri"])
    assert uri.scheme == "otpauth"
    assert uri.netloc == "totp"
    assert parse_qs(uri.query)["secret"] == [e["secret"]]
    assert parse_qs(uri.query)["issuer"] == ["Portcullis"]
    assert len(e["secret"]) == 32
    root = ET.fromstring(e["qrSvg"])  # well-formed
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    for element in root.iter():
        assert not element.tag.endswith("script")
        assert not element.tag.endswith("foreignObject")
        assert not any(a.lower().startswith("on") or "href" in a for a in element.attrib)
    assert "script" not in e["qrSvg"].lower()
    # the seed is stored encrypted under its own purpose; nothing is enabled yet
    [(pending, enabled)] = sql(database_url, "SELECT totp_pending_secret_encrypted, mfa_enabled FROM users")
    assert e["secret"] not in pending
    assert enabled in (False, 0)
    assert app.state.services.totp.box.decrypt(pending) == e["secret"]
    with pytest.raises(SecretDecryptionError):
        SecretBox(app.state.settings.data_encryption_key.get_secret_value()).decrypt(pending)


async def test_confirm_enables_and_returns_ten_hashed_recovery_codes(
    client, tenant: Tenant, database_url: str, clock: Clock
) -> None:
    e = await enroll(client, tenant, clock)
    assert len(e.recovery) == 10
    assert len(set(e.recovery)) == 10
    stored = [row[0] for row in sql(database_url, "SELECT code_hash FROM mfa_recovery_codes")]
    assert len(stored) == 10
    assert not {c.replace("-", "") for c in e.recovery} & set(stored)
    assert all(len(h) == 64 for h in stored)
    me = (await gql(client, ME, token=e.token)).json()["data"]["me"]
    assert me["user"]["mfaEnabled"] is True
    [(secret, pending)] = sql(database_url, "SELECT totp_secret_encrypted, totp_pending_secret_encrypted FROM users")
    assert secret
    assert e.secret not in secret
    assert pending is None


async def test_confirm_with_a_wrong_code_enables_nothing(
    client, tenant: Tenant, database_url: str, clock: Clock
) -> None:
    token = (await login(client, tenant))["accessToken"]
    secret = (await gql(client, ENROLL, token=token)).json()["data"]["enrollTotp"]["secret"]
    wrong = f"{(int(code(secret, clock)) + 1) % 1_000_000:06d}"
    body = (await gql(client, CONFIRM, {"c": wrong}, token=token)).json()
    assert error_codes(body) == ["BAD_USER_INPUT"]
    assert sql(database_url, "SELECT mfa_enabled FROM users")[0][0] in (False, 0)
    assert sql(database_url, "SELECT count(*) FROM mfa_recovery_codes")[0][0] == 0
    # a code three steps old is outside the window
    body = (await gql(client, CONFIRM, {"c": code(secret, clock, -3)}, token=token)).json()
    assert error_codes(body) == ["BAD_USER_INPUT"]


async def test_enrolling_twice(client, tenant: Tenant, clock: Clock) -> None:
    """Before confirming, enrolling again replaces the seed (the first QR code stops working); once
    enabled, enrolling is a CONFLICT until TOTP is disabled."""
    token = (await login(client, tenant))["accessToken"]
    first = (await gql(client, ENROLL, token=token)).json()["data"]["enrollTotp"]["secret"]
    second = (await gql(client, ENROLL, token=token)).json()["data"]["enrollTotp"]["secret"]
    assert first != second
    assert error_codes((await gql(client, CONFIRM, {"c": code(first, clock)}, token=token)).json()) == [
        "BAD_USER_INPUT"
    ]
    assert "errors" not in (await gql(client, CONFIRM, {"c": code(second, clock)}, token=token)).json()
    again = (await gql(client, ENROLL, token=token)).json()
    assert error_codes(again) == ["CONFLICT"]
    assert error_codes((await gql(client, CONFIRM, {"c": code(second, clock, 1)}, token=token)).json()) == ["CONFLICT"]


async def test_confirm_without_enrollment_is_a_conflict(client, tenant: Tenant) -> None:
    token = (await login(client, tenant))["accessToken"]
    assert error_codes((await gql(client, CONFIRM, {"c": "123456"}, token=token)).json()) == ["CONFLICT"]


async def test_confirming_ends_the_other_sessions(client, tenant: Tenant, clock: Clock) -> None:
    other = (await login(client, tenant))["accessToken"]
    e = await enroll(client, tenant, clock)
    assert (await gql(client, ME, token=other)).status_code == 401
    assert (await gql(client, ME, token=e.token)).status_code == 200


async def test_anonymous_and_api_keys_cannot_enroll(client) -> None:
    assert error_codes((await gql(client, ENROLL)).json()) == ["UNAUTHENTICATED"]


# --- sign-in with a second factor -----------------------------------------------------------------------


async def test_login_with_the_current_code(client, tenant: Tenant, clock: Clock) -> None:
    e = await enroll(client, tenant, clock)
    body = await sign_in(client, tenant, code(e.secret, clock))
    assert signed_in(body), body
    assert body["data"]["login"]["user"]["mfaEnabled"] is True


async def test_missing_code_when_enrolled_says_a_second_factor_is_required(
    client, tenant: Tenant, clock: Clock
) -> None:
    """Only a right password learns that a second factor is required; a wrong one gets the plain answer."""
    await enroll(client, tenant, clock)
    for missing in (None, "", "   "):
        body = await sign_in(client, tenant, missing)
        assert error_codes(body) == ["UNAUTHENTICATED"]
        assert body["data"] is None
        assert reason(body) == "MFA_REQUIRED"
    wrong_password = await sign_in(client, tenant, None, password="not the password at all")
    assert error_codes(wrong_password) == ["UNAUTHENTICATED"]
    assert wrong_password["errors"][0]["extensions"] == {"code": "UNAUTHENTICATED"}
    assert wrong_password["errors"][0]["message"] == "Invalid credentials."


async def test_wrong_totp_is_refused(client, tenant: Tenant, clock: Clock) -> None:
    e = await enroll(client, tenant, clock)
    wrong = f"{(int(code(e.secret, clock)) + 1) % 1_000_000:06d}"
    body = await sign_in(client, tenant, wrong)
    assert error_codes(body) == ["UNAUTHENTICATED"]
    assert reason(body) == "MFA_INVALID"
    # a right code with a wrong password reveals nothing about the code
    body = await sign_in(client, tenant, code(e.secret, clock), password="not the password at all")
    assert body["errors"][0]["extensions"] == {"code": "UNAUTHENTICATED"}


async def test_codes_within_one_step_of_drift_are_accepted(client, tenant: Tenant, clock: Clock) -> None:
    e = await enroll(client, tenant, clock)
    clock.next_step()
    assert signed_in(await sign_in(client, tenant, code(e.secret, clock, -1)))
    assert signed_in(await sign_in(client, tenant, code(e.secret, clock, 1)))
    clock.next_step()
    clock.next_step()
    clock.next_step()
    assert reason(await sign_in(client, tenant, code(e.secret, clock, 2))) == "MFA_INVALID"


async def test_replayed_totp_within_its_window_is_refused(client, tenant: Tenant, clock: Clock) -> None:
    e = await enroll(client, tenant, clock)
    now = code(e.secret, clock)
    assert signed_in(await sign_in(client, tenant, now))
    replay = await sign_in(client, tenant, now)
    assert error_codes(replay) == ["UNAUTHENTICATED"]
    assert reason(replay) == "MFA_INVALID"
    # nor is an older code of the window accepted after a newer one
    assert reason(await sign_in(client, tenant, code(e.secret, clock, -1))) == "MFA_INVALID"
    clock.next_step()
    assert signed_in(await sign_in(client, tenant, code(e.secret, clock)))


async def test_the_code_confirming_enrollment_cannot_sign_in(client, tenant: Tenant, clock: Clock) -> None:
    token = (await login(client, tenant))["accessToken"]
    secret = (await gql(client, ENROLL, token=token)).json()["data"]["enrollTotp"]["secret"]
    used = code(secret, clock)
    assert "errors" not in (await gql(client, CONFIRM, {"c": used}, token=token)).json()
    assert reason(await sign_in(client, tenant, used)) == "MFA_INVALID"


async def test_concurrent_submissions_of_one_code_sign_in_once(client, tenant: Tenant, clock: Clock) -> None:
    e = await enroll(client, tenant, clock)
    now = code(e.secret, clock)
    results = await asyncio.gather(*(sign_in(client, tenant, now) for _ in range(4)))
    assert sum(signed_in(b) for b in results) == 1, results
    assert all(reason(b) == "MFA_INVALID" for b in results if not signed_in(b))


async def test_a_recovery_code_in_the_totp_field_signs_in_once(
    client, tenant: Tenant, clock: Clock, database_url: str
) -> None:
    e = await enroll(client, tenant, clock)
    recovery = e.recovery[3]
    assert signed_in(await sign_in(client, tenant, recovery))
    reused = await sign_in(client, tenant, recovery)
    assert error_codes(reused) == ["UNAUTHENTICATED"]
    assert reason(reused) == "MFA_INVALID"
    assert sql(database_url, "SELECT count(*) FROM mfa_recovery_codes WHERE used_at IS NOT NULL")[0][0] == 1
    assert signed_in(await sign_in(client, tenant, e.recovery[4]))


async def test_codes_with_spaces_and_dashes_are_normalized(client, tenant: Tenant, clock: Clock) -> None:
    e = await enroll(client, tenant, clock)
    c = code(e.secret, clock)
    assert signed_in(await sign_in(client, tenant, f" {c[:3]} {c[3:]} "))
    clock.next_step()
    c = code(e.secret, clock)
    assert signed_in(await sign_in(client, tenant, f"{c[:3]}-{c[3:]}"))
    r = e.recovery[0].replace("-", "")
    assert signed_in(await sign_in(client, tenant, f"{r[:3]} {r[3:7]}-{r[7:]}".upper()))


@pytest.mark.parametrize(
    "bad", ["abcdef", "12345x", "\uff11\uff12\uff13\uff14\uff15\uff16", "12345", "1234567", "123456\x00", "<script>"]
)
async def test_non_digit_or_odd_shaped_input_is_bad_user_input(
    client, tenant: Tenant, clock: Clock, database_url: str, bad: str
) -> None:
    await enroll(client, tenant, clock)
    r = await gql(client, LOGIN_TOTP, {"email": tenant.email, "password": tenant.password, "totp": bad})
    # a NUL is refused with 400 before the operation runs (C-133), naming the variable
    assert r.status_code == (400 if "\x00" in bad else 200), r.text
    body = r.json()
    assert error_codes(body) == ["BAD_USER_INPUT"]
    assert body.get("data") is None
    extensions = body["errors"][0]["extensions"]
    assert extensions.get("field", extensions.get("variable")) == "totp"
    # refused by shape before any check: no failure counted
    assert sql(database_url, "SELECT max(failures) FROM login_throttle")[0][0] == 0


@pytest.mark.parametrize("size", [65, 10_000, 500_000])
async def test_an_over_long_code_is_bad_user_input(client, tenant: Tenant, size: int) -> None:
    r = await gql(client, LOGIN_TOTP, {"email": tenant.email, "password": tenant.password, "totp": "1" * size})
    assert r.status_code in (200, 413), r.text
    if r.status_code == 200:
        assert error_codes(r.json()) == ["BAD_USER_INPUT"]
    token = (await login(client, tenant))["accessToken"]
    r = await gql(client, DISABLE, {"c": "1" * min(size, 10_000)}, token=token)
    assert r.status_code == 200
    assert error_codes(r.json()) == ["BAD_USER_INPUT"]


async def test_a_code_for_a_user_without_mfa_is_ignored(client, tenant: Tenant) -> None:
    assert signed_in(await sign_in(client, tenant, "123456"))


# --- lockout ------------------------------------------------------------------------------------------


async def test_wrong_codes_count_toward_the_lockout(client, tenant: Tenant, clock: Clock) -> None:
    e = await enroll(client, tenant, clock)
    right = code(e.secret, clock)
    wrong = f"{(int(right) + 1) % 1_000_000:06d}"
    for _ in range(5):
        assert reason(await sign_in(client, tenant, wrong)) == "MFA_INVALID"
    locked = await sign_in(client, tenant, right)
    assert locked["errors"][0]["extensions"] == {"code": "UNAUTHENTICATED"}  # locked: no hint at all


async def test_missing_codes_do_not_reset_the_lockout(client, tenant: Tenant, clock: Clock) -> None:
    """Asking without a code counts too, so a caller holding the password cannot reset the counter
    between code guesses."""
    e = await enroll(client, tenant, clock)
    right = code(e.secret, clock)
    wrong = f"{(int(right) + 1) % 1_000_000:06d}"
    for i in range(5):
        assert reason(await sign_in(client, tenant, wrong if i % 2 else None)) in ("MFA_INVALID", "MFA_REQUIRED")
    assert (await sign_in(client, tenant, right))["errors"][0]["extensions"] == {"code": "UNAUTHENTICATED"}


def lifted(app: Any) -> None:
    """The gateway's schema with room for 100 aliases in one anonymous document (ENTERPRISE's row
    for every plan), to show that each alias is one attempt when the operation limits allow them."""
    big = OPERATION_LIMITS[Plan.ENTERPRISE]
    table = {
        plan: OperationLimits(
            depth=big.depth, aliases=200, tokens=20_000, root_fields=200, directives=big.directives, cost=100_000
        )
        for plan in Plan
    }
    route = next(r for r in app.routes if isinstance(r, Route) and r.path == "/graphql")
    route.app.schema = build_schema(operation_limits=table)  # type: ignore[attr-defined]


def aliased_codes(t: Tenant, codes: list[str]) -> str:
    return (
        "mutation { "
        + " ".join(
            f'l{i}: login(email: "{t.email}", password: "{t.password}", totp: "{c}") {{ accessToken }}'
            for i, c in enumerate(codes)
        )
        + " }"
    )


async def test_c003_hundred_aliased_codes_are_refused_whole_by_default(
    client, tenant: Tenant, clock: Clock, database_url: str
) -> None:
    await enroll(client, tenant, clock)
    r = await gql(client, aliased_codes(tenant, [f"{i:06d}" for i in range(100)]))
    assert r.status_code == 400
    assert error_codes(r.json()) == ["OPERATION_TOO_COMPLEX"]
    assert sql(database_url, "SELECT max(failures) FROM login_throttle")[0][0] == 0


async def test_c003_each_aliased_code_counts_one_failed_attempt(
    app: Any, client, tenant: Tenant, clock: Clock, database_url: str
) -> None:
    """C-003, OTP variant: 100 aliased logins with different codes in one document, with operation
    limits that admit them. Each executed alias is one attempt. `login` is non-null, so its first
    refusal nulls the whole result and ends the document: one document is one guess, never 100. The
    lock falls after the threshold of such attempts, and then even the right code is refused."""
    e = await enroll(client, tenant, clock)
    right = code(e.secret, clock)
    lifted(app)
    for attempt in range(1, 6):
        codes = [f"{(int(right) + 1 + i + 100 * attempt) % 1_000_000:06d}" for i in range(100)]
        if right in codes:
            codes.remove(right)
            codes.append(f"{(int(right) + 500_000) % 1_000_000:06d}")
        codes[50] = right  # never reached
        r = await gql(client, aliased_codes(tenant, codes))
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["data"] is None
        [error] = body["errors"]
        assert error["path"] == ["l0"]
        assert error["extensions"] == {"code": "UNAUTHENTICATED", "reason": "MFA_INVALID"}
        [(failures,)] = sql(database_url, "SELECT failures FROM login_throttle WHERE key LIKE 'pair:%'")
        assert failures == attempt
    [(locked_until,)] = sql(database_url, "SELECT locked_until FROM login_throttle WHERE key LIKE 'pair:%'")
    assert locked_until is not None
    # the right code, first in a document or alone, is refused while the lock lasts, without a hint
    r = await gql(client, aliased_codes(tenant, [right] * 3))
    assert r.json()["errors"][0]["extensions"] == {"code": "UNAUTHENTICATED"}
    assert (await sign_in(client, tenant, right))["errors"][0]["extensions"] == {"code": "UNAUTHENTICATED"}


# --- disabling ----------------------------------------------------------------------------------------


async def test_disable_with_a_wrong_code_is_refused_and_counted(
    client, tenant: Tenant, clock: Clock, database_url: str
) -> None:
    e = await enroll(client, tenant, clock)
    wrong = f"{(int(code(e.secret, clock)) + 1) % 1_000_000:06d}"
    body = (await gql(client, DISABLE, {"c": wrong}, token=e.token)).json()
    assert error_codes(body) == ["UNAUTHENTICATED"]
    assert reason(body) == "MFA_INVALID"
    assert sql(database_url, "SELECT mfa_enabled FROM users")[0][0] in (True, 1)
    assert sql(database_url, "SELECT max(failures) FROM login_throttle")[0][0] == 1
    # a spent recovery code does not disable either
    assert signed_in(await sign_in(client, tenant, e.recovery[0]))
    body = (await gql(client, DISABLE, {"c": e.recovery[0]}, token=e.token)).json()
    assert reason(body) == "MFA_INVALID"


async def test_disable_with_a_current_code_ends_other_sessions(
    client, tenant: Tenant, clock: Clock, database_url: str
) -> None:
    e = await enroll(client, tenant, clock)
    other = (await sign_in(client, tenant, code(e.secret, clock)))["data"]["login"]["accessToken"]
    clock.next_step()
    assert (await gql(client, DISABLE, {"c": code(e.secret, clock)}, token=e.token)).json()["data"] == {
        "disableTotp": True
    }
    assert (await gql(client, ME, token=other)).status_code == 401
    assert (await gql(client, ME, token=e.token)).json()["data"]["me"]["user"]["mfaEnabled"] is False
    [(secret, step)] = sql(database_url, "SELECT totp_secret_encrypted, totp_last_used_step FROM users")
    assert secret is None
    assert step is None
    assert sql(database_url, "SELECT count(*) FROM mfa_recovery_codes")[0][0] == 0
    assert signed_in(await sign_in(client, tenant, None))
    assert error_codes((await gql(client, DISABLE, {"c": "123456"}, token=e.token)).json()) == ["CONFLICT"]


async def test_disable_with_a_recovery_code(client, tenant: Tenant, clock: Clock) -> None:
    e = await enroll(client, tenant, clock)
    assert (await gql(client, DISABLE, {"c": e.recovery[9]}, token=e.token)).json()["data"] == {"disableTotp": True}


# --- requireMfa ---------------------------------------------------------------------------------------


ORG = "{ organization { slug } }"


async def test_require_mfa_restricts_a_password_session_to_enrollment(
    client, tenant: Tenant, clock: Clock, database_url: str
) -> None:
    sql(database_url, "UPDATE organizations SET require_mfa = :on", on=True)
    auth = await login(client, tenant)  # signing in works
    token = auth["accessToken"]
    me = (await gql(client, "{ me { user { mfaEnabled } permissions } }", token=token)).json()["data"]["me"]
    assert me == {"user": {"mfaEnabled": False}, "permissions": []}
    denied = (await gql(client, ORG, token=token)).json()
    assert denied["data"] == {"organization": None}
    assert denied["errors"][0]["extensions"] == {"code": "FORBIDDEN", "reason": "MFA_ENROLLMENT_REQUIRED"}
    for mutation in (
        'mutation { changePassword(currentPassword: "a", newPassword: "b") }',
        'mutation { createApiKey(input: {name: "k", scopes: []}) { secret } }',
        'mutation { disableTotp(code: "123456") }',
        "{ permissions }",
    ):
        body = (await gql(client, mutation, token=token)).json()
        assert [e["extensions"].get("reason") for e in body["errors"]] == ["MFA_ENROLLMENT_REQUIRED"], mutation
    # a refreshed token is no way out
    refreshed = (
        await gql(
            client,
            "mutation($t: String) { refreshToken(refreshToken: $t) { accessToken } }",
            {"t": auth["refreshToken"]},
        )
    ).json()["data"]["refreshToken"]["accessToken"]
    assert error_codes((await gql(client, ORG, token=refreshed)).json()) == ["FORBIDDEN"]
    # enrolling lifts the restriction on this very session
    secret = (await gql(client, ENROLL, token=refreshed)).json()["data"]["enrollTotp"]["secret"]
    assert "errors" not in (await gql(client, CONFIRM, {"c": code(secret, clock)}, token=refreshed)).json()
    assert (await gql(client, ORG, token=refreshed)).json()["data"] == {"organization": {"slug": "acme"}}
    # disabling again puts it back
    clock.next_step()
    assert (await gql(client, DISABLE, {"c": code(secret, clock)}, token=refreshed)).json()["data"]
    assert error_codes((await gql(client, ORG, token=refreshed)).json()) == ["FORBIDDEN"]


async def test_require_mfa_for_an_enrolled_user_is_plain_sign_in(
    client, tenant: Tenant, clock: Clock, database_url: str
) -> None:
    e = await enroll(client, tenant, clock)
    sql(database_url, "UPDATE organizations SET require_mfa = :on", on=True)
    token = (await sign_in(client, tenant, code(e.secret, clock)))["data"]["login"]["accessToken"]
    assert (await gql(client, ORG, token=token)).json()["data"] == {"organization": {"slug": "acme"}}


async def test_logs_never_carry_a_code_or_seed(
    client, tenant: Tenant, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="portcullis")
    e = await enroll(client, tenant, clock)
    wrong = f"{(int(code(e.secret, clock)) + 1) % 1_000_000:06d}"
    await sign_in(client, tenant, wrong)
    await sign_in(client, tenant, e.recovery[1])
    text = "\n".join(f"{r.getMessage()} {vars(r)}" for r in caplog.records)
    assert "authn_mfa_enroll" in text
    assert "authn_mfa_fail" in text
    for secret in (e.secret, wrong, e.recovery[1], e.recovery[1].replace("-", "")):
        assert secret not in text


UPDATE_ORG = "mutation($on: Boolean) { updateOrganization(input: {requireMfa: $on}) { slug } }"


async def test_turning_require_mfa_on_restricts_open_sessions_at_once(
    client, tenant: Tenant, clock: Clock, database_url: str
) -> None:
    """An enrolled owner turns requireMfa on: an unenrolled member's open session is restricted on its
    next request, and a member who joins through an invitation starts restricted."""
    e = await enroll(client, tenant, clock)
    member_token = (
        await join(client, database_url, e.token, "new@acme.test", "viewer", "a long and unusual passphrase")
    ).access_token
    assert (await gql(client, ORG, token=member_token)).json()["data"] == {"organization": {"slug": "acme"}}
    assert (await gql(client, UPDATE_ORG, {"on": True}, token=e.token)).json()["data"]
    denied = (await gql(client, ORG, token=member_token)).json()
    assert denied["errors"][0]["extensions"]["reason"] == "MFA_ENROLLMENT_REQUIRED"
    # the enrolled owner is not restricted
    assert (await gql(client, ORG, token=e.token)).json()["data"] == {"organization": {"slug": "acme"}}
    # and turning it off lifts the restriction at once
    assert (await gql(client, UPDATE_ORG, {"on": False}, token=e.token)).json()["data"]
    assert (await gql(client, ORG, token=member_token)).json()["data"] == {"organization": {"slug": "acme"}}


async def test_an_admin_without_mfa_cannot_require_it(client, tenant: Tenant, database_url: str) -> None:
    token = (await login(client, tenant))["accessToken"]
    body = (await gql(client, UPDATE_ORG, {"on": True}, token=token)).json()
    assert body["errors"][0]["extensions"] == {"code": "FORBIDDEN", "reason": "MFA_ENROLLMENT_REQUIRED"}
    assert sql(database_url, "SELECT require_mfa FROM organizations")[0][0] in (False, 0)
    # turning it off (or leaving it off) needs nothing
    assert (await gql(client, UPDATE_ORG, {"on": False}, token=token)).json()["data"]


async def test_an_api_key_has_no_second_factor(client, tenant: Tenant, database_url: str) -> None:
    token = (await login(client, tenant))["accessToken"]
    made = (
        await gql(
            client,
            'mutation { createApiKey(input: {name: "ci", scopes: ["organization:read"]}) { secret } }',
            token=token,
        )
    ).json()
    key = made["data"]["createApiKey"]["secret"]
    for document in (ENROLL, 'mutation { confirmTotp(code: "123456") }', 'mutation { disableTotp(code: "123456") }'):
        r = await gql(client, document, headers={"X-API-Key": key})
        assert r.status_code == 403, r.text
        assert error_codes(r.json()) == ["FORBIDDEN"]
    assert sql(database_url, "SELECT totp_pending_secret_encrypted FROM users") == [(None,)]


async def test_second_factor_events_are_audited_without_codes(
    client, tenant: Tenant, clock: Clock, database_url: str
) -> None:
    e = await enroll(client, tenant, clock)
    wrong = f"{(int(code(e.secret, clock)) + 1) % 1_000_000:06d}"
    assert reason(await sign_in(client, tenant, wrong)) == "MFA_INVALID"
    token = (await sign_in(client, tenant, code(e.secret, clock)))["data"]["login"]["accessToken"]
    clock.next_step()
    assert "errors" in (await gql(client, DISABLE, {"c": wrong}, token=token)).json()
    assert (await gql(client, DISABLE, {"c": e.recovery[0]}, token=token)).json()["data"] == {"disableTotp": True}
    rows = sql(
        database_url,
        "SELECT action, result, chain, actor_id, details FROM audit_log "
        "WHERE action LIKE 'authn_mfa_%' ORDER BY sequence",
    )
    assert [(r[0], r[1]) for r in rows] == [
        ("authn_mfa_enroll_started", "success"),
        ("authn_mfa_enroll", "success"),
        ("authn_mfa_fail", "denied"),
        ("authn_mfa_fail", "denied"),
        ("authn_mfa_disable", "success"),
    ]
    assert {(r[2], r[3]) for r in rows} == {(tenant.org_id, tenant.user_id)}
    text = repr(rows)
    for secret in (e.secret, wrong, e.recovery[0], code(e.secret, clock)):
        assert secret not in text
