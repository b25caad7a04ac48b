"""Members of the caller's organization: listing, changing roles, removing (joining is by invitation,
resolvers/invitations.py).

Nobody grants, takes away or changes a role holding a permission they do not hold (a manager cannot
make anyone an admin, nor demote or remove an admin), and an organization always keeps an owner.

A role change or a removal takes effect on the member's very next request, on every process: after the
commit, `user:<id>` is announced so cached sessions reload their permissions, and a removed member's
sessions in the organization are revoked outright.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete
from sqlalchemy import select as sa_select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from authz import BuiltinRole
from authz.errors import BadUserInput, Conflict, Forbidden, NotFound
from identity.sessions import active_session_ids, load_custom_roles, revoke_sessions, user_key
from resolvers import security_events
from resolvers.api_keys import end_held_keys
from resolvers.common import Page, PageEdge, announce_after_commit, tenant_of
from resolvers.deps import RequestContext
from resolvers.roles import check_can_grant, require_role
from store.audit import AuditAction, changes
from store.cursors import CursorError, decode_position, encode_position
from store.models import Membership, SsoIdentity, User
from store.scoping import tenant_filter

MEMBERSHIP_NOT_FOUND = "Membership not found."
MAX_PAGE_SIZE = 100
CURSOR_VERSION = "m1"


@dataclass(frozen=True, slots=True)
class Member:
    membership: Membership
    user: User


MemberPage = Page[Member]


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
    ctx: RequestContext, organization_id: str, first: int = 50, after: str | None = None
) -> MemberPage:
    """One page of the caller's organization's members, oldest first (keyset on created_at, id).

    Members are listed for the caller's own organization only: a permission held here says nothing
    about an organization below it, where the caller is not a member.
    """
    org_id = tenant_of(ctx.principal)
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
    rows = (await (await ctx.db()).execute(stmt)).all()
    edges = [PageEdge(encode_cursor(m), Member(m, u)) for m, u in rows[:size]]
    return Page(edges, len(rows) > size, edges[-1].cursor if edges else None)


# -- changing and removing ----------------------------------------------------------------------------


def _check_role_shape(role: str) -> None:
    if not role or len(role) > 63:
        raise BadUserInput("Unknown role.", field="role")


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
    check_can_grant(
        principal.effective_permissions,
        [membership.role, role],
        custom,
        "You cannot change a member's role from or to a role with permissions you do not hold.",
    )
    if membership.role == role:
        ctx.audit(
            AuditAction.AUTHZ_CHANGE,
            resource_type="membership",
            resource_id=membership.id,
            details={"userId": membership.user_id, "changes": {}},
        )
        return member
    if membership.role == BuiltinRole.OWNER.value:
        await _keep_an_owner(db, org_id)
    ctx.audit(
        AuditAction.AUTHZ_CHANGE,
        resource_type="membership",
        resource_id=membership.id,
        details={"userId": membership.user_id, "changes": changes({"role": membership.role}, {"role": role})},
    )
    membership.role = role
    db.add(membership)
    await db.flush()
    await security_events.role_granted(ctx, org_id, membership.user_id, role, how="role_change")
    announce_after_commit(ctx, [user_key(membership.user_id)])
    return member


async def remove_member(ctx: RequestContext, membership_id: str) -> bool:
    principal = ctx.principal
    org_id = tenant_of(principal)
    db = await ctx.db()
    member = await _member(db, org_id, membership_id)
    membership = member.membership
    custom = await load_custom_roles(db, org_id)
    check_can_grant(
        principal.effective_permissions,
        [membership.role],
        custom,
        "You cannot remove a member whose role holds permissions you do not hold.",
    )
    if membership.role == BuiltinRole.OWNER.value:
        await _keep_an_owner(db, org_id)
    await db.delete(membership)
    await db.flush()
    ended = await active_session_ids(db, membership.user_id, organization_id=org_id)
    await revoke_sessions(db, ended, reason="membership_removed", now=ctx.services.now())
    announce_after_commit(ctx, [*ended, user_key(membership.user_id)])
    ctx.audit(
        AuditAction.MEMBER_REMOVED,
        resource_type="membership",
        resource_id=membership.id,
        details={"userId": membership.user_id, "role": membership.role},
    )
    await end_held_keys(ctx, org_id, membership.user_id, reason="membership_removed")
    # the organization's providers stop speaking for the person: coming back is by invitation or the person's
    # own link, never by the provider alone (C-125)
    await db.execute(
        delete(SsoIdentity).where(tenant_filter(SsoIdentity, org_id), col(SsoIdentity.user_id) == membership.user_id)
    )
    return True
