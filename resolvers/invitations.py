"""Invitations: how a person joins an organization, by that person's own act.

Accounts are global (one email, one account, any number of organizations), so an organization never creates,
claims or learns about an account by naming its address: `addMember` makes an invitation and nothing else, with the
same answer whether or not the address has an account. The token (256 bits, only its sha256 kept, 7 days) goes to
the address by email only; whoever accepts it has shown they read that mailbox.

`acceptInvitation(token, password)`:
- the address has no account: the account is created with that password (the address counts as verified: the
  token came through it), then the membership, then a session in the organization;
- the address has an account: it joins only by its holder's act. The caller is signed in as that account, or
  proves to be its holder with the account's own password (counted by the login throttle like a sign-in); an
  account with a second factor, or without a password (an identity provider's), must be signed in. The password
  of an existing account is never set or changed here.

A pending invitation counts against the MEMBERS quota (`resolvers/quotas.py`); it can be re-sent (a new token, the
previous one dead) and revoked. An unknown, spent, revoked or expired token all answer the same UNAUTHENTICATED.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from sqlalchemy import ColumnElement, update
from sqlalchemy import select as sa_select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from authz import AuthMethod, Principal, PrincipalKind
from authz.errors import INVALID_CREDENTIALS, BadUserInput, Conflict, NotFound, Unauthenticated
from authz.plans import QuotaResource
from identity.lockout import email_key
from identity.passwords import MAX_BYTES
from identity.sessions import create_session
from identity.tokens import hash_opaque_token
from resolvers import security_events
from resolvers.accounts import refuse_api_keys
from resolvers.auth import AuthResult, session_token
from resolvers.common import Page, PageEdge, tenant_of
from resolvers.deps import RequestContext
from resolvers.mail import MailNotConfigured, send_mail
from resolvers.passwords import record_password, vet_new_password
from resolvers.provisioning import INVITATION_TTL, checked_email, new_invitation_token
from resolvers.quotas import check_quota
from resolvers.roles import check_can_grant, require_role
from store.audit import AuditAction
from store.cursors import CursorError, decode_position, encode_position
from store.models import ApiKey, Invitation, Membership, Organization, User
from store.scoping import tenant_filter, tenant_select

INVALID_INVITATION = "Invalid or expired invitation."
MAX_INVITATION_TOKEN_LENGTH = 128
# a re-send at most once a minute, and at most this many sends of one invitation in all
RESEND_INTERVAL = timedelta(minutes=1)
MAX_SENDS = 10
MAX_PAGE_SIZE = 100
CURSOR_VERSION = "i1"
ACCEPT_PATH = "/invitations/accept"
SIGN_IN_REQUIRED = "SIGN_IN_REQUIRED"


class InvitationStatus(StrEnum):
    PENDING = "pending"
    ACCEPTED = "accepted"
    REVOKED = "revoked"
    EXPIRED = "expired"


def status_of(invitation: Invitation, now: datetime) -> InvitationStatus:
    if invitation.accepted_at is not None:
        return InvitationStatus.ACCEPTED
    if invitation.revoked_at is not None:
        return InvitationStatus.REVOKED
    if invitation.expires_at <= now:
        return InvitationStatus.EXPIRED
    return InvitationStatus.PENDING


@dataclass(frozen=True, slots=True)
class InvitationPage(Page[Invitation]):
    now: datetime  # the moment the page's statuses are as of


def _check_role_shape(role: str) -> None:
    if not role or len(role) > 63:
        raise BadUserInput("Unknown role.", field="role")


def _pending(organization_id: str, key: str, now: datetime) -> ColumnElement[bool]:
    return (
        tenant_filter(Invitation, organization_id)
        & (col(Invitation.email_key) == key)
        & col(Invitation.accepted_at).is_(None)
        & col(Invitation.revoked_at).is_(None)
        & (col(Invitation.expires_at) > now)
    )


async def _inviter(db: AsyncSession, principal: Principal, organization_id: str) -> tuple[str | None, str | None]:
    """Who invites: (the user's id, how the message names them). An API key invites for its holder."""
    user_id = principal.subject_id
    if principal.kind is PrincipalKind.API_KEY:
        key = (
            await db.execute(tenant_select(ApiKey, organization_id).where(col(ApiKey.id) == principal.subject_id))
        ).scalar_one_or_none()
        user_id = key.held_by if key is not None else None
    if user_id is None:
        return None, None
    user = await db.get(User, user_id)
    if user is None:
        return None, None
    return user.id, (f"{user.name} ({user.email})" if user.name else user.email)


async def send_invitation(ctx: RequestContext, invitation: Invitation, token: str, inviter: str | None) -> str:
    """Queue the invitation's email (sent after commit) to its address; the link it carries."""
    db = await ctx.db()
    org = await db.get(Organization, invitation.organization_id)
    mailer = ctx.services.mail
    assert org is not None
    if mailer is None:
        raise MailNotConfigured("an invitation needs a mailer: Services.mail is None")
    url = mailer.link(ACCEPT_PATH, token)
    await send_mail(
        ctx,
        to=invitation.email,
        template="invitation",
        organization_id=org.id,
        variables={
            "organization_name": org.name,
            "inviter": inviter,
            "role": invitation.role,
            "accept_url": url,
            "expires_at": invitation.expires_at,
        },
    )
    return url


# -- inviting -----------------------------------------------------------------------------------------


async def add_member(ctx: RequestContext, email: str, role: str) -> Invitation:
    """Invite `email` to the caller's organization with `role`. The same answer whether or not the address
    has an account; CONFLICT only for what the organization itself knows (a member, a pending invitation)."""
    principal = ctx.principal
    org_id = tenant_of(principal)
    email = checked_email(email)
    _check_role_shape(role)
    db = await ctx.db()
    custom = await require_role(db, org_id, role)
    check_can_grant(
        principal.effective_permissions, [role], custom, "You cannot grant a role with permissions you do not hold."
    )
    now = ctx.services.now()
    key = email_key(email)
    # the organization's row is locked from here (quota): concurrent invitations of one address queue up
    await check_quota(db, org_id, QuotaResource.MEMBERS)
    member = (
        await db.execute(
            sa_select(col(Membership.id))
            .join(User, col(User.id) == col(Membership.user_id))
            .where(tenant_filter(Membership, org_id), col(User.email_key) == key)
        )
    ).first()
    if member is not None:
        raise Conflict("This address is already a member.")
    if (await db.execute(sa_select(col(Invitation.id)).where(_pending(org_id, key, now)))).first() is not None:
        raise Conflict("This address already has a pending invitation: resend it or revoke it.")
    inviter_id, inviter = await _inviter(db, principal, org_id)
    token = new_invitation_token()
    invitation = Invitation(
        organization_id=org_id,
        email=email,
        email_key=key,
        role=role,
        invited_by=inviter_id,
        token_hash=hash_opaque_token(token),
        created_at=now,
        expires_at=now + INVITATION_TTL,
        sent_at=now,
        send_count=1,
    )
    db.add(invitation)
    await db.flush()
    await send_invitation(ctx, invitation, token, inviter)
    ctx.audit(
        AuditAction.MEMBER_INVITED,
        resource_type="invitation",
        resource_id=invitation.id,
        details={"email": email, "role": role},
    )
    return invitation


async def _invitation(db: AsyncSession, organization_id: str, invitation_id: str) -> Invitation:
    if not invitation_id or len(invitation_id) > 36:
        raise NotFound("Invitation not found.")
    row = (
        await db.execute(
            tenant_select(Invitation, organization_id).where(col(Invitation.id) == invitation_id).with_for_update()
        )
    ).scalar_one_or_none()
    if row is None:
        raise NotFound("Invitation not found.")
    return row


async def resend_invitation(ctx: RequestContext, invitation_id: str) -> Invitation:
    """A new token by email (the previous one stops working) and seven more days; also for an expired one."""
    principal = ctx.principal
    org_id = tenant_of(principal)
    db = await ctx.db()
    invitation = await _invitation(db, org_id, invitation_id)
    now = ctx.services.now()
    status = status_of(invitation, now)
    if status in (InvitationStatus.ACCEPTED, InvitationStatus.REVOKED):
        raise Conflict(f"This invitation is {status.value}: it cannot be sent again.")
    custom = await require_role(db, org_id, invitation.role)
    check_can_grant(
        principal.effective_permissions,
        [invitation.role],
        custom,
        "You cannot grant a role with permissions you do not hold.",
    )
    if invitation.send_count >= MAX_SENDS:
        raise Conflict(f"This invitation was sent {MAX_SENDS} times: revoke it and invite again.")
    if invitation.sent_at is not None and now - invitation.sent_at < RESEND_INTERVAL:
        raise Conflict("This invitation was sent less than a minute ago.")
    if status is InvitationStatus.EXPIRED:
        # an expired invitation no longer counted against the members quota: counted again from now
        await check_quota(db, org_id, QuotaResource.MEMBERS)
    token = new_invitation_token()
    invitation.token_hash = hash_opaque_token(token)
    invitation.expires_at = now + INVITATION_TTL
    invitation.sent_at = now
    invitation.send_count += 1
    db.add(invitation)
    await db.flush()
    _, inviter = await _inviter(db, principal, org_id)
    await send_invitation(ctx, invitation, token, inviter)
    ctx.audit(
        AuditAction.INVITATION_RESENT,
        resource_type="invitation",
        resource_id=invitation.id,
        details={"sends": invitation.send_count},
    )
    return invitation


async def revoke_invitation(ctx: RequestContext, invitation_id: str) -> Invitation:
    org_id = tenant_of(ctx.principal)
    db = await ctx.db()
    invitation = await _invitation(db, org_id, invitation_id)
    if invitation.accepted_at is not None:
        raise Conflict("This invitation was accepted: remove the member instead.")
    if invitation.revoked_at is None:
        invitation.revoked_at = ctx.services.now()
        db.add(invitation)
        await db.flush()
    ctx.audit(
        AuditAction.INVITATION_REVOKED,
        resource_type="invitation",
        resource_id=invitation.id,
        details={"email": invitation.email, "role": invitation.role},
    )
    return invitation


# -- listing ------------------------------------------------------------------------------------------


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        return decode_position(cursor, CURSOR_VERSION)
    except CursorError:
        raise BadUserInput("after is not a valid cursor", field="after") from None


async def list_invitations(
    ctx: RequestContext,
    organization_id: str,
    *,
    first: int = 50,
    after: str | None = None,
    status: InvitationStatus | None = None,
) -> InvitationPage:
    """The organization's invitations, newest first (keyset on created_at, id); its own organization only."""
    org_id = tenant_of(ctx.principal)
    now = ctx.services.now()
    if organization_id != org_id:
        return InvitationPage([], False, None, now)
    if not 1 <= first <= MAX_PAGE_SIZE:
        raise BadUserInput(f"first must be between 1 and {MAX_PAGE_SIZE}", field="first")
    stmt = tenant_select(Invitation, org_id)
    if status is InvitationStatus.ACCEPTED:
        stmt = stmt.where(col(Invitation.accepted_at).is_not(None))
    elif status is InvitationStatus.REVOKED:
        stmt = stmt.where(col(Invitation.accepted_at).is_(None), col(Invitation.revoked_at).is_not(None))
    elif status is InvitationStatus.EXPIRED:
        stmt = stmt.where(
            col(Invitation.accepted_at).is_(None),
            col(Invitation.revoked_at).is_(None),
            col(Invitation.expires_at) <= now,
        )
    elif status is InvitationStatus.PENDING:
        stmt = stmt.where(
            col(Invitation.accepted_at).is_(None),
            col(Invitation.revoked_at).is_(None),
            col(Invitation.expires_at) > now,
        )
    if after is not None:
        at, ident = _decode_cursor(after)
        stmt = stmt.where(
            (col(Invitation.created_at) < at) | ((col(Invitation.created_at) == at) & (col(Invitation.id) < ident))
        )
    stmt = stmt.order_by(col(Invitation.created_at).desc(), col(Invitation.id).desc()).limit(first + 1)
    rows = list((await (await ctx.db()).execute(stmt)).scalars().all())
    edges = [PageEdge(encode_position(CURSOR_VERSION, r.created_at, r.id), r) for r in rows[:first]]
    return InvitationPage(edges, len(rows) > first, edges[-1].cursor if edges else None, now)


# -- accepting ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Found:
    invitation: Invitation
    user: User | None


async def _find(ctx: RequestContext, token: str) -> _Found:
    now = ctx.services.now()
    async with ctx.services.db.transaction() as read:
        invitation = (
            await read.execute(
                # tenant-scope: no tenant before sign-in; the token picks the invitation, whose organization it is
                sa_select(Invitation).where(col(Invitation.token_hash) == hash_opaque_token(token))
            )
        ).scalar_one_or_none()
        if invitation is None or status_of(invitation, now) is not InvitationStatus.PENDING:
            raise Unauthenticated(INVALID_INVITATION)
        user = (
            await read.execute(sa_select(User).where(col(User.email_key) == invitation.email_key))
        ).scalar_one_or_none()
    return _Found(invitation, user)


async def _holder_proved(ctx: RequestContext, found: _Found, password: str) -> None:
    """An existing account accepts only by its holder: signed in as it, or with its own password."""
    user, principal = found.user, ctx.principal
    assert user is not None
    signed_in = principal.kind is PrincipalKind.USER and principal.subject_id == user.id
    if not user.is_active:
        raise Unauthenticated(INVALID_INVITATION)
    if user.password_hash is None or (user.mfa_enabled and not signed_in):
        if signed_in:
            return
        raise Unauthenticated(
            "This address already has an account: sign in to it, then accept the invitation.", reason=SIGN_IN_REQUIRED
        )
    services = ctx.services
    attempt = await services.throttle.begin(user.email, principal.client_ip, found.invitation.organization_id)
    if not attempt.allowed:
        await services.hasher.burn()
        await services.throttle.failed(attempt)
        raise Unauthenticated(INVALID_CREDENTIALS)
    if not await services.hasher.verify(user.password_hash, password):
        await services.throttle.failed(attempt)
        raise Unauthenticated(INVALID_CREDENTIALS)
    await services.throttle.succeeded(attempt)


async def accept_invitation(ctx: RequestContext, token: str, password: str) -> AuthResult:
    """Spend an invitation: the membership (and, for a new address, the account), then a session there.

    Public, so not tenant-scoped: the token itself is the credential, like a refresh token."""
    refuse_api_keys(ctx.principal)
    if not token or len(token) > MAX_INVITATION_TOKEN_LENGTH:
        raise Unauthenticated(INVALID_INVITATION)
    if len(password.encode("utf-8", "surrogatepass")) > MAX_BYTES:
        raise BadUserInput("password is too long", field="password")
    services = ctx.services
    found = await _find(ctx, token)
    invitation = found.invitation
    new_hash: str | None = None
    # the password is checked or hashed before the unit of work opens its session (SQLite's writers' turn)
    if found.user is None:
        await vet_new_password(
            ctx, password, email=invitation.email, field="password", joining=[invitation.organization_id]
        )
        new_hash = await services.hasher.hash(password)
    else:
        await _holder_proved(ctx, found, password)
    now = services.now()
    db = await ctx.db()
    user_id = found.user.id if found.user is not None else None
    org_id = invitation.organization_id
    if user_id is None:
        user = User(
            email=invitation.email,
            email_key=invitation.email_key,
            password_hash=new_hash,
            password_changed_at=now,
            email_verified_at=now,
            created_at=now,
        )
        db.add(user)
        try:
            await db.flush()
        except IntegrityError:
            # an account for the address was made meanwhile (another invitation, an IdP): accept again
            raise Conflict("An account for this address was just created: accept the invitation again.") from None
        assert new_hash is not None
        await record_password(db, user.id, new_hash, now)
    else:
        existing = await db.get(User, user_id, with_for_update=True)
        if existing is None or not existing.is_active:
            raise Unauthenticated(INVALID_INVITATION)
        user = existing
        if user.email_verified_at is None:
            user.email_verified_at = now  # the token came through the address
    spent = await db.execute(
        update(Invitation)
        .where(
            col(Invitation.id) == invitation.id,
            col(Invitation.token_hash) == invitation.token_hash,
            col(Invitation.accepted_at).is_(None),
            col(Invitation.revoked_at).is_(None),
            col(Invitation.expires_at) > now,
        )
        .values(accepted_at=now, accepted_by=user.id)
        .execution_options(synchronize_session=False)
    )
    if (getattr(spent, "rowcount", 0) or 0) != 1:
        raise Unauthenticated(INVALID_INVITATION)
    membership = (
        await db.execute(tenant_select(Membership, org_id).where(col(Membership.user_id) == user.id))
    ).scalar_one_or_none()
    if membership is not None:
        raise Conflict("You are already a member of this organization.")
    try:
        await require_role(db, org_id, invitation.role)
    except BadUserInput:
        raise Conflict("The role of this invitation no longer exists: ask for a new invitation.") from None
    await check_quota(db, org_id, QuotaResource.MEMBERS)
    membership = Membership(organization_id=org_id, user_id=user.id, role=invitation.role, created_at=now)
    db.add(membership)
    user.last_login_at = now
    db.add(user)
    await db.flush()
    await security_events.role_granted(
        ctx, org_id, user.id, invitation.role, how="invitation", granted_by=invitation.invited_by
    )
    org = await db.get(Organization, org_id)
    if org is None:
        raise Unauthenticated(INVALID_INVITATION)
    signed_in = ctx.principal.kind is PrincipalKind.USER and ctx.principal.subject_id == user.id
    method = ctx.principal.auth_method.value if signed_in else AuthMethod.PASSWORD.value
    issued = await create_session(
        db,
        user_id=user.id,
        organization_id=org.id,
        auth_method=method,
        client_ip=ctx.principal.client_ip,
        user_agent=ctx.user_agent,
        policy=services.session_policy,
        now=now,
        auth_time=ctx.principal.auth_time if signed_in else None,
    )
    access, claims = session_token(services, issued.session)
    if user_id is None:
        ctx.audit(
            AuditAction.USER_CREATED,
            organization_id=org.id,
            actor_id=user.id,
            resource_type="user",
            resource_id=user.id,
            details={"invitationId": invitation.id},
        )
    ctx.audit(
        AuditAction.MEMBER_ADDED,
        organization_id=org.id,
        actor_id=user.id,
        resource_type="membership",
        resource_id=membership.id,
        details={"userId": user.id, "role": membership.role, "invitationId": invitation.id, "newUser": user_id is None},
    )
    ctx.audit(
        AuditAction.AUTHN_INVITATION_ACCEPTED,
        organization_id=org.id,
        actor_id=user.id,
        resource_type="session",
        resource_id=issued.session.id,
        details={"membershipId": membership.id, "invitationId": invitation.id},
    )
    return AuthResult(access, claims, issued.refresh_token, user, org)
