"""The security policy as data: defaults are today's behaviour, `check_policy` finds every problem at once, and
the edge's decisions (address, method, fresh authentication, risk) are table-driven and property-checked."""

from __future__ import annotations

import ipaddress
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from authz import Permission
from authz.roles import BUILTIN_ROLE_PERMISSIONS
from authz.security_policy import (
    DEFAULT_POLICY,
    RiskAction,
    RiskLevel,
    SecurityPolicy,
    SignInMethod,
    check_policy,
    parse_cidr,
)
from identity.passwords import MIN_LENGTH


def test_the_defaults_are_todays_behaviour() -> None:
    p = DEFAULT_POLICY
    assert p.password_min_length == MIN_LENGTH
    assert (p.password_history, p.password_max_age_days, p.fresh_auth_minutes) == (0, None, None)
    assert p.allowed_sign_in_methods == frozenset(SignInMethod)
    assert p.address_allowed("203.0.113.9")
    assert p.address_allowed(None)
    assert not p.needs_fresh_auth(None, 1e9)
    assert {p.risk_action(level) for level in RiskLevel} == {RiskAction.ALLOW}
    assert check_policy(p) == []


def test_admin_and_owner_hold_the_security_permissions() -> None:
    for role, held in BUILTIN_ROLE_PERMISSIONS.items():
        wanted = role in {"admin", "owner"}
        assert (Permission.SECURITY_MANAGE in held) is wanted, role
        assert (Permission.SECURITY_READ in held) is wanted, role


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"password_min_length": MIN_LENGTH - 1}, "passwordMinLength must be between 12 and 128"),
        ({"password_history": -1}, "passwordHistory must be between 0 and 24"),
        ({"password_max_age_days": 0}, "passwordMaxAgeDays must be between 1 and 3650"),
        ({"session_idle_timeout_minutes": 10**9}, "sessionIdleTimeoutMinutes must be between 5 and 43200"),
        ({"max_concurrent_sessions": 0}, "maxConcurrentSessions must be between 1 and 1000"),
        ({"fresh_auth_minutes": -5}, "freshAuthMinutes must be between 1 and 1440"),
        ({"api_key_max_lifetime_days": 100_000}, "apiKeyMaxLifetimeDays must be between 1 and 3650"),
        (
            {"session_idle_timeout_minutes": 120, "session_max_lifetime_hours": 1},
            "sessionIdleTimeoutMinutes cannot exceed sessionMaxLifetimeHours",
        ),
        (
            {"allowed_sign_in_methods": frozenset({SignInMethod.API_KEY})},
            "allowedSignInMethods must keep PASSWORD or SSO: nobody could sign in",
        ),
        ({"ip_allowlist": ("10.0.0.0/33",)}, "ipAllowlist: '10.0.0.0/33' is not an IP address or CIDR"),
        ({"ip_allowlist": ("0.0.0.0/0",)}, "ipAllowlist: 0.0.0.0/0 admits every address; leave the list empty instead"),
    ],
)
def test_each_bad_value_is_named(changes: dict[str, object], problem: str) -> None:
    policy = replace(DEFAULT_POLICY, **changes)  # type: ignore[arg-type]
    assert problem in check_policy(policy)


def test_every_problem_is_reported_at_once() -> None:
    policy = replace(DEFAULT_POLICY, password_history=99, fresh_auth_minutes=0, max_concurrent_sessions=-1)
    assert len(check_policy(policy)) == 3


@pytest.mark.parametrize(
    ("allowlist", "address", "allowed"),
    [
        (("203.0.113.0/24",), "203.0.113.77", True),
        (("203.0.113.0/24",), "198.51.100.1", False),
        (("2001:db8::/32",), "2001:db8::1", True),
        (("2001:db8::/32",), "203.0.113.77", False),
        (("203.0.113.5",), "203.0.113.5", True),
        (("203.0.113.0/24",), None, False),
        (("203.0.113.0/24",), "not-an-address", False),
    ],
)
def test_the_allowlist(allowlist: tuple[str, ...], address: str | None, allowed: bool) -> None:
    assert SecurityPolicy(ip_allowlist=allowlist).address_allowed(address) is allowed


def test_an_sso_only_policy_admits_break_glass_owners_by_password_only() -> None:
    policy = SecurityPolicy(
        allowed_sign_in_methods=frozenset({SignInMethod.SSO}), break_glass_user_ids=frozenset({"u1"})
    )
    assert policy.method_allowed("oidc")
    assert policy.method_allowed("saml")
    assert not policy.method_allowed("password", user_id="u2")
    assert policy.method_allowed("password", user_id="u1")
    assert not policy.method_allowed("api_key", user_id="u1")


def test_fresh_authentication_window() -> None:
    policy = SecurityPolicy(fresh_auth_minutes=10)
    assert not policy.needs_fresh_auth(1000.0, 1000.0 + 600)
    assert policy.needs_fresh_auth(1000.0, 1000.0 + 601)
    assert policy.needs_fresh_auth(None, 1000.0)


def test_parse_cidr_names_the_bad_text() -> None:
    assert parse_cidr(" 10.1.2.3/8 ") == ipaddress.ip_network("10.0.0.0/8")
    with pytest.raises(ValueError, match="'nope' is not an IP address or CIDR"):
        parse_cidr("nope")


@given(st.lists(st.ip_addresses(v=4), min_size=1, max_size=5), st.ip_addresses(v=4))
def test_property_an_address_is_allowed_exactly_when_a_listed_network_holds_it(
    listed: list[ipaddress.IPv4Address], probe: ipaddress.IPv4Address
) -> None:
    nets = tuple(f"{a}/24" for a in listed)
    expected = any(probe in ipaddress.ip_network(n, strict=False) for n in nets)
    assert SecurityPolicy(ip_allowlist=nets).address_allowed(str(probe)) is expected


@given(
    st.integers(min_value=1, max_value=1440),
    st.floats(min_value=0, max_value=1e6),
    st.floats(min_value=0, max_value=1e6),
)
def test_property_a_later_check_never_needs_less_fresh_authentication(minutes: int, age: float, more: float) -> None:
    policy = SecurityPolicy(fresh_auth_minutes=minutes)
    if policy.needs_fresh_auth(0.0, age):
        assert policy.needs_fresh_auth(0.0, age + more)
