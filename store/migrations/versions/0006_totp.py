"""TOTP second factor

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-23 05:00:00
"""

from alembic import op
import sqlalchemy as sa
import sqlmodel


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('users', sa.Column('totp_secret_encrypted', sa.Text(), nullable=True))
    op.add_column('users', sa.Column('totp_pending_secret_encrypted', sa.Text(), nullable=True))
    op.add_column('users', sa.Column('totp_last_used_step', sa.Integer(), nullable=True))
    op.create_table('mfa_recovery_codes',
    sa.Column('id', sqlmodel.sql.sqltypes.AutoString(length=36), nullable=False),
    sa.Column('user_id', sqlmodel.sql.sqltypes.AutoString(length=36), nullable=False),
    sa.Column('code_hash', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('used_at', sa.DateTime(), nullable=True),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('user_id', 'code_hash', name='uq_mfa_recovery_codes_user_hash')
    )
    op.create_index(op.f('ix_mfa_recovery_codes_user_id'), 'mfa_recovery_codes', ['user_id'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_mfa_recovery_codes_user_id'), table_name='mfa_recovery_codes')
    op.drop_table('mfa_recovery_codes')
    with op.batch_alter_table('users') as batch:
        batch.drop_column('totp_last_used_step')
        batch.drop_column('totp_pending_secret_encrypted')
        batch.drop_column('totp_secret_encrypted')
