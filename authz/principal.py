"""The one identity object downstream of authentication.

Built once per request by the edge; nothing after it parses a header or a token again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class PrincipalKind(StrEnum):
    ANONYMOUS = "anonymous"
    USER = "user"
    API_KEY = "api_key"


class AuthMethod(StrEnum):
    NONE = "none"
    PASSWORD = "password"
    REFRESH = "refresh"
    OIDC = "oidc"
    SAML = "saml"
    API_KEY = "api_key"


@dataclass(frozen=True, slots=True)
class Principal:
    kind: PrincipalKind
    subject_id: str | None = None
    organization_id: str | None = None
    roles: tuple[str, ...] = ()
    # permission names: `Permission` members and team permissions' plain names (authz.vocabulary)
    permissions: frozenset[str] = field(default_factory=frozenset)
    scopes: frozenset[str] | None = None
    auth_method: AuthMethod = AuthMethod.NONE
    session_id: str | None = None
    plan: str | None = None
    client_ip: str | None = None
    request_id: str | None = None
    # a password session in an organization that requires MFA, of a user without it: only enrollment
    # (and `me`, `logout`) is allowed until the user confirms a TOTP device
    mfa_enrollment_required: bool = False
    # a password session whose password is older than the organization's passwordMaxAgeDays: only
    # changePassword (and `me`, `logout`) is allowed until the password is changed
    password_change_required: bool = False
    # when the person last actively authenticated (POSIX seconds; RFC 9068 `auth_time`): a token's claim,
    # a cookie session's creation; None for API keys (not interactive)
    auth_time: float | None = None

    @property
    def is_authenticated(self) -> bool:
        return self.kind is not PrincipalKind.ANONYMOUS

    @property
    def effective_permissions(self) -> frozenset[str]:
        """What the caller may do: a key is limited to its scopes, a user to its roles."""
        if self.scopes is None:
            return self.permissions
        return self.permissions & self.scopes


def anonymous(client_ip: str | None = None, request_id: str | None = None) -> Principal:
    return Principal(kind=PrincipalKind.ANONYMOUS, client_ip=client_ip, request_id=request_id)
