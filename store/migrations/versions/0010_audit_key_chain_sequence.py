"""audit log: an entry's key is its place in its chain, (chain, sequence)

The table kept two unique indexes up on every append: the primary key on `id` and the unique
(chain, sequence). (chain, sequence) becomes the primary key, and still refuses a second entry at a
sequence (a fork); `id` stays, a UUIDv7 the writer makes, without an index of its own (nothing looks an
entry up by it; pages order by (at, id) through the filter indexes).

PostgreSQL swaps the constraints in place. SQLite cannot change a table's primary key: the table is
rebuilt (its rows copied in order, its indexes and triggers created again as migrations 0005, 0008 and
0009 left them).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-05 08:30:00
"""

import sqlalchemy as sa
import sqlmodel
from alembic import op


revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None

COLUMNS = ['id', 'chain', 'sequence', 'organization_id', 'at', 'actor_type', 'actor_id', 'action',
           'resource_type', 'resource_id', 'result', 'request_id', 'ip', 'user_agent', 'details',
           'previous_hash', 'hash']
INDEXES = [
    "CREATE INDEX ix_audit_log_chain_at ON audit_log (chain, at, id)",
    "CREATE INDEX ix_audit_log_chain_action_at ON audit_log (chain, action, at, id)",
    "CREATE INDEX ix_audit_log_chain_actor_at ON audit_log (chain, actor_id, at, id)",
    "CREATE INDEX ix_audit_log_chain_resource_at ON audit_log (chain, resource_type, resource_id, at, id)",
    "CREATE INDEX ix_audit_log_chain_unsuccessful_at ON audit_log (chain, result, at, id) "
    "WHERE result <> 'success'",
    "CREATE INDEX ix_audit_log_request_id ON audit_log (request_id)",
    "CREATE INDEX ix_audit_log_at ON audit_log (at, id)",
]
SQLITE_TRIGGERS = [
    "CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log "
    "BEGIN SELECT RAISE(ABORT, 'audit_log is append-only (UPDATE)'); END",
    "CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log "
    "BEGIN SELECT RAISE(ABORT, 'audit_log is append-only (DELETE)'); END",
    "CREATE TRIGGER audit_log_advance_head AFTER INSERT ON audit_log BEGIN "
    "UPDATE audit_chain_heads SET sequence = NEW.sequence, hash = NEW.hash, updated_at = NEW.at "
    "WHERE chain = NEW.chain; END",
]


def _sqlite_rebuild(key: sa.PrimaryKeyConstraint, unique: sa.UniqueConstraint | None) -> None:
    """audit_log again under another key: new table, rows copied in chain order, old table dropped (its
    triggers go with it without firing), indexes and triggers created on the new one."""
    constraints: list[sa.Constraint] = [key] + ([unique] if unique is not None else [])
    op.create_table(
        'audit_log_rebuilt',
        sa.Column('id', sqlmodel.sql.sqltypes.AutoString(length=36), nullable=False),
        sa.Column('chain', sqlmodel.sql.sqltypes.AutoString(length=36), nullable=False),
        sa.Column('sequence', sa.Integer(), nullable=False, autoincrement=False),
        sa.Column('organization_id', sqlmodel.sql.sqltypes.AutoString(length=36), nullable=True),
        sa.Column('at', sa.DateTime(), nullable=False),
        sa.Column('actor_type', sqlmodel.sql.sqltypes.AutoString(length=20), nullable=False),
        sa.Column('actor_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
        sa.Column('action', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column('resource_type', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=True),
        sa.Column('resource_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
        sa.Column('result', sqlmodel.sql.sqltypes.AutoString(length=10), nullable=False),
        sa.Column('request_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column('ip', sqlmodel.sql.sqltypes.AutoString(length=45), nullable=True),
        sa.Column('user_agent', sqlmodel.sql.sqltypes.AutoString(length=256), nullable=True),
        sa.Column('details', sa.JSON(), nullable=False),
        sa.Column('previous_hash', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column('hash', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        *constraints,
    )
    names = ", ".join(COLUMNS)
    op.execute(f"INSERT INTO audit_log_rebuilt ({names}) SELECT {names} FROM audit_log ORDER BY chain, sequence")
    op.execute("DROP TABLE audit_log")
    op.execute("ALTER TABLE audit_log_rebuilt RENAME TO audit_log")
    for statement in INDEXES + SQLITE_TRIGGERS:
        op.execute(statement)


def upgrade() -> None:
    if op.get_bind().dialect.name == 'postgresql':
        op.execute("ALTER TABLE audit_log DROP CONSTRAINT audit_log_pkey, "
                   "DROP CONSTRAINT uq_audit_log_chain_sequence, "
                   "ADD CONSTRAINT audit_log_pkey PRIMARY KEY (chain, sequence)")
        return
    _sqlite_rebuild(sa.PrimaryKeyConstraint('chain', 'sequence'), None)


def downgrade() -> None:
    if op.get_bind().dialect.name == 'postgresql':
        op.execute("ALTER TABLE audit_log DROP CONSTRAINT audit_log_pkey, "
                   "ADD CONSTRAINT audit_log_pkey PRIMARY KEY (id), "
                   "ADD CONSTRAINT uq_audit_log_chain_sequence UNIQUE (chain, sequence)")
        return
    _sqlite_rebuild(sa.PrimaryKeyConstraint('id'),
                    sa.UniqueConstraint('chain', 'sequence', name='uq_audit_log_chain_sequence'))
