"""report schedules and the periods they have run for

- `report_schedules`: a report kind generated daily, weekly or monthly for the period that just ended in
  the schedule's time zone, mailed to members; `next_run_at` (indexed) and a runner's `lease_until`.
- `report_schedule_runs`: one row per (schedule, period start), unique, so a period is generated once.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-07 11:30:00.000000
"""

import sqlalchemy as sa
import sqlmodel
from alembic import op


revision = '0014'
down_revision = '0013'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('report_schedules',
    sa.Column('id', sqlmodel.sql.sqltypes.AutoString(length=36), nullable=False),
    sa.Column('organization_id', sqlmodel.sql.sqltypes.AutoString(length=36), nullable=False),
    sa.Column('kind', sqlmodel.sql.sqltypes.AutoString(length=20), nullable=False),
    sa.Column('cadence', sqlmodel.sql.sqltypes.AutoString(length=10), nullable=False),
    sa.Column('time_zone', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('hour', sa.Integer(), nullable=False),
    sa.Column('recipients', sa.JSON(), nullable=False),
    sa.Column('created_by', sqlmodel.sql.sqltypes.AutoString(length=36), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('next_run_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('last_run_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('lease_until', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['created_by'], ['users.id'], ),
    sa.ForeignKeyConstraint(['organization_id'], ['organizations.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_report_schedules_organization_id', 'report_schedules', ['organization_id'], unique=False)
    op.create_index('ix_report_schedules_next_run_at', 'report_schedules', ['next_run_at'], unique=False)
    op.create_table('report_schedule_runs',
    sa.Column('id', sqlmodel.sql.sqltypes.AutoString(length=36), nullable=False),
    sa.Column('schedule_id', sqlmodel.sql.sqltypes.AutoString(length=36), nullable=False),
    sa.Column('organization_id', sqlmodel.sql.sqltypes.AutoString(length=36), nullable=False),
    sa.Column('period_start', sa.DateTime(timezone=True), nullable=False),
    sa.Column('period_end', sa.DateTime(timezone=True), nullable=False),
    sa.Column('report_id', sqlmodel.sql.sqltypes.AutoString(length=36), nullable=True),
    sa.Column('status', sqlmodel.sql.sqltypes.AutoString(length=10), nullable=False),
    sa.Column('detail', sqlmodel.sql.sqltypes.AutoString(length=500), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['organization_id'], ['organizations.id'], ),
    sa.ForeignKeyConstraint(['report_id'], ['reports.id'], ),
    sa.ForeignKeyConstraint(['schedule_id'], ['report_schedules.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('schedule_id', 'period_start', name='uq_report_schedule_runs_period')
    )
    op.create_index('ix_report_schedule_runs_organization_id', 'report_schedule_runs', ['organization_id'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_report_schedule_runs_organization_id', table_name='report_schedule_runs')
    op.drop_table('report_schedule_runs')
    op.drop_index('ix_report_schedules_next_run_at', table_name='report_schedules')
    op.drop_index('ix_report_schedules_organization_id', table_name='report_schedules')
    op.drop_table('report_schedules')
