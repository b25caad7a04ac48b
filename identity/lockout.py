"""Password-login throttling that an attacker cannot turn against the user.

Failures are counted per (account, client IP) pair and per account, in the database so that every
gateway process sees one count. The counting is pessimistic: an attempt is counted as a failure
*before* the password is verified and forgiven on success, so any number of concurrent guesses gets
at most `threshold` verifications before the pair locks (C-114).

- After `threshold` failures within `window`, the pair is locked for `base_lock * 2**n`, capped at
  `max_lock` (exponential backoff over repeated locks). Other addresses are not affected, so an
  attacker cannot lock the real user out from elsewhere (C-115).
- Across all addresses, an account that collects `account_ceiling` failures within the window refuses
  attempts from addresses that never signed in to it successfully, which slows distributed guessing
  while the user's known addresses keep working.
- An administrator can clear every counter of an account (`unlock`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import and_, case, delete, or_, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from store.db import Database
from store.models import LoginThrottle as ThrottleRow


@dataclass(frozen=True, slots=True)
class LockoutPolicy:
    threshold: int = 5
    window_seconds: int = 15 * 60
    base_lock_seconds: int = 60
    max_lock_seconds: int = 15 * 60
    account_ceiling: int = 50


@dataclass(frozen=True, slots=True)
class Attempt:
    account_key: str
    pair_key: str
    allowed: bool
    reason: str | None = None


def email_key(email: str) -> str:
    return email.strip().casefold()


class LoginThrottle:
    def __init__(
        self, db: Database, policy: LockoutPolicy | None = None, clock: Callable[[], float] = time.time
    ) -> None:
        self.db = db
        self.policy = policy or LockoutPolicy()
        self.clock = clock

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), UTC).replace(tzinfo=None)

    async def begin(self, email: str, client_ip: str | None) -> Attempt:
        """Count the attempt as a failure now; `allowed` says whether the password may be verified."""
        account = email_key(email)
        pair = f"pair:{account}|{client_ip or '-'}"
        now = self._now()
        async with self.db.transaction() as session:
            pair_row = await self._count(session, pair, account, now)
            account_row = await self._count(session, f"acct:{account}", account, now)
        pair_failures, pair_locked_until, _, pair_last_success = pair_row
        account_failures = account_row[0]
        if pair_locked_until is not None and pair_locked_until > now:
            return Attempt(account, pair, allowed=False, reason="locked")
        if pair_failures > self.policy.threshold:
            return Attempt(account, pair, allowed=False, reason="locked")
        if account_failures > self.policy.account_ceiling and pair_last_success is None:
            return Attempt(account, pair, allowed=False, reason="account_ceiling")
        return Attempt(account, pair, allowed=True)

    async def _count(self, session: AsyncSession, key: str, account: str, now: datetime) -> tuple[Any, ...]:
        values = {
            "key": key,
            "account_key": account,
            "failures": 0,
            "window_started_at": now,
            "lock_count": 0,
        }
        dialect = session.bind.dialect.name if session.bind is not None else "sqlite"
        insert_fn = postgresql.insert if dialect == "postgresql" else sqlite.insert
        await session.execute(insert_fn(ThrottleRow).values(**values).on_conflict_do_nothing())
        cutoff = now - timedelta(seconds=self.policy.window_seconds)
        col = ThrottleRow.__table__.c  # type: ignore[attr-defined]
        expired = or_(
            col.window_started_at < cutoff,
            and_(col.locked_until.is_not(None), col.locked_until <= now),
        )
        stmt = (
            update(ThrottleRow)
            .where(col.key == key)
            .values(
                failures=case((expired, 1), else_=col.failures + 1),
                window_started_at=case((expired, now), else_=col.window_started_at),
                locked_until=case((expired, None), else_=col.locked_until),
            )
            .returning(col.failures, col.locked_until, col.lock_count, col.last_success_at)
        )
        row = (await session.execute(stmt)).one()
        return tuple(row)

    async def succeeded(self, attempt: Attempt) -> None:
        now = self._now()
        col = ThrottleRow.__table__.c  # type: ignore[attr-defined]
        async with self.db.transaction() as session:
            await session.execute(
                update(ThrottleRow)
                .where(col.key == attempt.pair_key)
                .values(failures=0, locked_until=None, lock_count=0, last_success_at=now)
            )
            await session.execute(
                update(ThrottleRow)
                .where(col.key == f"acct:{attempt.account_key}")
                .values(failures=case((col.failures > 0, col.failures - 1), else_=0))
            )

    async def failed(self, attempt: Attempt) -> bool:
        """Record a verified failure; True when this failure locked the pair (log it once)."""
        now = self._now()
        col = ThrottleRow.__table__.c  # type: ignore[attr-defined]
        async with self.db.transaction() as session:
            row = (
                await session.execute(
                    update(ThrottleRow)
                    .where(
                        col.key == attempt.pair_key,
                        col.failures >= self.policy.threshold,
                        or_(col.locked_until.is_(None), col.locked_until <= now),
                    )
                    .values(lock_count=col.lock_count + 1)
                    .returning(col.lock_count)
                )
            ).first()
            if row is None:
                return False
            seconds = min(self.policy.base_lock_seconds * 2 ** (row[0] - 1), self.policy.max_lock_seconds)
            await session.execute(
                update(ThrottleRow)
                .where(col.key == attempt.pair_key)
                .values(locked_until=now + timedelta(seconds=seconds))
            )
        return True

    async def unlock(self, email: str) -> int:
        col = ThrottleRow.__table__.c  # type: ignore[attr-defined]
        async with self.db.transaction() as session:
            result = await session.execute(delete(ThrottleRow).where(col.account_key == email_key(email)))
        return int(getattr(result, "rowcount", 0) or 0)
