"""The password rules an organization's policy sets, without the database: the floor, the strictest of several
policies, the breached list and its floor, password age, and the device summary of a session."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest

from authz.security_policy import PASSWORD_MIN_LENGTH_FLOOR, SecurityPolicy
from identity.password_history import password_expired, refuse_reuse
from identity.passwords import (
    FLOOR_LIST_SIZE,
    MIN_LENGTH,
    PasswordHasherService,
    PasswordPolicyError,
    PasswordRules,
    check_policy,
    common_passwords,
    floor_passwords,
)
from identity.user_agents import UNKNOWN, describe
from tests.conftest import FAST_HASH

GOOD = "correct horse battery staple"


def test_the_policy_floor_is_the_password_floor() -> None:
    assert PASSWORD_MIN_LENGTH_FLOOR == MIN_LENGTH


def test_no_policy_is_todays_rules() -> None:
    assert PasswordRules.strictest([]) == PasswordRules()
    assert PasswordRules.strictest([SecurityPolicy()]) == PasswordRules()


def test_the_strictest_of_several_policies_applies() -> None:
    rules = PasswordRules.strictest(
        [
            SecurityPolicy(password_min_length=16, password_history=2, password_max_age_days=90),
            SecurityPolicy(password_min_length=14, password_history=5, breached_password_check=False),
            SecurityPolicy(password_max_age_days=30, breached_password_check=False),
        ]
    )
    assert rules == PasswordRules(min_length=16, history=5, max_age_days=30, breached_check=True)


def test_the_breached_list_is_off_only_when_every_policy_turns_it_off() -> None:
    off = SecurityPolicy(breached_password_check=False)
    assert not PasswordRules.strictest([off, off]).breached_check


def test_a_longer_minimum_names_the_policy() -> None:
    with pytest.raises(
        PasswordPolicyError, match=re.escape("at least 20 characters (the organization's password policy)")
    ):
        check_policy("a fine passphrase", rules=PasswordRules(min_length=20))
    check_policy("a fine passphrase now", rules=PasswordRules(min_length=20))


def test_a_minimum_below_the_floor_is_the_floor() -> None:
    with pytest.raises(PasswordPolicyError, match=f"at least {MIN_LENGTH} characters$"):
        check_policy("elevenchars", rules=PasswordRules(min_length=4))


def test_breached_check_off_keeps_the_floor_list() -> None:
    rare = next(p for p in list(common_passwords() - floor_passwords()) if len(p) >= MIN_LENGTH)
    frequent = "qwerty123456"  # among the most common: refused whatever the policy
    assert frequent in floor_passwords()
    assert len(floor_passwords()) == FLOOR_LIST_SIZE
    off = PasswordRules(breached_check=False)
    with pytest.raises(PasswordPolicyError, match="breached"):
        check_policy(rare)
    check_policy(rare, rules=off)
    with pytest.raises(PasswordPolicyError, match="breached"):
        check_policy(frequent, rules=off)


async def test_history_refuses_the_last_n_and_counts_the_current_password() -> None:
    hasher = PasswordHasherService(FAST_HASH)
    older = [hasher.hash_sync(f"{GOOD} {i}") for i in range(3)]  # newest first
    current = hasher.hash_sync(GOOD)
    with pytest.raises(PasswordPolicyError, match="the last 2 passwords"):
        await refuse_reuse(hasher, GOOD, remembered=older, current_hash=current, history=2)
    with pytest.raises(PasswordPolicyError, match="used recently"):
        await refuse_reuse(hasher, f"{GOOD} 0", remembered=older, current_hash=current, history=2)
    await refuse_reuse(hasher, f"{GOOD} 1", remembered=older, current_hash=current, history=2)
    await refuse_reuse(hasher, GOOD, remembered=older, current_hash=current, history=0)


def test_password_age() -> None:
    now = datetime(2026, 6, 1, tzinfo=UTC)
    assert not password_expired(now - timedelta(days=400), None, now)
    assert not password_expired(now - timedelta(days=30), 30, now)
    assert password_expired(now - timedelta(days=30, seconds=1), 30, now)


@pytest.mark.parametrize(
    ("agent", "summary"),
    [
        (
            "Mozilla/5.0 (Macintosh; Intel Mac OS X 10.15; rv:121.0) Gecko/20100101 Firefox/121.0",
            "Firefox 121 on macOS",
        ),
        (
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
            "Chrome/120.0.0.0 Safari/537.36 Edg/120.0.2210.91",
            "Edge 120 on Windows",
        ),
        (
            "Mozilla/5.0 (iPhone; CPU iPhone OS 17_2 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
            "Version/17.2 Mobile/15E148 Safari/604.1",
            "Safari 17 on iPhone",
        ),
        (
            "Mozilla/5.0 (Linux; Android 14) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.6099.144 Mobile "
            "Safari/537.36",
            "Chrome 120 on Android",
        ),
        ("curl/8.4.0", "curl 8"),
        ("python-httpx/0.27.0", "python-httpx 0"),
        ("MyIntegration/2.1 (+https://example.test)", "MyIntegration"),
        (None, UNKNOWN),
        ("", UNKNOWN),
        ("\x01\x02", UNKNOWN),
    ],
)
def test_device_summary(agent: str | None, summary: str) -> None:
    assert describe(agent) == summary
