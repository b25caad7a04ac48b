"""What a successful single sign-on yields, whichever the protocol: the identity the IdP asserted.

OIDC (`identity/oidc.py`) and SAML (`identity/saml.py`) each validate their protocol's response and
produce an `ExternalIdentity`; provisioning and the browser session (`resolvers/sso.py`) take it from
there. The identity is keyed by (`issuer`, `subject`), never by email.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class ExternalIdentity:
    protocol: str  # "oidc" or "saml"
    issuer: str  # OIDC `iss`, SAML IdP entity id
    subject: str  # OIDC `sub`, SAML NameID
    email: str | None
    email_verified: bool
    name: str | None = None
    groups: tuple[str, ...] = field(default_factory=tuple)
