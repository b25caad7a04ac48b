"""retention: settings, the pruning job's lease, stored audit checkpoints and pruned chains' starts

- `retention_settings`: an organization's retention days per kind (JSON); the plan's defaults otherwise.
- `job_leases`: a job one process at a time runs (the pruning job), taken by one UPDATE.
- `audit_checkpoints`: signed checkpoints of the chains' heads, kept so the pruner can cut at one.
- `audit_chain_starts`: where a pruned chain now starts (the last deleted entry's sequence and hash).

The audit log stays append-only for everyone. The one sanctioned way to delete entries is the function
`audit_log_prune(chain, through_sequence, batch)` on PostgreSQL: SECURITY DEFINER (it runs with the
owner's rights, while the application role keeps INSERT and SELECT only on audit_log), it deletes only
entries at or before the chain's recorded start, and it marks its own transaction so the append-only
trigger lets those rows go. Any other DELETE is refused as before. On SQLite (one file, no roles) the
trigger lets a DELETE through only for entries at or before the chain's recorded start.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-07 12:30:00.000000
"""

import sqlalchemy as sa
import sqlmodel
from alembic import op


revision = '0015'
down_revision = '0014'
branch_labels = None
depends_on = None

_STARTED = "OLD.sequence <= COALESCE((SELECT s.sequence FROM audit_chain_starts s WHERE s.chain = OLD.chain), 0)"

PG_UP = [
    f"""CREATE OR REPLACE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'DELETE' AND current_setting('portcullis.audit_prune', true) = OLD.chain AND {_STARTED} THEN
    RETURN OLD;
  END IF;
  RAISE EXCEPTION 'audit_log is append-only (%)', TG_OP USING ERRCODE = 'check_violation';
END
$$""",
    """CREATE OR REPLACE FUNCTION audit_log_prune(p_chain text, p_through bigint, p_batch integer)
RETURNS integer LANGUAGE plpgsql SECURITY DEFINER SET search_path = public AS $$
DECLARE
  deleted integer;
BEGIN
  IF p_through > COALESCE((SELECT sequence FROM audit_chain_starts WHERE chain = p_chain), 0) THEN
    RAISE EXCEPTION 'audit_log_prune: % is past the start recorded for chain %', p_through, p_chain
      USING ERRCODE = 'check_violation';
  END IF;
  PERFORM set_config('portcullis.audit_prune', p_chain, true);
  DELETE FROM audit_log WHERE chain = p_chain AND sequence IN (
    SELECT sequence FROM audit_log WHERE chain = p_chain AND sequence <= p_through ORDER BY sequence LIMIT p_batch
  );
  GET DIAGNOSTICS deleted = ROW_COUNT;
  PERFORM set_config('portcullis.audit_prune', '', true);
  RETURN deleted;
END
$$""",
]
PG_DOWN = [
    "DROP FUNCTION IF EXISTS audit_log_prune(text, bigint, integer)",
    """CREATE OR REPLACE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION 'audit_log is append-only (%)', TG_OP USING ERRCODE = 'check_violation';
END
$$""",
]
SQLITE_UP = [
    "DROP TRIGGER IF EXISTS audit_log_no_delete",
    f"CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log WHEN NOT ({_STARTED}) "
    "BEGIN SELECT RAISE(ABORT, 'audit_log is append-only (DELETE)'); END",
]
SQLITE_DOWN = [
    "DROP TRIGGER IF EXISTS audit_log_no_delete",
    "CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log "
    "BEGIN SELECT RAISE(ABORT, 'audit_log is append-only (DELETE)'); END",
]


def upgrade() -> None:
    op.create_table('retention_settings',
    sa.Column('organization_id', sqlmodel.sql.sqltypes.AutoString(length=36), nullable=False),
    sa.Column('days', sa.JSON(), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['organization_id'], ['organizations.id'], ),
    sa.PrimaryKeyConstraint('organization_id')
    )
    op.create_table('job_leases',
    sa.Column('name', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
    sa.Column('holder', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('lease_until', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('name')
    )
    op.create_table('audit_checkpoints',
    sa.Column('id', sqlmodel.sql.sqltypes.AutoString(length=36), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('signature', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_audit_checkpoints_created_at', 'audit_checkpoints', ['created_at'], unique=False)
    op.create_table('audit_chain_starts',
    sa.Column('chain', sqlmodel.sql.sqltypes.AutoString(length=36), nullable=False),
    sa.Column('sequence', sa.Integer(), nullable=False),
    sa.Column('hash', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('checkpoint_id', sqlmodel.sql.sqltypes.AutoString(length=36), nullable=False),
    sa.Column('pruned_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['checkpoint_id'], ['audit_checkpoints.id'], ),
    sa.PrimaryKeyConstraint('chain')
    )
    statements = PG_UP if op.get_bind().dialect.name == 'postgresql' else SQLITE_UP
    for statement in statements:
        op.execute(statement)


def downgrade() -> None:
    statements = PG_DOWN if op.get_bind().dialect.name == 'postgresql' else SQLITE_DOWN
    for statement in statements:
        op.execute(statement)
    op.drop_table('audit_chain_starts')
    op.drop_index('ix_audit_checkpoints_created_at', table_name='audit_checkpoints')
    op.drop_table('audit_checkpoints')
    op.drop_table('job_leases')
    op.drop_table('retention_settings')
