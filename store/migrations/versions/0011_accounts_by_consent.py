"""accounts across organizations: invitations by consent, emailed tokens, claimed domains, the mail outbox

- `invitations` no longer points at a user and a membership made in advance: an invitation is an offer
  to an address (email, role), and the membership (and the account, for a new address) is made when the
  holder of the address accepts. Pending invitations of the old shape are carried over with a token
  nobody holds (the organization re-sends them: the new token goes by email); the accounts and
  memberships made in advance for them (no password, no identity provider, no other membership) are
  deleted. Accepted ones are kept, accepted.
- `users.email_verified_at`; `account_tokens` (password resets, email verification and changes, links to
  an identity provider); `email_domains` (an organization's claimed domains); `mail_outbox`.
- `login_throttle.organization_id`: the organization a pair's sign-ins aimed at. The pair keys change shape,
  so the counters start afresh.
- `api_keys.held_by`: the member a key acts for (its creator until someone else rotates it).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06 23:00:00
"""

import hashlib
import secrets

import sqlalchemy as sa
import sqlmodel
from alembic import op


revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None

S = sqlmodel.sql.sqltypes.AutoString


def _invitations_table(name: str) -> None:
    op.create_table(name,
    sa.Column('id', S(length=36), nullable=False),
    sa.Column('organization_id', S(length=36), nullable=False),
    sa.Column('email', S(length=320), nullable=False),
    sa.Column('email_key', S(length=320), nullable=False),
    sa.Column('role', S(length=63), nullable=False),
    sa.Column('invited_by', S(length=36), nullable=True),
    sa.Column('token_hash', S(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('expires_at', sa.DateTime(), nullable=False),
    sa.Column('sent_at', sa.DateTime(), nullable=True),
    sa.Column('send_count', sa.Integer(), nullable=False),
    sa.Column('accepted_at', sa.DateTime(), nullable=True),
    sa.Column('accepted_by', S(length=36), nullable=True),
    sa.Column('revoked_at', sa.DateTime(), nullable=True),
    sa.ForeignKeyConstraint(['organization_id'], ['organizations.id'], ),
    sa.ForeignKeyConstraint(['invited_by'], ['users.id'], ),
    sa.ForeignKeyConstraint(['accepted_by'], ['users.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('token_hash'),
    )


def upgrade() -> None:
    bind = op.get_bind()

    # -- invitations ---------------------------------------------------------------------------------
    _invitations_table('invitations_new')
    old = bind.execute(sa.text(
        "SELECT i.id, i.organization_id, i.user_id, i.membership_id, i.token_hash, i.created_at, i.expires_at,"
        " i.used_at, u.email, m.role FROM invitations i JOIN users u ON u.id = i.user_id"
        " LEFT JOIN memberships m ON m.id = i.membership_id"
    )).all()
    placeholders: list[tuple[str, str]] = []
    for (ident, org_id, user_id, membership_id, token_hash, created_at, expires_at, used_at, email,
         role) in old:
        accepted = used_at is not None
        bind.execute(sa.text(
            "INSERT INTO invitations_new (id, organization_id, email, email_key, role, invited_by, token_hash,"
            " created_at, expires_at, sent_at, send_count, accepted_at, accepted_by, revoked_at) VALUES"
            " (:id, :org, :email, :key, :role, NULL, :hash, :created, :expires, NULL, 0, :accepted, :by, NULL)"
        ), {
            "id": ident, "org": org_id, "email": email, "key": email.strip().casefold(), "role": role or "viewer",
            # a pending invitation's old token went to the inviting organization: no one holds the new one
            "hash": token_hash if accepted else hashlib.sha256(secrets.token_bytes(32)).hexdigest(),
            "created": created_at, "expires": expires_at, "accepted": used_at if accepted else None,
            "by": user_id if accepted else None,
        })
        if not accepted and membership_id is not None:
            placeholders.append((user_id, membership_id))
    op.drop_table('invitations')
    op.rename_table('invitations_new', 'invitations')
    with op.batch_alter_table('invitations', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_invitations_organization_id'), ['organization_id'], unique=False)
        batch_op.create_index('ix_invitations_organization_email', ['organization_id', 'email_key'], unique=False)
    for user_id, membership_id in placeholders:
        unused = bind.execute(sa.text(
            "SELECT 1 FROM users u WHERE u.id = :u AND u.password_hash IS NULL"
            " AND NOT EXISTS (SELECT 1 FROM sso_identities s WHERE s.user_id = u.id)"
            " AND NOT EXISTS (SELECT 1 FROM auth_sessions a WHERE a.user_id = u.id)"
        ), {"u": user_id}).first()
        if unused is None:
            continue
        bind.execute(sa.text("DELETE FROM memberships WHERE id = :m"), {"m": membership_id})
        bind.execute(sa.text(
            "DELETE FROM users WHERE id = :u AND NOT EXISTS (SELECT 1 FROM memberships m WHERE m.user_id = :u)"
            " AND NOT EXISTS (SELECT 1 FROM api_keys k WHERE k.created_by = :u)"
            " AND NOT EXISTS (SELECT 1 FROM invitations i WHERE i.accepted_by = :u)"
        ), {"u": user_id})

    # -- users, tokens, domains, outbox --------------------------------------------------------------
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.add_column(sa.Column('email_verified_at', sa.DateTime(), nullable=True))
    # an identity provider vouched for these addresses when it linked them
    bind.execute(sa.text(
        "UPDATE users SET email_verified_at = created_at"
        " WHERE EXISTS (SELECT 1 FROM sso_identities s WHERE s.user_id = users.id)"
    ))

    op.create_table('account_tokens',
    sa.Column('id', S(length=36), nullable=False),
    sa.Column('purpose', S(length=20), nullable=False),
    sa.Column('user_id', S(length=36), nullable=True),
    sa.Column('email_key', S(length=320), nullable=False),
    sa.Column('email', S(length=320), nullable=False),
    sa.Column('organization_id', S(length=36), nullable=True),
    sa.Column('token_hash', S(length=64), nullable=False),
    sa.Column('client_ip', S(length=45), nullable=True),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('expires_at', sa.DateTime(), nullable=False),
    sa.Column('used_at', sa.DateTime(), nullable=True),
    sa.ForeignKeyConstraint(['organization_id'], ['organizations.id'], ),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('token_hash'),
    )
    with op.batch_alter_table('account_tokens', schema=None) as batch_op:
        batch_op.create_index('ix_account_tokens_user_purpose', ['user_id', 'purpose', 'created_at'], unique=False)
        batch_op.create_index('ix_account_tokens_email_purpose', ['email_key', 'purpose', 'created_at'],
                              unique=False)
        batch_op.create_index('ix_account_tokens_ip_purpose', ['client_ip', 'purpose', 'created_at'], unique=False)

    op.create_table('email_domains',
    sa.Column('domain', S(length=253), nullable=False),
    sa.Column('organization_id', S(length=36), nullable=False),
    sa.Column('claimed_by', S(length=36), nullable=True),
    sa.Column('claimed_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['claimed_by'], ['users.id'], ),
    sa.ForeignKeyConstraint(['organization_id'], ['organizations.id'], ),
    sa.PrimaryKeyConstraint('domain'),
    )
    with op.batch_alter_table('email_domains', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_email_domains_organization_id'), ['organization_id'], unique=False)

    op.create_table('mail_outbox',
    sa.Column('id', S(length=36), nullable=False),
    sa.Column('organization_id', S(length=36), nullable=True),
    sa.Column('recipient', S(length=320), nullable=False),
    sa.Column('template', S(length=40), nullable=False),
    sa.Column('content_encrypted', sa.Text(), nullable=False),
    sa.Column('message_id', S(length=255), nullable=False),
    sa.Column('status', S(length=10), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('next_attempt_at', sa.DateTime(), nullable=False),
    sa.Column('lease_until', sa.DateTime(), nullable=True),
    sa.Column('sent_at', sa.DateTime(), nullable=True),
    sa.Column('last_error', S(length=500), nullable=True),
    sa.ForeignKeyConstraint(['organization_id'], ['organizations.id'], ),
    sa.PrimaryKeyConstraint('id'),
    )
    with op.batch_alter_table('mail_outbox', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_mail_outbox_organization_id'), ['organization_id'], unique=False)
        batch_op.create_index('ix_mail_outbox_status_next', ['status', 'next_attempt_at'], unique=False)

    # -- login counters, API keys ---------------------------------------------------------------------
    bind.execute(sa.text("DELETE FROM login_throttle"))
    with op.batch_alter_table('login_throttle', schema=None) as batch_op:
        batch_op.add_column(sa.Column('organization_id', S(length=36), nullable=True))

    with op.batch_alter_table('api_keys', schema=None) as batch_op:
        batch_op.add_column(sa.Column('held_by', S(length=36), nullable=True))
    bind.execute(sa.text("UPDATE api_keys SET held_by = created_by"))
    with op.batch_alter_table('api_keys', schema=None) as batch_op:
        batch_op.alter_column('held_by', existing_type=S(length=36), nullable=False)
        batch_op.create_foreign_key('fk_api_keys_held_by_users', 'users', ['held_by'], ['id'])
        batch_op.create_index(batch_op.f('ix_api_keys_held_by'), ['held_by'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('api_keys', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_api_keys_held_by'))
        batch_op.drop_constraint('fk_api_keys_held_by_users', type_='foreignkey')
        batch_op.drop_column('held_by')
    op.get_bind().execute(sa.text("DELETE FROM login_throttle"))
    with op.batch_alter_table('login_throttle', schema=None) as batch_op:
        batch_op.drop_column('organization_id')
    op.drop_index('ix_mail_outbox_status_next', table_name='mail_outbox')
    op.drop_index(op.f('ix_mail_outbox_organization_id'), table_name='mail_outbox')
    op.drop_table('mail_outbox')
    op.drop_index(op.f('ix_email_domains_organization_id'), table_name='email_domains')
    op.drop_table('email_domains')
    op.drop_index('ix_account_tokens_ip_purpose', table_name='account_tokens')
    op.drop_index('ix_account_tokens_email_purpose', table_name='account_tokens')
    op.drop_index('ix_account_tokens_user_purpose', table_name='account_tokens')
    op.drop_table('account_tokens')
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.drop_column('email_verified_at')
    # invitations of the new shape cannot point back at memberships that were never made: the pending
    # ones are dropped, the accepted ones kept where their membership still exists
    bind = op.get_bind()
    rows = bind.execute(sa.text(
        "SELECT i.id, i.organization_id, i.accepted_by, m.id, i.token_hash, i.created_at, i.expires_at,"
        " i.accepted_at FROM invitations i JOIN memberships m ON m.organization_id = i.organization_id"
        " AND m.user_id = i.accepted_by WHERE i.accepted_at IS NOT NULL"
    )).all()
    op.drop_table('invitations')
    op.create_table('invitations',
    sa.Column('id', S(length=36), nullable=False),
    sa.Column('organization_id', S(length=36), nullable=False),
    sa.Column('user_id', S(length=36), nullable=False),
    sa.Column('membership_id', S(length=36), nullable=False),
    sa.Column('token_hash', S(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('expires_at', sa.DateTime(), nullable=False),
    sa.Column('used_at', sa.DateTime(), nullable=True),
    sa.ForeignKeyConstraint(['membership_id'], ['memberships.id'], ),
    sa.ForeignKeyConstraint(['organization_id'], ['organizations.id'], ),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('token_hash'),
    )
    with op.batch_alter_table('invitations', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_invitations_membership_id'), ['membership_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_invitations_organization_id'), ['organization_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_invitations_user_id'), ['user_id'], unique=False)
    for ident, org_id, user_id, membership_id, token_hash, created_at, expires_at, used_at in rows:
        bind.execute(sa.text(
            "INSERT INTO invitations (id, organization_id, user_id, membership_id, token_hash, created_at,"
            " expires_at, used_at) VALUES (:id, :org, :u, :m, :h, :c, :e, :used)"
        ), {"id": ident, "org": org_id, "u": user_id, "m": membership_id, "h": token_hash, "c": created_at,
            "e": expires_at, "used": used_at})
