"""SQLModel tables. Every tenant-owned row carries `organization_id`.

Identifiers are random UUID strings, so an id reveals neither a count nor an order; the exceptions are the
audit log's entries, which are ordered by time anyway (`new_ordered_id`).
Every time is an aware datetime in UTC (`utcnow()`), stored by `store.types.UtcDateTime`.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from sqlalchemy import JSON, Column, Date, Index, Text, UniqueConstraint, text
from sqlmodel import Field, SQLModel

from store.columns import _ts
from store.columns import new_id as new_id
from store.columns import new_ordered_id as new_ordered_id
from store.columns import utcnow as utcnow


class Organization(SQLModel, table=True):
    __tablename__ = "organizations"

    id: str = Field(default_factory=new_id, primary_key=True, max_length=36)
    slug: str = Field(max_length=63, unique=True)
    name: str = Field(max_length=200)
    plan: str = Field(default="free", max_length=20)
    parent_id: str | None = Field(default=None, foreign_key="organizations.id", index=True, max_length=36)
    billing_email: str | None = Field(default=None, max_length=320)
    require_mfa: bool = Field(default=False)
    # per-organization overrides of the plan's limits: QuotaResource name -> int, or null for unlimited
    limit_overrides: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts())


class User(SQLModel, table=True):
    __tablename__ = "users"

    id: str = Field(default_factory=new_id, primary_key=True, max_length=36)
    email: str = Field(max_length=320)
    # casefolded email: the unique key, so `Alice@X` and `alice@x` are one account
    email_key: str = Field(max_length=320, unique=True)
    name: str | None = Field(default=None, max_length=200)
    password_hash: str | None = Field(default=None, max_length=255)
    is_active: bool = Field(default=True)
    mfa_enabled: bool = Field(default=False)
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts())
    last_login_at: datetime | None = Field(default=None, sa_column=_ts(nullable=True))
    password_changed_at: datetime | None = Field(default=None, sa_column=_ts(nullable=True))
    # set when the holder proved the address (an emailed token, or an IdP that vouched for it)
    email_verified_at: datetime | None = Field(default=None, sa_column=_ts(nullable=True))
    # TOTP (identity/totp.py): the seeds are encrypted (SecretBox, purpose "totp"); the last accepted
    # time step refuses a code's replay within its window
    totp_secret_encrypted: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    totp_pending_secret_encrypted: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    totp_last_used_step: int | None = Field(default=None)


class Membership(SQLModel, table=True):
    __tablename__ = "memberships"
    __table_args__ = (UniqueConstraint("organization_id", "user_id", name="uq_memberships_org_user"),)

    id: str = Field(default_factory=new_id, primary_key=True, max_length=36)
    organization_id: str = Field(foreign_key="organizations.id", index=True, max_length=36)
    user_id: str = Field(foreign_key="users.id", index=True, max_length=36)
    role: str = Field(max_length=63)
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts())


class AuthSession(SQLModel, table=True):
    """A signed-in session: what access tokens point at (`sid`) and what logout ends."""

    __tablename__ = "auth_sessions"

    id: str = Field(default_factory=new_id, primary_key=True, max_length=36)
    organization_id: str = Field(foreign_key="organizations.id", index=True, max_length=36)
    user_id: str = Field(foreign_key="users.id", index=True, max_length=36)
    auth_method: str = Field(max_length=20)
    client_ip: str | None = Field(default=None, max_length=45)
    user_agent: str | None = Field(default=None, max_length=256)
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts())
    last_seen_at: datetime = Field(default_factory=utcnow, sa_column=_ts())
    expires_at: datetime = Field(sa_column=_ts())
    revoked_at: datetime | None = Field(default=None, sa_column=_ts(nullable=True, index=True))
    revoked_reason: str | None = Field(default=None, max_length=40)


class RefreshTokenFamily(SQLModel, table=True):
    """The chain of refresh tokens descending from one login; reuse of any retired member revokes it."""

    __tablename__ = "refresh_token_families"

    id: str = Field(default_factory=new_id, primary_key=True, max_length=36)
    organization_id: str = Field(foreign_key="organizations.id", index=True, max_length=36)
    session_id: str = Field(foreign_key="auth_sessions.id", unique=True, max_length=36)
    user_id: str = Field(foreign_key="users.id", index=True, max_length=36)
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts())
    revoked_at: datetime | None = Field(default=None, sa_column=_ts(nullable=True))
    revoked_reason: str | None = Field(default=None, max_length=40)


class RefreshToken(SQLModel, table=True):
    __tablename__ = "refresh_tokens"

    id: str = Field(default_factory=new_id, primary_key=True, max_length=36)
    organization_id: str = Field(foreign_key="organizations.id", index=True, max_length=36)
    family_id: str = Field(foreign_key="refresh_token_families.id", index=True, max_length=36)
    # sha256 of the opaque token; the token itself is never stored
    token_hash: str = Field(max_length=64, unique=True)
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts())
    expires_at: datetime = Field(sa_column=_ts())
    used_at: datetime | None = Field(default=None, sa_column=_ts(nullable=True))


class MfaRecoveryCode(SQLModel, table=True):
    """One single-use recovery code of a user with TOTP enabled; only HMAC-SHA256(pepper, code) is kept.

    Not tenant data: a user's second factor is the same in every organization the user belongs to.
    """

    __tablename__ = "mfa_recovery_codes"
    __table_args__ = (UniqueConstraint("user_id", "code_hash", name="uq_mfa_recovery_codes_user_hash"),)

    id: str = Field(default_factory=new_id, primary_key=True, max_length=36)
    user_id: str = Field(foreign_key="users.id", index=True, max_length=36)
    code_hash: str = Field(max_length=64)
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts())
    used_at: datetime | None = Field(default=None, sa_column=_ts(nullable=True))


class LoginCounter(SQLModel, table=True):
    """Failure counters for password logins, one row per key (`acct:<email>`, or
    `pair:<email>|<organization>|<ip>` for the sign-ins into one organization from one address).

    Not tenant data, but a pair row records the organization its sign-ins aimed at (`organization_id`,
    null when the account or the membership was not found): an organization's `unlockUser` clears those
    rows only, so that no tenant changes how another's sign-ins are counted.
    """

    __tablename__ = "login_throttle"
    __table_args__ = (Index("ix_login_throttle_account", "account_key"),)

    key: str = Field(primary_key=True, max_length=400)
    account_key: str = Field(max_length=320)
    organization_id: str | None = Field(default=None, max_length=36)
    failures: int = Field(default=0)
    window_started_at: datetime = Field(default_factory=utcnow, sa_column=_ts())
    locked_until: datetime | None = Field(default=None, sa_column=_ts(nullable=True))
    lock_count: int = Field(default=0)
    last_success_at: datetime | None = Field(default=None, sa_column=_ts(nullable=True))


class Role(SQLModel, table=True):
    """A tenant's custom role: its own permissions plus those of the roles it inherits (names)."""

    __tablename__ = "roles"
    __table_args__ = (UniqueConstraint("organization_id", "name", name="uq_roles_org_name"),)

    id: str = Field(default_factory=new_id, primary_key=True, max_length=36)
    organization_id: str = Field(foreign_key="organizations.id", index=True, max_length=36)
    name: str = Field(max_length=63)
    description: str | None = Field(default=None, max_length=500)
    permissions: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    inherits: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts())
    updated_at: datetime = Field(default_factory=utcnow, sa_column=_ts())


class Invitation(SQLModel, table=True):
    """An organization's offer of membership to an email address; nothing else exists until it is accepted.

    The token reaches the invitee by email only (only its sha256 is kept). Accepting creates the membership,
    and the account when the address has none; an existing account joins only by its holder's act
    (resolvers/invitations.py). At most one pending invitation per (organization, address).
    """

    __tablename__ = "invitations"
    __table_args__ = (Index("ix_invitations_organization_email", "organization_id", "email_key"),)

    id: str = Field(default_factory=new_id, primary_key=True, max_length=36)
    organization_id: str = Field(foreign_key="organizations.id", index=True, max_length=36)
    email: str = Field(max_length=320)
    email_key: str = Field(max_length=320)
    role: str = Field(max_length=63)
    # who invited: a user, or null for the operator's command line (`portcullis bootstrap`)
    invited_by: str | None = Field(default=None, foreign_key="users.id", max_length=36)
    token_hash: str = Field(max_length=64, unique=True)
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts())
    expires_at: datetime = Field(sa_column=_ts())
    sent_at: datetime | None = Field(default=None, sa_column=_ts(nullable=True))
    send_count: int = Field(default=0)
    accepted_at: datetime | None = Field(default=None, sa_column=_ts(nullable=True))
    accepted_by: str | None = Field(default=None, foreign_key="users.id", max_length=36)
    revoked_at: datetime | None = Field(default=None, sa_column=_ts(nullable=True))


class ApiKey(SQLModel, table=True):
    """An integration's key. Only HMAC-SHA256(pepper, secret) is kept; `prefix` finds the row and is shown.

    During a rotation's grace period the previous secret's hash stays in `previous_secret_hash` until
    `previous_expires_at`.
    """

    __tablename__ = "api_keys"

    id: str = Field(default_factory=new_id, primary_key=True, max_length=36)
    organization_id: str = Field(foreign_key="organizations.id", index=True, max_length=36)
    created_by: str = Field(foreign_key="users.id", index=True, max_length=36)
    # the member the key acts for: its creator, or whoever last rotated it (received its secret); the key
    # counts only while that member stays an active member of the organization
    held_by: str = Field(foreign_key="users.id", index=True, max_length=36)
    name: str = Field(max_length=100)
    env: str = Field(max_length=8)
    prefix: str = Field(max_length=16, unique=True)
    secret_hash: str = Field(max_length=64)
    previous_secret_hash: str | None = Field(default=None, max_length=64)
    previous_expires_at: datetime | None = Field(default=None, sa_column=_ts(nullable=True))
    scopes: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    allowed_ips: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    rate_limit_per_minute: int | None = Field(default=None)
    expires_at: datetime | None = Field(default=None, sa_column=_ts(nullable=True))
    last_used_at: datetime | None = Field(default=None, sa_column=_ts(nullable=True))
    revoked_at: datetime | None = Field(default=None, sa_column=_ts(nullable=True))
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts())


class UsageDaily(SQLModel, table=True):
    """Requests and cost admitted per tenant and UTC day, in total and per subject (an API key or a user).

    `subject_type` is `total`, `api_key`, `user` or `anonymous`; `subject_id` is empty for `total`.
    """

    __tablename__ = "usage_daily"

    organization_id: str = Field(foreign_key="organizations.id", primary_key=True, max_length=36)
    day: date = Field(sa_column=Column(Date, primary_key=True))
    subject_type: str = Field(primary_key=True, max_length=16)
    subject_id: str = Field(default="", primary_key=True, max_length=36)
    requests: int = Field(default=0)
    cost: int = Field(default=0)
    rate_limited: int = Field(default=0)


# the predicate of the partial index on results: queries that filter on denied or error repeat it (SQLite
# uses a partial index only for a WHERE clause that contains its predicate)
UNSUCCESSFUL = "result <> 'success'"


class AuditEntry(SQLModel, table=True):
    """One audit event. Entries of one chain (a tenant's id, or `platform` for events outside any tenant)
    are numbered without gaps and linked: `hash` = sha256(previous_hash | sequence | canonical JSON of the
    entry's other fields), see store.audit.

    Append-only: nothing in the application updates or deletes a row.
    """

    __tablename__ = "audit_log"
    __table_args__ = (
        # keyset pages, newest first: one index per filter, each ending in the page order (at, id)
        Index("ix_audit_log_chain_at", "chain", "at", "id"),
        Index("ix_audit_log_chain_action_at", "chain", "action", "at", "id"),
        Index("ix_audit_log_chain_actor_at", "chain", "actor_id", "at", "id"),
        Index("ix_audit_log_chain_resource_at", "chain", "resource_type", "resource_id", "at", "id"),
        # only the entries that did not succeed: a filter on `success` pages through the chain's own index
        # (most entries succeed), and the far more numerous successes cost no entry here when written
        Index(
            "ix_audit_log_chain_unsuccessful_at",
            "chain",
            "result",
            "at",
            "id",
            sqlite_where=text(UNSUCCESSFUL),
            postgresql_where=text(UNSUCCESSFUL),
        ),
        Index("ix_audit_log_request_id", "request_id"),
        Index("ix_audit_log_at", "at", "id"),
    )

    # the entry's place in its chain is its key (no two entries of a chain share a sequence: no fork); the
    # public id is a UUIDv7 made by the writer, unique without an index of its own to keep up on every append
    id: str = Field(default_factory=new_ordered_id, max_length=36)
    chain: str = Field(primary_key=True, max_length=36)
    sequence: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    organization_id: str | None = Field(default=None, max_length=36)
    at: datetime = Field(default_factory=utcnow, sa_column=_ts())
    actor_type: str = Field(max_length=20)
    actor_id: str | None = Field(default=None, max_length=64)
    action: str = Field(max_length=64)
    resource_type: str | None = Field(default=None, max_length=40)
    resource_id: str | None = Field(default=None, max_length=64)
    result: str = Field(max_length=10)
    request_id: str = Field(max_length=64)
    ip: str | None = Field(default=None, max_length=45)
    user_agent: str | None = Field(default=None, max_length=256)
    details: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    previous_hash: str = Field(max_length=64)
    hash: str = Field(max_length=64)


class AuditChainHead(SQLModel, table=True):
    """The head of each chain; locking this row serializes appends to the chain."""

    __tablename__ = "audit_chain_heads"

    chain: str = Field(primary_key=True, max_length=36)
    sequence: int = Field(default=0)
    hash: str = Field(max_length=64)
    updated_at: datetime = Field(default_factory=utcnow, sa_column=_ts())


class Report(SQLModel, table=True):
    """A generated report: its parameters, a summary, and the digest of its canonical content."""

    __tablename__ = "reports"

    id: str = Field(default_factory=new_id, primary_key=True, max_length=36)
    organization_id: str = Field(foreign_key="organizations.id", index=True, max_length=36)
    kind: str = Field(max_length=20)
    period_start: datetime = Field(sa_column=_ts())
    period_end: datetime = Field(sa_column=_ts())
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts(index=True))
    created_by_type: str = Field(max_length=20)
    created_by_id: str | None = Field(default=None, max_length=64)
    parameters: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    summary: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    row_count: int = Field(default=0)
    # sha256 (hex) of the JSON download and of the CSV download, byte for byte
    digest: str = Field(max_length=64)
    csv_digest: str = Field(default="", max_length=64)


class ReportRow(SQLModel, table=True):
    """One row of a generated report, kept as the canonical JSON array the downloads are built from."""

    __tablename__ = "report_rows"

    report_id: str = Field(foreign_key="reports.id", primary_key=True, max_length=36)
    seq: int = Field(primary_key=True)
    organization_id: str = Field(foreign_key="organizations.id", index=True, max_length=36)
    line: str = Field(sa_column=Column(Text, nullable=False))


class SsoConnection(SQLModel, table=True):
    """A tenant's identity provider (`kind` = `oidc` or `saml`). The OIDC client secret is stored
    encrypted (`client_secret_encrypted`) and never returned; protocol details live in `config`."""

    __tablename__ = "sso_connections"

    id: str = Field(default_factory=new_id, primary_key=True, max_length=36)
    organization_id: str = Field(foreign_key="organizations.id", index=True, max_length=36)
    kind: str = Field(max_length=10)
    enabled: bool = Field(default=True)
    issuer: str | None = Field(default=None, max_length=500)
    entity_id: str | None = Field(default=None, max_length=500)
    client_id: str | None = Field(default=None, max_length=255)
    client_secret_encrypted: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    config: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    role_mapping: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    default_role: str = Field(default="viewer", max_length=63)
    allowed_domains: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    jit_provisioning: bool = Field(default=True)
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts())
    updated_at: datetime = Field(default_factory=utcnow, sa_column=_ts())


class SsoIdentity(SQLModel, table=True):
    """A user's identity at an IdP, keyed by (issuer, subject): never by email."""

    __tablename__ = "sso_identities"
    __table_args__ = (UniqueConstraint("issuer", "subject", name="uq_sso_identities_issuer_subject"),)

    id: str = Field(default_factory=new_id, primary_key=True, max_length=36)
    organization_id: str = Field(foreign_key="organizations.id", index=True, max_length=36)
    connection_id: str = Field(foreign_key="sso_connections.id", index=True, max_length=36)
    user_id: str = Field(foreign_key="users.id", index=True, max_length=36)
    issuer: str = Field(max_length=500)
    subject: str = Field(max_length=255)
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts())
    last_login_at: datetime | None = Field(default=None, sa_column=_ts(nullable=True))


class EmailDomain(SQLModel, table=True):
    """An email domain an organization has claimed: its identity providers may provision accounts there.

    One organization per domain (the first claim wins; a platform operator can reassign it)."""

    __tablename__ = "email_domains"

    domain: str = Field(primary_key=True, max_length=253)
    organization_id: str = Field(foreign_key="organizations.id", index=True, max_length=36)
    claimed_by: str | None = Field(default=None, foreign_key="users.id", max_length=36)
    claimed_at: datetime = Field(default_factory=utcnow, sa_column=_ts())


class AccountToken(SQLModel, table=True):
    """A single-use token sent by email to prove control of an address: a password reset, an email
    verification, an email change (to the new address), or a request to link an identity provider.

    Only the token's sha256 is kept. Not tenant data: it belongs to a person, whatever their organizations;
    `organization_id` is set only for a link to an organization's provider. A password reset asked for an
    address with no account is recorded with no user, so that every request writes the same."""

    __tablename__ = "account_tokens"
    __table_args__ = (
        Index("ix_account_tokens_user_purpose", "user_id", "purpose", "created_at"),
        Index("ix_account_tokens_email_purpose", "email_key", "purpose", "created_at"),
        Index("ix_account_tokens_ip_purpose", "client_ip", "purpose", "created_at"),
    )

    id: str = Field(default_factory=new_id, primary_key=True, max_length=36)
    purpose: str = Field(max_length=20)
    user_id: str | None = Field(default=None, foreign_key="users.id", max_length=36)
    email_key: str = Field(max_length=320)
    # the address the token was sent to (for an email change: the new address)
    email: str = Field(max_length=320)
    organization_id: str | None = Field(default=None, foreign_key="organizations.id", max_length=36)
    token_hash: str = Field(max_length=64, unique=True)
    client_ip: str | None = Field(default=None, max_length=45)
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts())
    expires_at: datetime = Field(sa_column=_ts())
    used_at: datetime | None = Field(default=None, sa_column=_ts(nullable=True))


class MailMessage(SQLModel, table=True):
    """A message the gateway sends, committed with the change that causes it and delivered after commit.

    `status`: `pending` (to send at `next_attempt_at`), `sent`, `failed` (given up), or `mailbox` (no SMTP
    server configured: kept for `portcullis mail list|show`). A process sends a message only while it holds
    its lease (`lease_until`), taken by one UPDATE, so two processes never send the same message. The
    content (subject, text and HTML parts, which carry one-time links) is encrypted at rest."""

    __tablename__ = "mail_outbox"
    __table_args__ = (Index("ix_mail_outbox_status_next", "status", "next_attempt_at"),)

    id: str = Field(default_factory=new_ordered_id, primary_key=True, max_length=36)
    organization_id: str | None = Field(default=None, foreign_key="organizations.id", index=True, max_length=36)
    recipient: str = Field(max_length=320)
    template: str = Field(max_length=40)
    content_encrypted: str = Field(sa_column=Column(Text, nullable=False))
    message_id: str = Field(max_length=255)
    status: str = Field(default="pending", max_length=10)
    attempts: int = Field(default=0)
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts())
    next_attempt_at: datetime = Field(default_factory=utcnow, sa_column=_ts())
    lease_until: datetime | None = Field(default=None, sa_column=_ts(nullable=True))
    sent_at: datetime | None = Field(default=None, sa_column=_ts(nullable=True))
    last_error: str | None = Field(default=None, max_length=500)


TENANT_TABLES: frozenset[str] = frozenset(
    {
        "memberships",
        "auth_sessions",
        "refresh_token_families",
        "refresh_tokens",
        "roles",
        "invitations",
        "api_keys",
        "usage_daily",
        "reports",
        "report_rows",
        "sso_connections",
        "sso_identities",
        "email_domains",
        "security_policies",
        "security_events",
        "webhooks",
        "webhook_deliveries",
        "report_schedules",
        "report_schedule_runs",
        "retention_settings",
        "audit_streams",
    }
)

import store.audit_streams  # noqa: E402  (audit streams, on the same metadata)
import store.privacy  # noqa: E402  (subject keys and data exports, on the same metadata)
import store.reporting  # noqa: E402  (the scheduled reports' tables, on the same metadata)
import store.retention  # noqa: E402  (retention's tables, on the same metadata)
import store.security  # noqa: E402, F401  (the security domain's tables, on the same metadata)
