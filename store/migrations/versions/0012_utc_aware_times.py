"""times are instants: `timestamp with time zone` on PostgreSQL

Every time column held naive UTC (`timestamp without time zone`); the models now read and write aware
datetimes in UTC (`store.types.UtcDateTime`). On PostgreSQL each column becomes `timestamp with time zone`,
its values read as the UTC instants they were (`AT TIME ZONE 'UTC'`, whatever the session's time zone),
one rewrite per table. On SQLite nothing changes: the text stored stays the UTC instant without an offset.

The audit chain is untouched: an entry's hash covers its time as UTC ISO 8601 text (`store.audit.chain`),
which is the same for the naive value read before and the aware value read after.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07 02:00:00
"""

from alembic import op


revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None

COLUMNS = {
    'account_tokens': ['created_at', 'expires_at', 'used_at'],
    'api_keys': ['previous_expires_at', 'expires_at', 'last_used_at', 'revoked_at', 'created_at'],
    'audit_chain_heads': ['updated_at'],
    'audit_log': ['at'],
    'auth_sessions': ['created_at', 'last_seen_at', 'expires_at', 'revoked_at'],
    'email_domains': ['claimed_at'],
    'invitations': ['created_at', 'expires_at', 'sent_at', 'accepted_at', 'revoked_at'],
    'login_throttle': ['window_started_at', 'locked_until', 'last_success_at'],
    'mail_outbox': ['created_at', 'next_attempt_at', 'lease_until', 'sent_at'],
    'memberships': ['created_at'],
    'mfa_recovery_codes': ['created_at', 'used_at'],
    'organizations': ['created_at'],
    'refresh_token_families': ['created_at', 'revoked_at'],
    'refresh_tokens': ['created_at', 'expires_at', 'used_at'],
    'reports': ['period_start', 'period_end', 'created_at'],
    'roles': ['created_at', 'updated_at'],
    'sso_connections': ['created_at', 'updated_at'],
    'sso_identities': ['created_at', 'last_login_at'],
    'users': ['created_at', 'last_login_at', 'password_changed_at', 'email_verified_at'],
}


def _alter(to_type: str) -> None:
    # timestamp AT TIME ZONE 'UTC' reads a naive value as UTC (giving timestamptz); timestamptz AT TIME ZONE
    # 'UTC' gives the UTC wall time (timestamp): the same instant both ways
    for table, columns in COLUMNS.items():
        changes = ", ".join(f"ALTER COLUMN {c} TYPE {to_type} USING {c} AT TIME ZONE 'UTC'" for c in columns)
        op.execute(f"ALTER TABLE {table} {changes}")


def upgrade() -> None:
    if op.get_bind().dialect.name == 'postgresql':
        _alter('timestamp with time zone')


def downgrade() -> None:
    if op.get_bind().dialect.name == 'postgresql':
        _alter('timestamp without time zone')
