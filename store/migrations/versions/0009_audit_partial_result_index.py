"""audit log: the index on results holds only the entries that did not succeed

An entry is written into every index of audit_log; most entries succeed, and a filter on
`result = 'success'` finds its first page in the chain's own index (chain, at, id) at once. The index on
(chain, result, at, id) now holds only the `denied` and `error` entries (`WHERE result <> 'success'`),
the rare ones a filter on them must not scan the chain for. Queries filtering on them repeat the
predicate (`resolvers.audit.list_entries`), which SQLite needs to use a partial index.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-05 08:00:00
"""

import sqlalchemy as sa
from alembic import op


revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None

UNSUCCESSFUL = "result <> 'success'"
COLUMNS = ['chain', 'result', 'at', 'id']


def upgrade() -> None:
    op.create_index('ix_audit_log_chain_unsuccessful_at', 'audit_log', COLUMNS, unique=False,
                    sqlite_where=sa.text(UNSUCCESSFUL), postgresql_where=sa.text(UNSUCCESSFUL))
    op.drop_index('ix_audit_log_chain_result_at', table_name='audit_log')


def downgrade() -> None:
    op.create_index('ix_audit_log_chain_result_at', 'audit_log', COLUMNS, unique=False)
    op.drop_index('ix_audit_log_chain_unsuccessful_at', table_name='audit_log')
