"""The password rules of a person's organizations, the history of their passwords, and password age.

A person belongs to one or more organizations; whatever password they choose is theirs in all of them, so
the strictest policy of those organizations applies (`PasswordRules.strictest`). Every password set
(sign-up through an invitation, reset, change) is written to `password_history`, whatever the policy says
today, so that a history turned on later already knows the recent passwords. Only the newest
`PASSWORD_HISTORY_MAX` are kept.

Checking the history costs one argon2 verification per remembered password (each in a worker thread), at
most `PASSWORD_HISTORY_MAX`: run it before a unit of work opens its session.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta

from sqlalchemy import delete
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col, select

from authz.security_policy import PASSWORD_HISTORY_MAX
from identity.passwords import PasswordHasherService, PasswordPolicyError, PasswordRules
from identity.security_policies import policy_from_row
from store.models import Membership
from store.security import PasswordHistory, SecurityPolicyRow


async def rules_for_user(db: AsyncSession, user_id: str | None, *, joining: Iterable[str] = ()) -> PasswordRules:
    """The strictest password rules of the organizations the user belongs to (and of `joining`, the
    organization an invitation is about to add)."""
    org_ids = set(joining)
    if user_id is not None:
        member_of = await db.execute(select(Membership.organization_id).where(col(Membership.user_id) == user_id))
        org_ids.update(member_of.scalars().all())
    if not org_ids:
        return PasswordRules()
    rows = await db.execute(select(SecurityPolicyRow).where(col(SecurityPolicyRow.organization_id).in_(org_ids)))
    # an organization without a row keeps every default, which never tightens the rules
    return PasswordRules.strictest(policy_from_row(row, require_mfa=False) for row in rows.scalars().all())


async def recent_hashes(db: AsyncSession, user_id: str, count: int) -> list[str]:
    """The hashes of the user's `count` most recent passwords, newest first."""
    if count <= 0:
        return []
    rows = await db.execute(
        select(PasswordHistory.password_hash)
        .where(col(PasswordHistory.user_id) == user_id)
        .order_by(col(PasswordHistory.created_at).desc(), col(PasswordHistory.id).desc())
        .limit(count)
    )
    return list(rows.scalars().all())


async def refuse_reuse(
    hasher: PasswordHasherService, password: str, *, remembered: list[str], current_hash: str | None, history: int
) -> None:
    """`PasswordPolicyError` when `password` is one of the last `history` passwords (the current one
    counts as the newest, even when it predates the history table)."""
    if history <= 0:
        return
    hashes = list(remembered)
    if current_hash is not None and current_hash not in hashes:
        hashes.insert(0, current_hash)
    for stored in hashes[:history]:
        if await hasher.verify(stored, password):
            raise PasswordPolicyError(
                f"password was used recently: the organization's policy refuses the last {history} passwords"
            )


async def record_password(db: AsyncSession, user_id: str, password_hash: str, now: datetime) -> None:
    """Remember a password just set, and forget those older than the longest history any policy keeps."""
    db.add(PasswordHistory(user_id=user_id, password_hash=password_hash, created_at=now))
    await db.flush()
    keep = await db.execute(
        select(PasswordHistory.id)
        .where(col(PasswordHistory.user_id) == user_id)
        .order_by(col(PasswordHistory.created_at).desc(), col(PasswordHistory.id).desc())
        .limit(PASSWORD_HISTORY_MAX)
    )
    kept = list(keep.scalars().all())
    await db.execute(
        delete(PasswordHistory).where(col(PasswordHistory.user_id) == user_id, col(PasswordHistory.id).not_in(kept))
    )


def password_expired(changed_at: datetime, max_age_days: int | None, now: datetime) -> bool:
    """Whether a password set at `changed_at` (for an account that never changed it: when the account was
    made) is older than the policy's maximum age."""
    return max_age_days is not None and now - changed_at > timedelta(days=max_age_days)
