"""data-subject rights: per-person sealing keys of audit entries, and data exports

- `subject_keys`: one AES-256-GCM key per person (`user:<id>` or `email:<sha256>`) under which the personal
  fields of audit entries written from now on are sealed (store/audit/sealing.py); erasure deletes it.
- `data_exports`: a person's export (`exportMyData`), encrypted at rest, downloadable until it expires.

Entries written before this revision keep their personal fields in plaintext: the chain hashes them, and
rewriting them would break every chain and every signed checkpoint. docs/audit.md ("Erasure and the chain")
says what erasure does and does not reach for them.

Revision ID: 0017
Revises: 0015
Create Date: 2026-12-07 14:30:00.000000
"""

import sqlalchemy as sa
import sqlmodel
from alembic import op


revision = '0017'
down_revision = '0016'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('subject_keys',
    sa.Column('id', sqlmodel.sql.sqltypes.AutoString(length=36), nullable=False),
    sa.Column('subject', sqlmodel.sql.sqltypes.AutoString(length=80), nullable=False),
    sa.Column('key', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('erased_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('subject')
    )
    op.create_table('data_exports',
    sa.Column('id', sqlmodel.sql.sqltypes.AutoString(length=36), nullable=False),
    sa.Column('user_id', sqlmodel.sql.sqltypes.AutoString(length=36), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('digest', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('content_encrypted', sa.Text(), nullable=False),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_data_exports_user_id', 'data_exports', ['user_id'], unique=False)
    op.create_index('ix_data_exports_created_at', 'data_exports', ['created_at'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_data_exports_created_at', table_name='data_exports')
    op.drop_index('ix_data_exports_user_id', table_name='data_exports')
    op.drop_table('data_exports')
    op.drop_table('subject_keys')
