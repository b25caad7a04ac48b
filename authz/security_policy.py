"""An organization's security policy, as data, and the pure decisions made from it.

Every setting's default is the gateway's behaviour for an organization that never set it, so a stored policy
only narrows what the gateway already does. `None` means "no rule of the organization's own" (the gateway's
default lifetime, no expiry, no fresh-authentication rule); an empty `ip_allowlist` admits any address.
`check_policy` lists every problem at once; the edge asks `address_allowed`, `method_allowed` and
`needs_fresh_auth`, each a frozenset or arithmetic lookup, once per request.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from enum import StrEnum

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# The floor no organization goes below (identity.passwords.MIN_LENGTH says the same; a test keeps them equal).
PASSWORD_MIN_LENGTH_FLOOR = 12
PASSWORD_MIN_LENGTH_MAX = 128
PASSWORD_HISTORY_MAX = 24
PASSWORD_MAX_AGE_DAYS_MAX = 3650
SESSION_IDLE_MINUTES_RANGE = (5, 60 * 24 * 30)
SESSION_LIFETIME_HOURS_RANGE = (1, 24 * 90)
CONCURRENT_SESSIONS_RANGE = (1, 1000)
FRESH_AUTH_MINUTES_RANGE = (1, 60 * 24)
API_KEY_LIFETIME_DAYS_RANGE = (1, 3650)
IP_ALLOWLIST_MAX = 100
BREAK_GLASS_MAX = 5


class SignInMethod(StrEnum):
    PASSWORD = "password"
    SSO = "sso"
    API_KEY = "api_key"


class ConcurrentSessionAction(StrEnum):
    """What a sign-in over `max_concurrent_sessions` does."""

    END_OLDEST = "end_oldest"
    REFUSE_NEW = "refuse_new"


class RiskAction(StrEnum):
    """What a sign-in at a risk level triggers."""

    ALLOW = "allow"
    REQUIRE_MFA = "require_mfa"
    REFUSE = "refuse"


class RiskLevel(StrEnum):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"


ALL_METHODS: frozenset[SignInMethod] = frozenset(SignInMethod)

# The methods a session's `auth_method` (authz.AuthMethod values) counts as.
_SESSION_METHOD: dict[str, SignInMethod] = {
    "password": SignInMethod.PASSWORD,
    "oidc": SignInMethod.SSO,
    "saml": SignInMethod.SSO,
    "api_key": SignInMethod.API_KEY,
}


@dataclass(frozen=True, slots=True)
class SecurityPolicy:
    password_min_length: int = PASSWORD_MIN_LENGTH_FLOOR
    password_history: int = 0
    password_max_age_days: int | None = None
    breached_password_check: bool = True
    session_idle_timeout_minutes: int | None = None
    session_max_lifetime_hours: int | None = None
    max_concurrent_sessions: int | None = None
    concurrent_session_action: ConcurrentSessionAction = ConcurrentSessionAction.END_OLDEST
    fresh_auth_minutes: int | None = None
    allowed_sign_in_methods: frozenset[SignInMethod] = ALL_METHODS
    break_glass_user_ids: frozenset[str] = frozenset()
    require_mfa: bool = False
    api_key_max_lifetime_days: int | None = None
    ip_allowlist: tuple[str, ...] = ()
    medium_risk_action: RiskAction = RiskAction.ALLOW
    high_risk_action: RiskAction = RiskAction.ALLOW
    networks: tuple[IPNetwork, ...] = field(default=(), compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.ip_allowlist and not self.networks:
            # an entry that does not parse is left out here and named by `check_policy`, which refuses it
            nets = []
            for cidr in self.ip_allowlist:
                try:
                    nets.append(parse_cidr(cidr))
                except ValueError:
                    continue
            object.__setattr__(self, "networks", tuple(nets))

    def address_allowed(self, client_ip: str | None) -> bool:
        """Whether the tenant's allowlist admits the address (an empty list admits any; no address, none)."""
        if not self.networks:
            return True
        if client_ip is None:
            return False
        try:
            address = ipaddress.ip_address(client_ip)
        except ValueError:
            return False
        return any(address in net for net in self.networks)

    def method_allowed(self, auth_method: str, *, user_id: str | None = None) -> bool:
        """Whether a credential of `auth_method` may act in this organization. A break-glass owner may always
        sign in with a password: the way back in when the identity provider is down."""
        method = _SESSION_METHOD.get(auth_method)
        if method is None:  # a refreshed session keeps the method it was signed in with
            return True
        if method in self.allowed_sign_in_methods:
            return True
        return method is SignInMethod.PASSWORD and user_id is not None and user_id in self.break_glass_user_ids

    def needs_fresh_auth(self, auth_time: float | None, now: float) -> bool:
        """Whether a sensitive mutation must be refused because the sign-in is older than the window."""
        if self.fresh_auth_minutes is None:
            return False
        return auth_time is None or now - auth_time > self.fresh_auth_minutes * 60

    def risk_action(self, level: RiskLevel) -> RiskAction:
        if level is RiskLevel.HIGH:
            return self.high_risk_action
        if level is RiskLevel.MEDIUM:
            return self.medium_risk_action
        return RiskAction.ALLOW


DEFAULT_POLICY = SecurityPolicy()


def parse_cidr(text: str) -> IPNetwork:
    """A CIDR (or a single address) as a network; `ValueError` with a message fit for the caller."""
    try:
        return ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise ValueError(f"{text!r} is not an IP address or CIDR") from None


def _in_range(problems: list[str], name: str, value: int | None, low: int, high: int) -> None:
    if value is not None and not low <= value <= high:
        problems.append(f"{name} must be between {low} and {high}")


def check_policy(policy: SecurityPolicy, *, password_floor: int = PASSWORD_MIN_LENGTH_FLOOR) -> list[str]:
    """Every problem of a policy at once; an empty list when it is consistent."""
    problems: list[str] = []
    _in_range(problems, "passwordMinLength", policy.password_min_length, password_floor, PASSWORD_MIN_LENGTH_MAX)
    _in_range(problems, "passwordHistory", policy.password_history, 0, PASSWORD_HISTORY_MAX)
    _in_range(problems, "passwordMaxAgeDays", policy.password_max_age_days, 1, PASSWORD_MAX_AGE_DAYS_MAX)
    _in_range(problems, "sessionIdleTimeoutMinutes", policy.session_idle_timeout_minutes, *SESSION_IDLE_MINUTES_RANGE)
    _in_range(problems, "sessionMaxLifetimeHours", policy.session_max_lifetime_hours, *SESSION_LIFETIME_HOURS_RANGE)
    _in_range(problems, "maxConcurrentSessions", policy.max_concurrent_sessions, *CONCURRENT_SESSIONS_RANGE)
    _in_range(problems, "freshAuthMinutes", policy.fresh_auth_minutes, *FRESH_AUTH_MINUTES_RANGE)
    _in_range(problems, "apiKeyMaxLifetimeDays", policy.api_key_max_lifetime_days, *API_KEY_LIFETIME_DAYS_RANGE)
    idle, lifetime = policy.session_idle_timeout_minutes, policy.session_max_lifetime_hours
    if idle is not None and lifetime is not None and idle > lifetime * 60:
        problems.append("sessionIdleTimeoutMinutes cannot exceed sessionMaxLifetimeHours")
    if not policy.allowed_sign_in_methods - {SignInMethod.API_KEY}:
        problems.append("allowedSignInMethods must keep PASSWORD or SSO: nobody could sign in")
    if len(policy.break_glass_user_ids) > BREAK_GLASS_MAX:
        problems.append(f"at most {BREAK_GLASS_MAX} break-glass owners")
    if len(policy.ip_allowlist) > IP_ALLOWLIST_MAX:
        problems.append(f"ipAllowlist holds at most {IP_ALLOWLIST_MAX} entries")
    for cidr in policy.ip_allowlist:
        try:
            net = parse_cidr(cidr)
        except ValueError as exc:
            problems.append(f"ipAllowlist: {exc}")
            continue
        if net.prefixlen == 0:
            problems.append(f"ipAllowlist: {cidr} admits every address; leave the list empty instead")
    return problems
