"""The COMPLIANCE report's evidence from the organization's security policy: its password, session, MFA and
network settings, each a check with one evidence row per setting (docs/security-policies.md)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from authz.security_policy import SecurityPolicy, SignInMethod


@dataclass(frozen=True, slots=True)
class PolicyCheck:
    check: str
    passed: bool
    detail: str
    # (setting, its value as text)
    settings: list[tuple[str, str]]


def _text(value: object) -> str:
    if value is None:
        return "not set (the gateway's default)"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, frozenset | tuple | list):
        items = sorted(str(getattr(v, "name", v)) for v in value)
        return ", ".join(items) if items else "none"
    return str(getattr(value, "name", value))


def _settings(policy: SecurityPolicy, names: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(label, _text(getattr(policy, attr))) for label, attr in names]


def policy_checks(policy: SecurityPolicy) -> list[PolicyCheck]:
    """Pass when the setting is one an auditor looks for; `attention` names what is left at the default."""
    sessions_bounded = policy.session_idle_timeout_minutes is not None and policy.session_max_lifetime_hours is not None
    methods = policy.allowed_sign_in_methods
    return [
        PolicyCheck(
            "password_policy",
            policy.breached_password_check,
            f"passwords of at least {policy.password_min_length} characters"
            + ("; breached passwords refused" if policy.breached_password_check else "; breached-password check off"),
            _settings(
                policy,
                [
                    ("passwordMinLength", "password_min_length"),
                    ("passwordHistory", "password_history"),
                    ("passwordMaxAgeDays", "password_max_age_days"),
                    ("breachedPasswordCheck", "breached_password_check"),
                ],
            ),
        ),
        PolicyCheck(
            "session_policy",
            sessions_bounded,
            "idle timeout and lifetime set by the organization"
            if sessions_bounded
            else "idle timeout or lifetime left at the gateway's defaults",
            _settings(
                policy,
                [
                    ("sessionIdleTimeoutMinutes", "session_idle_timeout_minutes"),
                    ("sessionMaxLifetimeHours", "session_max_lifetime_hours"),
                    ("maxConcurrentSessions", "max_concurrent_sessions"),
                    ("concurrentSessionAction", "concurrent_session_action"),
                    ("freshAuthMinutes", "fresh_auth_minutes"),
                ],
            ),
        ),
        PolicyCheck(
            "mfa_policy",
            policy.require_mfa,
            "MFA required of password sign-ins" if policy.require_mfa else "MFA not required",
            _settings(
                policy,
                [
                    ("requireMfa", "require_mfa"),
                    ("mediumRiskAction", "medium_risk_action"),
                    ("highRiskAction", "high_risk_action"),
                ],
            ),
        ),
        PolicyCheck(
            "network_policy",
            bool(policy.ip_allowlist),
            f"{len(policy.ip_allowlist)} allowed network(s)" if policy.ip_allowlist else "any address may sign in",
            [
                *_settings(
                    policy,
                    [
                        ("ipAllowlist", "ip_allowlist"),
                        ("allowedSignInMethods", "allowed_sign_in_methods"),
                        ("breakGlassOwners", "break_glass_user_ids"),
                        ("apiKeyMaxLifetimeDays", "api_key_max_lifetime_days"),
                    ],
                ),
                ("apiKeysAllowed", _text(SignInMethod.API_KEY in methods)),
            ],
        ),
    ]
