"""The one registry of personal data: for every table, how to find a person's rows, what of them to export,
and how to erase them (docs/privacy.md).

`exportMyData` and `eraseAccount` both read `REGISTRY`, so what is exported and what is erased cannot drift
apart; a test fails when a table is added to the metadata without an entry here. An entry's `rows` is None
for a table that holds nothing about a person (with the reason in `holds`).

Erasure, by kind:
- `DELETE`: the person's rows go;
- `UPDATE`: the rows stay (they are the organization's record), the columns in `erase_values` are cleared;
- `SCRUB`: the rows stay, every occurrence of the person's email addresses, name and addresses in the
  listed text and JSON columns is replaced with `[erased]` (documents such as reports and security events),
  and a column of `erase_values` is cleared where it holds the person's id or one of those values;
- `CUSTOM`: done by the erasure service itself, in the order it needs (the account row, lists holding an
  email or an id, the audit log's keys); the registry names it so that export and tests see it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from sqlalchemy import ColumnElement, Text, and_, cast, false, func, or_, select
from sqlmodel import SQLModel, col

from store.audit_streams import AuditStream
from store.models import (
    AccountToken,
    ApiKey,
    AuditEntry,
    AuthSession,
    EmailDomain,
    Invitation,
    LoginCounter,
    MailMessage,
    Membership,
    MfaRecoveryCode,
    Organization,
    RefreshToken,
    RefreshTokenFamily,
    Report,
    ReportRow,
    SsoIdentity,
    UsageDaily,
    User,
)
from store.privacy import DataExport, SubjectKey
from store.reporting import ReportSchedule
from store.security import (
    AddressBlock,
    PasswordHistory,
    SecurityEvent,
    SecurityPolicyRow,
    SignIn,
    Webhook,
    WebhookDelivery,
)

ERASED = "[erased]"


class Erase(StrEnum):
    NOTHING = "nothing"
    DELETE = "delete"
    UPDATE = "update"
    SCRUB = "scrub"
    CUSTOM = "custom"


@dataclass(frozen=True)
class Subject:
    """The person whose data is found: the account, its addresses (casefolded), its name and the client
    addresses it used (read from its sessions and sign-ins before they go)."""

    user_id: str
    emails: frozenset[str]
    name: str | None = None
    addresses: frozenset[str] = frozenset()

    @property
    def needles(self) -> list[str]:
        """What `SCRUB` replaces: every address, the name, every client address (longest first)."""
        values = {*self.emails, *self.addresses, *([self.name] if self.name and len(self.name) >= 3 else [])}
        return sorted((v for v in values if v), key=len, reverse=True)


@dataclass(frozen=True)
class PersonalData:
    model: type[SQLModel]
    holds: str
    rows: Callable[[Subject], ColumnElement[bool]] | None = None
    export: tuple[str, ...] = ()
    erase: Erase = Erase.NOTHING
    # UPDATE: column -> value; an id column is matched by `cleared_where` (default: `rows`)
    erase_values: dict[str, Any] = field(default_factory=dict)
    # SCRUB: the text and JSON columns whose values are rewritten
    scrub: tuple[str, ...] = ()

    @property
    def table(self) -> str:
        return str(self.model.__tablename__)


def _emails(column: Any, s: Subject) -> ColumnElement[bool]:
    return col(column).in_(sorted(s.emails)) if s.emails else false()


def _lower_emails(column: Any, s: Subject) -> ColumnElement[bool]:
    return func.lower(col(column)).in_(sorted(s.emails)) if s.emails else false()


def _families(s: Subject) -> Any:
    return select(col(RefreshTokenFamily.id)).where(col(RefreshTokenFamily.user_id) == s.user_id)


def _contains(columns: tuple[Any, ...], needles: list[str]) -> ColumnElement[bool]:
    """Rows whose text (or JSON as text) holds one of `needles`, case-insensitively."""
    if not needles:
        return false()
    return or_(*(func.lower(cast(col(c), Text)).contains(n.lower()) for c in columns for n in needles))


def _mentions(columns: tuple[Any, ...], s: Subject) -> ColumnElement[bool]:
    return _contains(columns, s.needles)


REGISTRY: tuple[PersonalData, ...] = (
    PersonalData(
        User,
        "the account: address, name, sign-in and MFA state",
        lambda s: col(User.id) == s.user_id,
        (
            "id",
            "email",
            "name",
            "is_active",
            "mfa_enabled",
            "created_at",
            "last_login_at",
            "password_changed_at",
            "email_verified_at",
        ),
        Erase.CUSTOM,  # pseudonymised last: other tables point at the row (resolvers/erasure.py)
    ),
    PersonalData(
        Membership,
        "the organizations the person belongs to, and the role in each",
        lambda s: col(Membership.user_id) == s.user_id,
        ("id", "organization_id", "role", "created_at"),
        Erase.DELETE,
    ),
    PersonalData(
        RefreshToken,
        "refresh tokens of the person's sessions (only their hashes are stored; never exported)",
        lambda s: col(RefreshToken.family_id).in_(_families(s)),
        ("id", "organization_id", "family_id", "created_at", "expires_at", "used_at"),
        Erase.DELETE,
    ),
    PersonalData(
        RefreshTokenFamily,
        "the refresh-token chains of the person's sessions",
        lambda s: col(RefreshTokenFamily.user_id) == s.user_id,
        ("id", "organization_id", "session_id", "created_at", "revoked_at", "revoked_reason"),
        Erase.DELETE,
    ),
    PersonalData(
        AuthSession,
        "sessions: when, from which address and browser",
        lambda s: col(AuthSession.user_id) == s.user_id,
        (
            "id",
            "organization_id",
            "auth_method",
            "client_ip",
            "user_agent",
            "created_at",
            "last_seen_at",
            "expires_at",
            "revoked_at",
            "revoked_reason",
        ),
        Erase.DELETE,
    ),
    PersonalData(
        MfaRecoveryCode,
        "recovery codes of the second factor (only their hashes; never exported)",
        lambda s: col(MfaRecoveryCode.user_id) == s.user_id,
        ("id", "created_at", "used_at"),
        Erase.DELETE,
    ),
    PersonalData(
        PasswordHistory,
        "when the person's previous passwords were set (the hashes are never exported)",
        lambda s: col(PasswordHistory.user_id) == s.user_id,
        ("id", "created_at"),
        Erase.DELETE,
    ),
    PersonalData(
        SignIn,
        "sign-in attempts: method, outcome, address, risk",
        lambda s: col(SignIn.user_id) == s.user_id,
        ("id", "organization_id", "method", "outcome", "client_ip", "risk_score", "risk_signals", "at"),
        Erase.DELETE,
    ),
    PersonalData(
        LoginCounter,
        "failed-sign-in counters of the person's address (their keys hold the address and client address)",
        lambda s: _emails(LoginCounter.account_key, s),
        ("organization_id", "failures", "window_started_at", "locked_until", "lock_count", "last_success_at"),
        Erase.DELETE,
    ),
    PersonalData(
        SsoIdentity,
        "the person's identities at organizations' identity providers",
        lambda s: col(SsoIdentity.user_id) == s.user_id,
        ("id", "organization_id", "connection_id", "issuer", "subject", "created_at", "last_login_at"),
        Erase.DELETE,
    ),
    PersonalData(
        AccountToken,
        "emailed links: password resets, address verifications and changes (only their hashes)",
        lambda s: or_(col(AccountToken.user_id) == s.user_id, _emails(AccountToken.email_key, s)),
        ("id", "purpose", "email", "organization_id", "client_ip", "created_at", "expires_at", "used_at"),
        Erase.DELETE,
    ),
    PersonalData(
        Invitation,
        "invitations to the person's address, and those the person sent or accepted",
        lambda s: or_(
            _emails(Invitation.email_key, s),
            col(Invitation.invited_by) == s.user_id,
            col(Invitation.accepted_by) == s.user_id,
        ),
        (
            "id",
            "organization_id",
            "email",
            "role",
            "invited_by",
            "created_at",
            "expires_at",
            "sent_at",
            "accepted_at",
            "revoked_at",
        ),
        Erase.CUSTOM,  # invitations to the person go; those sent by the person lose the sender
    ),
    PersonalData(
        MailMessage,
        "mail sent to the person (the content is encrypted; its envelope is exported)",
        lambda s: _lower_emails(MailMessage.recipient, s),
        ("id", "organization_id", "recipient", "template", "status", "created_at", "sent_at"),
        Erase.DELETE,
    ),
    PersonalData(
        ApiKey,
        "API keys the person created or holds (never their secrets or hashes)",
        lambda s: or_(col(ApiKey.created_by) == s.user_id, col(ApiKey.held_by) == s.user_id),
        (
            "id",
            "organization_id",
            "name",
            "prefix",
            "scopes",
            "allowed_ips",
            "created_at",
            "expires_at",
            "last_used_at",
            "revoked_at",
        ),
        Erase.CUSTOM,  # revoked (audited, announced); the organization's record of the key stays
    ),
    PersonalData(
        UsageDaily,
        "the person's requests and cost per day",
        lambda s: and_(col(UsageDaily.subject_type) == "user", col(UsageDaily.subject_id) == s.user_id),
        ("organization_id", "day", "requests", "cost", "rate_limited"),
        Erase.DELETE,
    ),
    PersonalData(
        AuditEntry,
        "audit entries the person caused or that name the person (personal fields sealed per person)",
        lambda s: or_(col(AuditEntry.actor_id) == s.user_id, col(AuditEntry.resource_id) == s.user_id),
        (
            "id",
            "chain",
            "sequence",
            "at",
            "actor_type",
            "actor_id",
            "action",
            "resource_type",
            "resource_id",
            "result",
            "request_id",
            "ip",
            "user_agent",
            "details",
        ),
        Erase.CUSTOM,  # append-only: the person's keys are destroyed (store/audit/sealing.py)
    ),
    PersonalData(
        SubjectKey,
        "the keys that seal the person's fields in audit entries (secrets: never exported)",
        None,
        (),
        Erase.CUSTOM,  # destroyed by erasure (an erased account keeps a tombstone without key)
    ),
    PersonalData(
        DataExport,
        "the person's previous exports (their content is not exported again)",
        lambda s: col(DataExport.user_id) == s.user_id,
        ("id", "created_at", "expires_at", "digest"),
        Erase.DELETE,
    ),
    PersonalData(
        SecurityEvent,
        "security events about the person or raised by the person's actions",
        lambda s: or_(
            col(SecurityEvent.actor_id) == s.user_id,
            col(SecurityEvent.subject_id) == s.user_id,
            _mentions((SecurityEvent.summary, SecurityEvent.details), s),
        ),
        ("id", "organization_id", "kind", "severity", "summary", "client_ip", "status", "created_at"),
        Erase.SCRUB,
        erase_values={"client_ip": None},
        scrub=("summary", "details", "note"),
    ),
    PersonalData(
        WebhookDelivery,
        "security events sent to organizations' webhooks, which may name the person",
        lambda s: _mentions((WebhookDelivery.payload,), s),
        (),
        Erase.SCRUB,
        scrub=("payload",),
    ),
    PersonalData(
        ReportRow,
        "rows of the organizations' reports that name the person (members, sources of events)",
        lambda s: _contains((ReportRow.line,), [s.user_id, *s.needles]),
        (),
        Erase.SCRUB,
        scrub=("line",),
    ),
    PersonalData(
        Organization,
        "organizations whose billing address is the person's",
        lambda s: _lower_emails(Organization.billing_email, s),
        ("id", "slug", "name", "billing_email"),
        Erase.UPDATE,
        erase_values={"billing_email": None},
    ),
    PersonalData(
        ReportSchedule,
        "report schedules that mail the person, or that the person created",
        lambda s: or_(col(ReportSchedule.created_by) == s.user_id, _mentions((ReportSchedule.recipients,), s)),
        ("id", "organization_id", "kind", "cadence", "created_at"),
        Erase.CUSTOM,  # the address leaves `recipients`; the creator is cleared
    ),
    PersonalData(
        SecurityPolicyRow,
        "policies that the person last changed or that name the person for break-glass sign-in",
        lambda s: or_(
            col(SecurityPolicyRow.updated_by) == s.user_id,
            _contains((SecurityPolicyRow.break_glass_user_ids,), [s.user_id]),
        ),
        ("organization_id", "updated_at"),
        Erase.CUSTOM,  # the id leaves `break_glass_user_ids`; `updated_by` is cleared
    ),
    PersonalData(
        Report,
        "reports the person generated, and those whose summary names the person (top sources of events)",
        lambda s: or_(col(Report.created_by_id) == s.user_id, _mentions((Report.summary,), s)),
        ("id", "organization_id", "kind", "period_start", "period_end", "created_at"),
        Erase.SCRUB,
        erase_values={"created_by_id": None},
        scrub=("summary",),
    ),
    PersonalData(
        EmailDomain,
        "email domains the person claimed for an organization",
        lambda s: col(EmailDomain.claimed_by) == s.user_id,
        ("domain", "organization_id", "claimed_at"),
        Erase.UPDATE,
        erase_values={"claimed_by": None},
    ),
    PersonalData(
        AddressBlock,
        "address blocks the person made or lifted",
        lambda s: or_(col(AddressBlock.created_by) == s.user_id, col(AddressBlock.lifted_by) == s.user_id),
        ("id", "organization_id", "cidr", "reason", "created_at", "lifted_at"),
        Erase.CUSTOM,  # who made and who lifted are cleared
    ),
    PersonalData(
        Webhook,
        "webhooks the person created",
        lambda s: col(Webhook.created_by) == s.user_id,
        ("id", "organization_id", "url", "created_at"),
        Erase.UPDATE,
        erase_values={"created_by": None},
    ),
    PersonalData(
        AuditStream,
        "audit streams the person created",
        lambda s: col(AuditStream.created_by) == s.user_id,
        ("id", "organization_id", "kind", "url", "created_at"),
        Erase.UPDATE,
        erase_values={"created_by": None},
    ),
)

# tables that hold nothing about a person, with the reason (a test reads these too)
NOT_PERSONAL: dict[str, str] = {
    "roles": "an organization's role definitions",
    "sso_connections": "an organization's identity providers (never a person's data)",
    "audit_chain_heads": "the chains' last sequence and hash",
    "report_schedule_runs": "which periods a schedule has run for",
    "retention_settings": "an organization's retention days",
    "job_leases": "which process runs a job",
    "audit_checkpoints": "signed chain heads",
    "audit_chain_starts": "where pruned chains start",
}

BY_TABLE: dict[str, PersonalData] = {entry.table: entry for entry in REGISTRY}


def scrub_value(value: Any, needles: list[str]) -> Any:
    """`value` (text, or JSON) with every needle replaced by `[erased]`, case-insensitively."""
    if not needles:
        return value
    if isinstance(value, str):
        pattern = re.compile("|".join(re.escape(n) for n in needles), re.IGNORECASE)
        return pattern.sub(ERASED, value)
    if isinstance(value, dict):
        return {scrub_value(k, needles): scrub_value(v, needles) for k, v in value.items()}
    if isinstance(value, list):
        return [scrub_value(v, needles) for v in value]
    return value
