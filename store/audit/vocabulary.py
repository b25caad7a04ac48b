"""What an audit entry says: the event vocabulary (OWASP Logging Vocabulary names where one exists), the
actor types and results, and `AuditEvent`, an entry before it is cleaned and chained.

An event without a tenant goes to the `platform` chain; a tenant's events to the chain named by its
organization id.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from store.telemetry import current_trace_id

PLATFORM_CHAIN = "platform"


class AuditResult(StrEnum):
    SUCCESS = "success"
    DENIED = "denied"
    ERROR = "error"


class ActorType(StrEnum):
    ANONYMOUS = "anonymous"
    USER = "user"
    API_KEY = "api_key"
    SYSTEM = "system"


class AuditAction(StrEnum):
    """The event vocabulary (OWASP Logging Vocabulary names where one exists)."""

    # authentication
    AUTHN_LOGIN_SUCCESS = "authn_login_success"
    AUTHN_LOGIN_FAIL = "authn_login_fail"
    AUTHN_LOGIN_LOCK = "authn_login_lock"
    AUTHN_LOGIN_UNLOCK = "authn_login_unlock"
    AUTHN_TOKEN_REFRESH = "authn_token_refresh"
    AUTHN_TOKEN_REUSE = "authn_token_reuse"
    AUTHN_LOGOUT = "authn_logout"
    AUTHN_SSO_SUCCESS = "authn_sso_success"
    AUTHN_SSO_FAIL = "authn_sso_fail"
    AUTHN_MFA_ENROLL = "authn_mfa_enroll"
    AUTHN_MFA_ENROLL_STARTED = "authn_mfa_enroll_started"
    AUTHN_MFA_FAIL = "authn_mfa_fail"
    AUTHN_MFA_DISABLE = "authn_mfa_disable"
    AUTHN_PASSWORD_CHANGE = "authn_password_change"
    AUTHN_INVITATION_ACCEPTED = "authn_invitation_accepted"
    AUTHN_PASSWORD_RESET_REQUESTED = "authn_password_reset_requested"
    AUTHN_PASSWORD_RESET = "authn_password_reset"
    AUTHN_EMAIL_VERIFICATION_SENT = "authn_email_verification_sent"
    AUTHN_EMAIL_VERIFIED = "authn_email_verified"
    AUTHN_EMAIL_CHANGE_REQUESTED = "authn_email_change_requested"
    AUTHN_EMAIL_CHANGED = "authn_email_changed"
    AUTHN_SSO_LINK_STARTED = "authn_sso_link_started"
    AUTHN_SSO_LINKED = "authn_sso_linked"
    # a person ending their own sessions (revokeSession, revokeOtherSessions), or signing in again
    AUTHN_SESSION_REVOKED = "authn_session_revoked"
    AUTHN_REAUTHENTICATED = "authn_reauthenticated"
    # API keys
    APIKEY_CREATED = "apikey_created"
    APIKEY_ROTATED = "apikey_rotated"
    APIKEY_REVOKED = "apikey_revoked"
    APIKEY_USE_DENIED = "apikey_use_denied"
    # a valid session refused by its organization's security policy (address, sign-in method)
    SESSION_USE_DENIED = "session_use_denied"
    # authorization
    AUTHZ_FAIL = "authz_fail"
    AUTHZ_CROSS_TENANT = "authz_cross_tenant"
    AUTHZ_CHANGE = "authz_change"
    PRIVILEGE_ROLE_CREATED = "privilege_role_created"
    PRIVILEGE_PERMISSIONS_CHANGED = "privilege_permissions_changed"
    PRIVILEGE_ROLE_DELETED = "privilege_role_deleted"
    # tenants and members
    ORG_CREATED = "org_created"
    ORG_UPDATED = "org_updated"
    PLAN_CHANGED = "plan_changed"
    USER_CREATED = "user_created"
    MEMBER_ADDED = "member_added"
    MEMBER_INVITED = "member_invited"
    INVITATION_RESENT = "invitation_resent"
    INVITATION_REVOKED = "invitation_revoked"
    DOMAIN_CLAIMED = "domain_claimed"
    DOMAIN_RELEASED = "domain_released"
    MEMBER_REMOVED = "member_removed"
    # an administrator ending a member's sessions (revokeMemberSessions)
    MEMBER_SESSIONS_REVOKED = "member_sessions_revoked"
    SSO_CONFIGURED = "sso_configured"
    SECURITY_POLICY_UPDATE = "security_policy_update"
    # retention settings changed (updateRetention: old and new days per kind)
    RETENTION_UPDATED = "retention_updated"
    REPORT_GENERATED = "report_generated"
    REPORT_SCHEDULED = "report_scheduled"
    REPORT_SCHEDULE_DELETED = "report_schedule_deleted"
    # a root mutation field of an upstream, forwarded (its upstream, field, outcome and latency; never arguments)
    UPSTREAM_MUTATION = "upstream_mutation"
    # a request forwarded by an audited HTTP route (its upstream, route, method, status, outcome and latency)
    UPSTREAM_REQUEST = "upstream_request"
    # security events and their webhooks (docs/security-events.md)
    SECURITY_EVENT_ACKNOWLEDGED = "security_event_acknowledged"
    SECURITY_EVENT_RESOLVED = "security_event_resolved"
    WEBHOOK_CREATED = "webhook_created"
    WEBHOOK_DELETED = "webhook_deleted"
    WEBHOOK_DISABLED = "webhook_disabled"
    # audit streams (docs/audit.md, "Streaming")
    AUDIT_STREAM_CREATED = "audit_stream_created"
    AUDIT_STREAM_UPDATED = "audit_stream_updated"
    AUDIT_STREAM_ENABLED = "audit_stream_enabled"
    AUDIT_STREAM_DISABLED = "audit_stream_disabled"
    AUDIT_STREAM_DELETED = "audit_stream_deleted"
    # limits
    EXCESS_RATE_LIMIT_EXCEEDED = "excess_rate_limit_exceeded"
    # address blocks: a tenant's (its chain), the operator's and the automatic ones (the platform's)
    ADDRESS_BLOCKED = "address_blocked"
    ADDRESS_UNBLOCKED = "address_unblocked"
    # a person's rights of access and erasure (docs/privacy.md)
    DATA_EXPORTED = "data_exported"
    DATA_EXPORT_DOWNLOADED = "data_export_downloaded"
    ACCOUNT_ERASED = "account_erased"
    ACCOUNT_ERASURE_REFUSED = "account_erasure_refused"
    # a mutation the vocabulary does not name yet (recorded all the same)
    MUTATION = "mutation"


ACTIONS: frozenset[str] = frozenset(a.value for a in AuditAction)
RESULTS: frozenset[str] = frozenset(r.value for r in AuditResult)


@dataclass(slots=True)
class AuditEvent:
    """An entry before it is chained: what happened, to what, by whom, with what outcome."""

    action: str
    result: str = AuditResult.SUCCESS
    organization_id: str | None = None
    actor_type: str = ActorType.SYSTEM
    actor_id: str | None = None
    resource_type: str | None = None
    resource_id: str | None = None
    request_id: str | None = None
    ip: str | None = None
    user_agent: str | None = None
    details: Mapping[str, Any] = field(default_factory=dict)
    # the trace of the request the event happened in (store/telemetry.py), stored as `details.traceId`
    trace_id: str | None = field(default_factory=current_trace_id.get)

    @property
    def chain(self) -> str:
        return self.organization_id or PLATFORM_CHAIN
