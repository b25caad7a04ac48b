"""reports

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-23 05:00:00
"""

from alembic import op
import sqlalchemy as sa
import sqlmodel


revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('reports', schema=None) as batch_op:
        batch_op.add_column(sa.Column('csv_digest', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False,
                                      server_default=''))
    op.create_table('report_rows',
    sa.Column('report_id', sqlmodel.sql.sqltypes.AutoString(length=36), nullable=False),
    sa.Column('seq', sa.Integer(), nullable=False),
    sa.Column('organization_id', sqlmodel.sql.sqltypes.AutoString(length=36), nullable=False),
    sa.Column('line', sa.Text(), nullable=False),
    sa.ForeignKeyConstraint(['organization_id'], ['organizations.id'], ),
    sa.ForeignKeyConstraint(['report_id'], ['reports.id'], ),
    sa.PrimaryKeyConstraint('report_id', 'seq')
    )
    with op.batch_alter_table('report_rows', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_report_rows_organization_id'), ['organization_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('report_rows', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_report_rows_organization_id'))
    op.drop_table('report_rows')
    with op.batch_alter_table('reports', schema=None) as batch_op:
        batch_op.drop_column('csv_digest')
