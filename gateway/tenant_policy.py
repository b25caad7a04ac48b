"""The organization's security policy at the edge, once the credential verified and its organization is known.

Every credential (Bearer token, session cookie, API key) is held to its organization's address allowlist and
allowed sign-in methods: a refusal is 403 `FORBIDDEN`, audited as the key allowlist's refusal is
(`apikey_use_denied` for a key, `session_use_denied` for a session). Session lifetimes and idle timeouts are
the authenticator's (identity/authentication.py). The policy is the per-process cache's: a lookup per request.
"""

from __future__ import annotations

from dataclasses import dataclass

from authz import Principal, PrincipalKind
from authz.security_policy import SecurityPolicy
from store.audit import ActorType, AuditAction, AuditEvent, AuditResult

ADDRESS_NOT_ALLOWED = "address not allowed by the organization's policy"
METHOD_NOT_ALLOWED = "sign-in method not allowed by the organization's policy"


@dataclass(frozen=True, slots=True)
class PolicyRefusal:
    message: str
    reason: str
    audit: AuditEvent


def tenant_refusal(policy: SecurityPolicy, principal: Principal) -> PolicyRefusal | None:
    """Why the organization's policy refuses this principal's request, or None."""
    if principal.organization_id is None or principal.kind is PrincipalKind.ANONYMOUS:
        return None
    if not policy.address_allowed(principal.client_ip):
        return _refusal(principal, ADDRESS_NOT_ALLOWED, "address outside the organization's allowlist")
    method = principal.auth_method.value if principal.auth_method is not None else ""
    user = principal.subject_id if principal.kind is PrincipalKind.USER else None
    if not policy.method_allowed(method, user_id=user):
        return _refusal(principal, METHOD_NOT_ALLOWED, f"sign-in method {method} not allowed by the organization")
    return None


def _refusal(principal: Principal, message: str, reason: str) -> PolicyRefusal:
    is_key = principal.kind is PrincipalKind.API_KEY
    event = AuditEvent(
        action=AuditAction.APIKEY_USE_DENIED if is_key else AuditAction.SESSION_USE_DENIED,
        result=AuditResult.DENIED,
        organization_id=principal.organization_id,
        actor_type=ActorType.API_KEY if is_key else ActorType.USER,
        actor_id=principal.subject_id,
        resource_type="api_key" if is_key else "session",
        resource_id=principal.subject_id if is_key else principal.session_id,
        request_id=principal.request_id,
        ip=principal.client_ip,
        details={"reason": reason},
    )
    return PolicyRefusal(message, reason, event)
