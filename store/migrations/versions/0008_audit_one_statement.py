"""audit log: the chain head advances by trigger, so an entry is appended in one statement

`store.audit.append` inserts an entry with `INSERT INTO audit_log ... SELECT ... FROM audit_chain_heads`
(the head row gives the sequence and the previous hash; the hash is computed in the statement). This
trigger then moves the head row to the new entry within the same statement: no separate UPDATE.
The application role needs nothing new (it already updates audit_chain_heads; the trigger runs with its
rights), and audit_log keeps its INSERT/SELECT-only grant and its append-only triggers.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-23 06:40:00
"""

from alembic import op


revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None

PG_UP = [
    """CREATE OR REPLACE FUNCTION audit_log_advance_head() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  UPDATE audit_chain_heads SET sequence = NEW.sequence, hash = NEW.hash, updated_at = NEW.at
   WHERE chain = NEW.chain;
  RETURN NULL;
END
$$""",
    "CREATE TRIGGER audit_log_advance_head AFTER INSERT ON audit_log "
    "FOR EACH ROW EXECUTE FUNCTION audit_log_advance_head()",
]
PG_DOWN = [
    "DROP TRIGGER IF EXISTS audit_log_advance_head ON audit_log",
    "DROP FUNCTION IF EXISTS audit_log_advance_head()",
]
SQLITE_UP = [
    "CREATE TRIGGER audit_log_advance_head AFTER INSERT ON audit_log BEGIN "
    "UPDATE audit_chain_heads SET sequence = NEW.sequence, hash = NEW.hash, updated_at = NEW.at "
    "WHERE chain = NEW.chain; END",
]
SQLITE_DOWN = [
    "DROP TRIGGER IF EXISTS audit_log_advance_head",
]


def upgrade() -> None:
    statements = PG_UP if op.get_bind().dialect.name == 'postgresql' else SQLITE_UP
    for statement in statements:
        op.execute(statement)


def downgrade() -> None:
    statements = PG_DOWN if op.get_bind().dialect.name == 'postgresql' else SQLITE_DOWN
    for statement in statements:
        op.execute(statement)
