"""Members of the caller's organization: listing, adding, inviting, changing roles, removing.

Nobody grants, takes away or changes a role holding a permission they do not hold (a manager cannot
make anyone an admin, nor demote or remove an admin), and an organization always keeps an owner.

A role change or a removal takes effect on the member's very next request, on every process: after the
commit, `user:<id>` is announced so cached sessions reload their permissions, and a removed member's
sessions in the organization are revoked outright.

Adding a member counts against the plan's MEMBERS quota (every membership, invited or not), checked
with `resolvers.quotas.check_quota` so that concurrent additions at the limit admit exactly the limit.

Invitations: adding an email nobody uses yet creates the user without a password and returns a one-time
token (256 bits, only its sha256 stored, valid 7 days) that `acceptInvitation` spends to set the password
and sign in. An unknown, spent or expired token all answer the same UNAUTHENTICATED error.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, update
from sqlalchemy import select as sa_select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from authz import AuthMethod, BuiltinRole, Principal
from authz.errors import BadUserInput, Conflict, Forbidden, NotFound, Unauthenticated
from authz.plans import QuotaResource
from identity.lockout import email_key
from identity.passwords import MAX_BYTES, PasswordPolicyError, check_policy
from identity.sessions import (
    active_session_ids,
    create_session,
    load_custom_roles,
    revoke_sessions,
    user_key,
)
from identity.tokens import hash_opaque_token
from resolvers.auth import AuthResult, refuse_api_keys
from resolvers.deps import RequestContext
from resolvers.provisioning import checked_email
from resolvers.quotas import check_quota
from resolvers.roles import announce_after_commit, check_can_grant, require_role, tenant_of
from store.audit import AuditAction, changes
from store.cursors import CursorError, decode_position, encode_position
from store.models import Invitation, Membership, Organization, User
from store.scoping import tenant_filter, tenant_select

MEMBERSHIP_NOT_FOUND = "Membership not found."
INVALID_INVITATION = "Invalid or expired invitation."
INVITATION_PREFIX = "pti_"
INVITATION_TTL = timedelta(days=7)
MAX_INVITATION_TOKEN_LENGTH = 128
MAX_PAGE_SIZE = 100
CURSOR_VERSION = "m1"


@dataclass(frozen=True, slots=True)
class Member:
    membership: Membership
    user: User


@dataclass(frozen=True, slots=True)
class MemberEdge:
    cursor: str
    member: Member


@dataclass(frozen=True, slots=True)
class MemberPage:
    edges: list[MemberEdge]
    has_next_page: bool
    end_cursor: str | None


@dataclass(frozen=True, slots=True)
class AddedMember:
    member: Member
    invitation_token: str | None


# -- listing ------------------------------------------------------------------------------------------


def encode_cursor(m: Membership) -> str:
    return encode_position(CURSOR_VERSION, m.created_at, m.id)


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """The (created_at, id) position after which the next page starts; BAD_USER_INPUT if not ours."""
    try:
        return decode_position(cursor, CURSOR_VERSION)
    except CursorError:
        raise BadUserInput("after is not a valid cursor", field="after") from None


def check_page_size(first: int) -> int:
    if not 1 <= first <= MAX_PAGE_SIZE:
        raise BadUserInput(f"first must be between 1 and {MAX_PAGE_SIZE}", field="first")
    return first


async def list_members(
    db: AsyncSession, principal: Principal, organization_id: str, first: int = 50, after: str | None = None
) -> MemberPage:
    """One page of the caller's organization's members, oldest first (keyset on created_at, id).

    Members are listed for the caller's own organization only: a permission held here says nothing
    about an organization below it, where the caller is not a member.
    """
    org_id = tenant_of(principal)
    if organization_id != org_id:
        raise Forbidden("You are not allowed to access this field.", requiredScopes=[["members:read"]])
    size = check_page_size(first)
    stmt = (
        sa_select(Membership, User)
        .join(User, col(User.id) == col(Membership.user_id))
        .where(tenant_filter(Membership, org_id))
    )
    if after is not None:
        at, ident = decode_cursor(after)
        stmt = stmt.where(
            (col(Membership.created_at) > at) | ((col(Membership.created_at) == at) & (col(Membership.id) > ident))
        )
    stmt = stmt.order_by(col(Membership.created_at), col(Membership.id)).limit(size + 1)
    rows = (await db.execute(stmt)).all()
    edges = [MemberEdge(encode_cursor(m), Member(m, u)) for m, u in rows[:size]]
    return MemberPage(edges, len(rows) > size, edges[-1].cursor if edges else None)


# -- adding and inviting ------------------------------------------------------------------------------


def _check_role_shape(role: str) -> None:
    if not role or len(role) > 63 or "\x00" in role:
        raise BadUserInput("Unknown role.", field="role")


def new_invitation_token() -> str:
    return INVITATION_PREFIX + secrets.token_urlsafe(32)


async def add_member(ctx: RequestContext, email: str, role: str) -> AddedMember:
    principal = ctx.principal
    org_id = tenant_of(principal)
    email = checked_email(email)
    _check_role_shape(role)
    db = await ctx.db()
    custom = await require_role(db, org_id, role)
    check_can_grant(principal.effective_permissions, [role], custom,
                    "You cannot grant a role with permissions you do not hold.")
    now = ctx.services.now()
    user = (await db.execute(sa_select(User).where(col(User.email_key) == email_key(email)))).scalar_one_or_none()
    token: str | None = None
    created = user is None
    if user is not None:
        existing = await db.execute(tenant_select(Membership, org_id).where(col(Membership.user_id) == user.id))
        if existing.scalar_one_or_none() is not None:
            raise Conflict("This user is already a member.")
    else:
        user = User(email=email, email_key=email_key(email), password_hash=None, created_at=now)
    await check_quota(db, org_id, QuotaResource.MEMBERS)
    membership = Membership(organization_id=org_id, user_id=user.id, role=role, created_at=now)
    try:
        if created:
            db.add(user)
            await db.flush()
        db.add(membership)
        await db.flush()
    except IntegrityError:
        # a concurrent request added the same user or member first
        raise Conflict("This user is already a member.") from None
    if created:
        token = new_invitation_token()
        db.add(Invitation(
            organization_id=org_id, user_id=user.id, membership_id=membership.id,
            token_hash=hash_opaque_token(token), created_at=now, expires_at=now + INVITATION_TTL,
        ))
        await db.flush()
    if created:
        ctx.audit(AuditAction.USER_CREATED, resource_type="user", resource_id=user.id, details={"invited": True})
    ctx.audit(AuditAction.MEMBER_ADDED, resource_type="membership", resource_id=membership.id,
              details={"userId": user.id, "role": role, "newUser": created})
    return AddedMember(Member(membership, user), token)


async def accept_invitation(ctx: RequestContext, token: str, password: str) -> AuthResult:
    """Spend an invitation: set the new user's password and sign them in to the inviting organization.

    Public, so not tenant-scoped: the token itself is the credential, like a refresh token.
    """
    refuse_api_keys(ctx.principal)
    if not token or len(token) > MAX_INVITATION_TOKEN_LENGTH or "\x00" in token:
        raise Unauthenticated(INVALID_INVITATION)
    services = ctx.services
    now = services.now()
    db = await ctx.db()
    # tenant-scope: no tenant before sign-in; the token picks the invitation, whose organization it is
    row = (
        await db.execute(
            sa_select(Invitation, User)
            .join(User, col(User.id) == col(Invitation.user_id))
            .join(
                Membership,
                (col(Membership.id) == col(Invitation.membership_id))
                & (col(Membership.organization_id) == col(Invitation.organization_id))
                & (col(Membership.user_id) == col(Invitation.user_id)),
            )
            .where(col(Invitation.token_hash) == hash_opaque_token(token))
        )
    ).first()
    if row is None:
        raise Unauthenticated(INVALID_INVITATION)
    invitation, user = row
    # a user who already has a password signs in with it: an invitation is not a password reset
    if invitation.used_at is not None or invitation.expires_at <= now or not user.is_active \
            or user.password_hash is not None:
        raise Unauthenticated(INVALID_INVITATION)
    if len(password.encode("utf-8", "surrogatepass")) > MAX_BYTES:
        raise BadUserInput("password is too long", field="password")
    try:
        check_policy(password, email=user.email)
    except PasswordPolicyError as exc:
        raise BadUserInput(str(exc), field="password") from None
    spent = await db.execute(
        update(Invitation)
        .where(col(Invitation.id) == invitation.id, col(Invitation.used_at).is_(None))
        .values(used_at=now)
    )
    if (getattr(spent, "rowcount", 0) or 0) != 1:
        raise Unauthenticated(INVALID_INVITATION)
    user.password_hash = await services.hasher.hash(password)
    user.password_changed_at = now
    user.last_login_at = now
    db.add(user)
    org = await db.get(Organization, invitation.organization_id)
    if org is None:
        raise Unauthenticated(INVALID_INVITATION)
    issued = await create_session(
        db, user_id=user.id, organization_id=org.id, auth_method=AuthMethod.PASSWORD.value,
        client_ip=ctx.principal.client_ip, user_agent=ctx.user_agent, policy=services.session_policy, now=now,
    )
    access, claims = services.tokens.issue(subject=user.id, organization_id=org.id, session_id=issued.session.id)
    ctx.audit(AuditAction.AUTHN_INVITATION_ACCEPTED, organization_id=org.id, actor_id=user.id,
              resource_type="session", resource_id=issued.session.id,
              details={"membershipId": invitation.membership_id})
    return AuthResult(access, claims, issued.refresh_token, user, org)


# -- changing and removing ----------------------------------------------------------------------------


async def _member(db: AsyncSession, organization_id: str, membership_id: str) -> Member:
    """A membership of the caller's organization; another tenant's id answers like a random one."""
    if not membership_id or len(membership_id) > 36 or "\x00" in membership_id:
        raise NotFound(MEMBERSHIP_NOT_FOUND)
    row = (
        await db.execute(
            sa_select(Membership, User)
            .join(User, col(User.id) == col(Membership.user_id))
            .where(tenant_filter(Membership, organization_id), col(Membership.id) == membership_id)
        )
    ).first()
    if row is None:
        raise NotFound(MEMBERSHIP_NOT_FOUND)
    return Member(row[0], row[1])


async def _keep_an_owner(db: AsyncSession, organization_id: str) -> None:
    """CONFLICT when the one owner left would stop being one. The owners' rows stay locked (PostgreSQL)
    until the commit, so two concurrent demotions cannot both pass."""
    owners = (
        await db.execute(
            sa_select(col(Membership.id))
            .where(tenant_filter(Membership, organization_id), col(Membership.role) == BuiltinRole.OWNER.value)
            .with_for_update()
        )
    ).all()
    if len(owners) <= 1:
        raise Conflict("An organization must keep at least one owner.")


async def update_member_role(ctx: RequestContext, membership_id: str, role: str) -> Member:
    principal = ctx.principal
    org_id = tenant_of(principal)
    db = await ctx.db()
    member = await _member(db, org_id, membership_id)
    _check_role_shape(role)
    custom = await require_role(db, org_id, role)
    membership = member.membership
    check_can_grant(principal.effective_permissions, [membership.role, role], custom,
                    "You cannot change a member's role from or to a role with permissions you do not hold.")
    if membership.role == role:
        return member
    if membership.role == BuiltinRole.OWNER.value:
        await _keep_an_owner(db, org_id)
    ctx.audit(AuditAction.AUTHZ_CHANGE, resource_type="membership", resource_id=membership.id,
              details={"userId": membership.user_id, "changes": changes({"role": membership.role}, {"role": role})})
    membership.role = role
    db.add(membership)
    await db.flush()
    announce_after_commit(ctx, [user_key(membership.user_id)])
    return member


async def remove_member(ctx: RequestContext, membership_id: str) -> bool:
    principal = ctx.principal
    org_id = tenant_of(principal)
    db = await ctx.db()
    member = await _member(db, org_id, membership_id)
    membership = member.membership
    custom = await load_custom_roles(db, org_id)
    check_can_grant(principal.effective_permissions, [membership.role], custom,
                    "You cannot remove a member whose role holds permissions you do not hold.")
    if membership.role == BuiltinRole.OWNER.value:
        await _keep_an_owner(db, org_id)
    await db.execute(
        delete(Invitation).where(tenant_filter(Invitation, org_id), col(Invitation.membership_id) == membership.id)
    )
    await db.delete(membership)
    await db.flush()
    ended = await active_session_ids(db, membership.user_id, organization_id=org_id)
    await revoke_sessions(db, ended, reason="membership_removed", now=ctx.services.now())
    announce_after_commit(ctx, [*ended, user_key(membership.user_id)])
    ctx.audit(AuditAction.MEMBER_REMOVED, resource_type="membership", resource_id=membership.id,
              details={"userId": membership.user_id, "role": membership.role})
    return True
