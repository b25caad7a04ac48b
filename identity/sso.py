"""What a successful single sign-on yields, whichever the protocol: the identity the IdP asserted.

OIDC (`identity/oidc.py`) and SAML (`identity/saml.py`) each validate their protocol's response and
produce an `ExternalIdentity`; provisioning and the browser session (`resolvers/sso_login.py`) take it from
there. The identity is keyed by (`issuer`, `subject`), never by email.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

MAX_RETURN_TO = 1000
_PATH_CHARS = re.compile(r"^/[A-Za-z0-9\-._~!$&'()*+,;=:@%/]*$")
_QUERY_CHARS = re.compile(r"^[A-Za-z0-9\-._~!$&'()*+,;=:@%/?]*$")


@dataclass(frozen=True, slots=True)
class ExternalIdentity:
    protocol: str  # "oidc" or "saml"
    issuer: str  # OIDC `iss`, SAML IdP entity id
    subject: str  # OIDC `sub`, SAML NameID
    email: str | None
    email_verified: bool
    name: str | None = None
    groups: tuple[str, ...] = field(default_factory=tuple)
    # the IdP says the person used more than a password (OIDC `amr`, SAML `AuthnContextClassRef`)
    second_factor: bool = False


# RFC 8176 `amr` values that are a factor beyond a password
MFA_AMR = frozenset({"mfa", "otp", "hwk", "sms", "sc", "fpt", "face", "iris", "retina", "vbm"})
# SAML authentication context classes that name more than a password
MFA_AUTHN_CONTEXTS = frozenset(
    {
        "urn:oasis:names:tc:SAML:2.0:ac:classes:MobileTwoFactorContract",
        "urn:oasis:names:tc:SAML:2.0:ac:classes:MobileTwoFactorUnregistered",
        "urn:oasis:names:tc:SAML:2.0:ac:classes:TimeSyncToken",
        "urn:oasis:names:tc:SAML:2.0:ac:classes:Smartcard",
        "urn:oasis:names:tc:SAML:2.0:ac:classes:SmartcardPKI",
        "http://schemas.microsoft.com/claims/multipleauthn",
        "https://refeds.org/profile/mfa",
    }
)


def amr_second_factor(amr: object) -> bool:
    """Whether an OIDC `amr` claim (a list of strings) names a factor beyond a password."""
    return isinstance(amr, list) and any(isinstance(v, str) and v in MFA_AMR for v in amr)


def safe_return_to(value: str | None, allowed_paths: Sequence[str]) -> str:
    """`value` when it is a relative path under one of the allowed prefixes, else the first prefix (C-051).

    Where the browser goes after any single sign-on (OIDC and SAML). Checked on the raw value, not on what
    `urlsplit` makes of it (which strips leading spaces and control characters): one leading `/`, then only
    URL path characters (no backslash, no control character), no `.`/`..` segment, and no slash or
    backslash percent-encoded in the path (a frontend that decodes it would see `//host`).
    """
    default = allowed_paths[0]
    if not value or len(value) > MAX_RETURN_TO:
        return default
    path, _, query = value.partition("?")
    if not _PATH_CHARS.match(path) or path.startswith("//") or (query and not _QUERY_CHARS.match(query)):
        return default
    if urlsplit(value).netloc or any(unquote(seg) in ("..", ".") for seg in path.split("/")):
        return default
    if "%2f" in path.lower() or "%5c" in path.lower():
        return default
    for prefix in allowed_paths:
        if prefix == "/" or path == prefix or path.startswith(prefix.rstrip("/") + "/"):
            return value
    return default
