"""audit log: append-only enforcement and indexes

The audit table refuses UPDATE, DELETE (and, on PostgreSQL, TRUNCATE) by trigger. Privileges are the
first layer on PostgreSQL: `store.migrate.grant_app_role` gives the application role INSERT and SELECT
on it and nothing else.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-23 05:00:00
"""

from alembic import op


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None

INDEXES = [
    ('ix_audit_log_chain_at', ['chain', 'at', 'id']),
    ('ix_audit_log_chain_action_at', ['chain', 'action', 'at', 'id']),
    ('ix_audit_log_chain_actor_at', ['chain', 'actor_id', 'at', 'id']),
    ('ix_audit_log_chain_resource_at', ['chain', 'resource_type', 'resource_id', 'at', 'id']),
    ('ix_audit_log_chain_result_at', ['chain', 'result', 'at', 'id']),
    ('ix_audit_log_request_id', ['request_id']),
    ('ix_audit_log_at', ['at', 'id']),
]

PG_UP = [
    """CREATE OR REPLACE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION 'audit_log is append-only (%)', TG_OP USING ERRCODE = 'check_violation';
END
$$""",
    "CREATE TRIGGER audit_log_no_change BEFORE UPDATE OR DELETE ON audit_log "
    "FOR EACH ROW EXECUTE FUNCTION audit_log_append_only()",
    "CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log "
    "FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only()",
    "REVOKE ALL ON audit_log FROM PUBLIC",
]
PG_DOWN = [
    "DROP TRIGGER IF EXISTS audit_log_no_truncate ON audit_log",
    "DROP TRIGGER IF EXISTS audit_log_no_change ON audit_log",
    "DROP FUNCTION IF EXISTS audit_log_append_only()",
]
SQLITE_UP = [
    "CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log "
    "BEGIN SELECT RAISE(ABORT, 'audit_log is append-only (UPDATE)'); END",
    "CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log "
    "BEGIN SELECT RAISE(ABORT, 'audit_log is append-only (DELETE)'); END",
]
SQLITE_DOWN = [
    "DROP TRIGGER IF EXISTS audit_log_no_delete",
    "DROP TRIGGER IF EXISTS audit_log_no_update",
]


def upgrade() -> None:
    for name, columns in INDEXES:
        op.create_index(name, 'audit_log', columns, unique=False)
    statements = PG_UP if op.get_bind().dialect.name == 'postgresql' else SQLITE_UP
    for statement in statements:
        op.execute(statement)


def downgrade() -> None:
    statements = PG_DOWN if op.get_bind().dialect.name == 'postgresql' else SQLITE_DOWN
    for statement in statements:
        op.execute(statement)
    for name, _ in reversed(INDEXES):
        op.drop_index(name, table_name='audit_log')
