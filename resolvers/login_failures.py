"""What a failed password sign-in leaves behind: its `sign_ins` row (an existing account) and its audit entries.

Every failure before the password was found right makes the same reads, an unknown email included, so that
no case answers sooner than another (C-112): the risk history and the membership are read for an id no
account holds, and find nothing.
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col, select

from authz import AuthMethod
from resolvers import risk
from resolvers.deps import RequestContext
from resolvers.provisioning import MAX_EMAIL_LENGTH
from resolvers.risk import NO_ACCOUNT
from store.audit import PLATFORM_CHAIN, AuditAction, AuditEvent, AuditResult, append
from store.models import Membership, Organization, User


async def membership_of(db: AsyncSession, user_id: str, organization_slug: str | None) -> Membership | None:
    """The account's membership in the organization `organization_slug` names (None if it has none there);
    without a slug, its first."""
    stmt = select(Membership).where(col(Membership.user_id) == user_id)
    if organization_slug is not None:
        stmt = stmt.join(Organization, col(Organization.id) == col(Membership.organization_id)).where(
            col(Organization.slug) == organization_slug
        )
    stmt = stmt.order_by(col(Membership.created_at), col(Membership.id))
    return (await db.execute(stmt.limit(1))).scalars().first()


async def record_failure(
    ctx: RequestContext,
    email: str,
    user: User | None,
    membership: Membership | None,
    known_address: bool,
    *,
    locked: bool,
    reason: str | None,
) -> None:
    """A failed password sign-in before the password was found right: scored, its `sign_ins` row (an
    existing account) and its audit entries written in one transaction. Every case makes the same reads,
    an unknown email included, so that its answer takes no less time than a known account's (C-112)."""
    async with ctx.services.db.transaction() as db:
        scored = await risk.failed_attempt_in(
            db,
            ctx,
            user_id=user.id if user is not None else None,
            organization_id=membership.organization_id if membership is not None else None,
            method=AuthMethod.PASSWORD.value,
            known_address=known_address,
        )
        events = await failure_events(db, ctx, email, user, membership, locked=locked, reason=reason, risk=scored)
        await append(db, events, entries=False)
    ctx.audited_now.update(e.action for e in events)


async def audit_refusal(
    ctx: RequestContext,
    email: str,
    user: User,
    membership: Membership,
    *,
    locked: bool,
    reason: str,
    risk: dict[str, object] | None = None,
) -> None:
    """The audit entries of a sign-in refused once the password was found right (its risk, the
    organization's policy), committed on their own."""
    async with ctx.services.db.transaction() as db:
        events = await failure_events(db, ctx, email, user, membership, locked=locked, reason=reason, risk=risk)
        await append(db, events, entries=False)
    ctx.audited_now.update(e.action for e in events)


async def failure_events(
    db: AsyncSession,
    ctx: RequestContext,
    email: str,
    user: User | None,
    membership: Membership | None,
    *,
    locked: bool,
    reason: str | None,
    risk: dict[str, object] | None,
) -> list[AuditEvent]:
    """`authn_login_fail` (and `authn_login_lock` when this failure locked the account from this address) in
    the chain of the organization the sign-in aimed at, else of the account's first organization, else the
    platform's (an unknown email, an account with no organization)."""
    if membership is None:
        membership = await membership_of(db, user.id if user is not None else NO_ACCOUNT, None)
    common: dict[str, object] = {
        "organization_id": membership.organization_id if membership is not None else PLATFORM_CHAIN,
        "actor_id": user.id if user is not None else None,
        "resource_type": "user",
        "resource_id": user.id if user is not None else None,
        "result": AuditResult.DENIED,
    }
    details: dict[str, object] = {
        "email": email[:MAX_EMAIL_LENGTH],
        "reason": reason or "bad_password",
        "method": "password",
    }
    if risk is not None:
        details["risk"] = risk
    events = [ctx.audit_event(AuditAction.AUTHN_LOGIN_FAIL, details=details, **common)]  # type: ignore[arg-type]
    if locked:
        events.append(ctx.audit_event(AuditAction.AUTHN_LOGIN_LOCK, details=details, **common))  # type: ignore[arg-type]
    return events
