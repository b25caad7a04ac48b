"""The right to erasure: `eraseAccount` (the person, signed in again recently) and `portcullis data erase`.

Everything the registry (resolvers/personal_data.py) lists about the person is deleted, cleared or scrubbed
in one unit of work; the account row stays as a pseudonym (`erased-<id>@erased.invalid`, no password, no
name, inactive) because other rows point at it. Sessions, refresh tokens and the API keys the person holds
are revoked and announced to every process. The audit log is append-only: the person's keys in
`subject_keys` are destroyed instead, so the sealed personal fields of their entries cannot be read again
while every chain still verifies (docs/audit.md, "Erasure and the chain").

The last owner of an organization is refused (CONFLICT), naming the organizations: ownership is transferred
or the organization deleted first. Nothing is written then.
"""

from __future__ import annotations

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from authz import BuiltinRole, PrincipalKind
from authz.errors import Conflict, Forbidden, NotFound
from identity.lockout import email_key
from identity.sessions import user_key
from resolvers.api_keys import end_held_keys
from resolvers.common import announce_after_commit
from resolvers.deps import RequestContext
from resolvers.personal_data import BY_TABLE, ERASED, REGISTRY, Erase, Subject, scrub_value
from store.audit import PLATFORM_CHAIN, AuditAction
from store.audit.sealing import email_subject, user_subject
from store.models import AccountToken, AuthSession, Invitation, Membership, Organization, User
from store.privacy import SubjectKey
from store.reporting import ReportSchedule
from store.security import AddressBlock, SecurityPolicyRow, SignIn

ERASED_DOMAIN = "erased.invalid"
WAY_OUT = "transfer ownership to another member, or delete the organization, then ask again"


def erased_address(user_id: str) -> str:
    return f"erased-{user_id}@{ERASED_DOMAIN}"


def is_erased(user: User) -> bool:
    return user.email_key == erased_address(user.id)


async def subject_of(db: AsyncSession, user: User) -> Subject:
    """The person as the registry finds them: every address the account had (its own, the ones its emailed
    links and accepted invitations went to) and every client address it signed in from."""
    emails = {user.email_key, email_key(user.email)}
    emails |= {
        email_key(e)
        for e in (
            await db.execute(select(col(AccountToken.email)).where(col(AccountToken.user_id) == user.id))
        ).scalars()
    }
    emails |= set(
        (await db.execute(select(col(Invitation.email_key)).where(col(Invitation.accepted_by) == user.id))).scalars()
    )
    addresses: set[str] = set()
    for column, owner in (
        (AuthSession.client_ip, AuthSession.user_id),
        (SignIn.client_ip, SignIn.user_id),
        (AccountToken.client_ip, AccountToken.user_id),
    ):
        found = await db.execute(select(col(column)).where(col(owner) == user.id, col(column).is_not(None)).distinct())
        addresses |= {str(a) for a in found.scalars() if a}
    return Subject(user.id, frozenset(e for e in emails if e), user.name, frozenset(addresses))


async def sole_owner_of(db: AsyncSession, user_id: str) -> list[Organization]:
    """The organizations where the person is the only owner."""
    owned = select(col(Membership.organization_id)).where(
        col(Membership.user_id) == user_id, col(Membership.role) == BuiltinRole.OWNER.value
    )
    others = select(col(Membership.organization_id)).where(
        col(Membership.user_id) != user_id, col(Membership.role) == BuiltinRole.OWNER.value
    )
    stmt = (
        select(Organization)
        .where(col(Organization.id).in_(owned), col(Organization.id).not_in(others))
        .order_by(col(Organization.slug))
    )
    return list((await db.execute(stmt)).scalars().all())


async def find_account(ctx: RequestContext, email: str) -> str:
    """The id of the account with this address (the operator's `portcullis data erase --email`)."""
    db = await ctx.db()
    found = await db.execute(select(col(User.id)).where(col(User.email_key) == email_key(email)))
    user_id = found.scalars().first()
    if user_id is None:
        raise NotFound("No account has this address.")
    return str(user_id)


async def erase_own_account(ctx: RequestContext) -> bool:
    """`eraseAccount`: the caller's own account (a person signed in; never an API key)."""
    p = ctx.principal
    if p.kind is not PrincipalKind.USER or p.subject_id is None:
        raise Forbidden("Only a signed-in person can erase their own account.")
    await erase_account(ctx, p.subject_id, by="self")
    return True


async def erase_account(ctx: RequestContext, user_id: str, *, by: str) -> list[str]:
    """Erase the account `user_id` in the context's unit of work; returns the organizations it left."""
    db = await ctx.db()
    user = (await db.execute(select(User).where(col(User.id) == user_id).with_for_update())).scalars().first()
    if user is None or is_erased(user):
        raise NotFound("No such account.")
    alone = await sole_owner_of(db, user_id)
    if alone:
        raise Conflict(
            "The account is the only owner of " + ", ".join(o.slug for o in alone) + f": {WAY_OUT}.",
            organizations=[{"id": o.id, "slug": o.slug, "name": o.name} for o in alone],
            resolution=WAY_OUT,
        )
    subject = await subject_of(db, user)
    org_ids = sorted(
        set(
            (
                await db.execute(select(col(Membership.organization_id)).where(col(Membership.user_id) == user_id))
            ).scalars()
        )
    )
    sessions = list(
        (await db.execute(select(col(AuthSession.id)).where(col(AuthSession.user_id) == user_id))).scalars()
    )
    for org_id in org_ids:
        await end_held_keys(ctx, org_id, user_id, reason="account_erased")
    await _destroy_keys(ctx, db, subject)
    for entry in REGISTRY:
        await _erase_table(db, entry.table, subject)
    await _erase_lists(db, subject)
    _pseudonymise(user)
    db.add(user)
    await db.flush()
    announce_after_commit(ctx, [*sessions, user_key(user_id)])
    for org_id in org_ids or [PLATFORM_CHAIN]:
        ctx.audit(
            AuditAction.ACCOUNT_ERASED,
            organization_id=org_id,
            resource_type="user",
            resource_id=user_id,
            details={"by": by, "organizations": len(org_ids)},
        )
    return org_ids


async def _destroy_keys(ctx: RequestContext, db: AsyncSession, s: Subject) -> None:
    """The person's sealing keys go: the account's becomes a tombstone (entries written about it later drop
    their personal fields), each address's is deleted."""
    now = ctx.services.now()
    await db.execute(delete(SubjectKey).where(col(SubjectKey.subject).in_([email_subject(e) for e in s.emails])))
    subject = user_subject(s.user_id)
    updated = await db.execute(
        update(SubjectKey).where(col(SubjectKey.subject) == subject).values(key=None, erased_at=now)
    )
    if not updated.rowcount:  # type: ignore[attr-defined]
        db.add(SubjectKey(subject=subject, key=None, erased_at=now))
        await db.flush()


async def _erase_table(db: AsyncSession, table: str, s: Subject) -> None:
    entry = BY_TABLE[table]
    if entry.rows is None or entry.erase in (Erase.NOTHING, Erase.CUSTOM):
        return
    where = entry.rows(s)
    if entry.erase is Erase.DELETE:
        await db.execute(delete(entry.model).where(where))
        return
    if entry.erase is Erase.UPDATE:
        await db.execute(update(entry.model).where(where).values(**entry.erase_values))
        return
    needles = s.needles
    theirs = {s.user_id.casefold(), *(n.casefold() for n in needles)}
    for row in (await db.execute(select(entry.model).where(where))).scalars().all():
        for column in entry.scrub:
            setattr(row, column, scrub_value(getattr(row, column), needles))
        for column, value in entry.erase_values.items():
            if str(getattr(row, column)).casefold() in theirs:
                setattr(row, column, value)
        db.add(row)
    await db.flush()


async def _erase_lists(db: AsyncSession, s: Subject) -> None:
    """What the registry marks CUSTOM besides the account: lists that hold an address or an id, and the
    references whose rows stay."""
    uid = s.user_id
    # tenant-scope: a person's erasure reaches their rows in every organization they belong to or were invited to
    to_them = col(Invitation.email_key).in_(sorted(s.emails)) | (col(Invitation.accepted_by) == uid)
    await db.execute(delete(Invitation).where(to_them))
    await db.execute(update(Invitation).where(col(Invitation.invited_by) == uid).values(invited_by=None))
    await db.execute(update(AddressBlock).where(col(AddressBlock.created_by) == uid).values(created_by=None))
    await db.execute(update(AddressBlock).where(col(AddressBlock.lifted_by) == uid).values(lifted_by=None))
    schedules = BY_TABLE["report_schedules"].rows
    assert schedules is not None
    for schedule in (await db.execute(select(ReportSchedule).where(schedules(s)))).scalars().all():
        schedule.recipients = [r for r in schedule.recipients if email_key(r) not in s.emails]
        if schedule.created_by == uid:
            schedule.created_by = None
        db.add(schedule)
    policies = BY_TABLE["security_policies"].rows
    assert policies is not None
    for policy in (await db.execute(select(SecurityPolicyRow).where(policies(s)))).scalars().all():
        policy.break_glass_user_ids = [u for u in policy.break_glass_user_ids if u != uid]
        if policy.updated_by == uid:
            policy.updated_by = None
        db.add(policy)
    await db.flush()


def _pseudonymise(user: User) -> None:
    user.email = user.email_key = erased_address(user.id)
    user.name = None
    user.password_hash = None
    user.is_active = False
    user.mfa_enabled = False
    user.totp_secret_encrypted = user.totp_pending_secret_encrypted = None
    user.totp_last_used_step = None
    user.last_login_at = user.password_changed_at = user.email_verified_at = None


__all__ = [
    "ERASED",
    "erase_account",
    "erase_own_account",
    "find_account",
    "is_erased",
    "sole_owner_of",
    "subject_of",
]
