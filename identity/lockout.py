"""Password-login throttling that an attacker cannot turn against the user, nor one tenant against another.

Failures are counted in the database so that every gateway process sees one count, per pair and per
account. A pair is (account, the organization the sign-in aims at, client IP): the organization is the
one named in `login(organization:)`, or the account's default one, looked up before the password is
checked (null when there is no such account or membership). The counting is pessimistic: an attempt is
counted as a failure *before* the password is verified and forgiven on success, so any number of
concurrent guesses gets at most `threshold` verifications before the pair locks (C-114).

- After `threshold` failures within `window`, the pair is locked for `base_lock * 2**n`, capped at
  `max_lock` (exponential backoff over repeated locks). Other addresses are not affected, so an
  attacker cannot lock the real user out from elsewhere (C-115); nor are sign-ins into another
  organization, so failures aimed at one tenant never lock the account out of another (C-127).
- Across all addresses and organizations, an account that collects `account_ceiling` failures within
  the window refuses attempts from addresses where it has not signed in successfully within
  `trusted_days` (`seen:` rows), unless the attempt carries a second factor: the caller then lets the
  attempt through only if the password *and* the second factor are right (C-127). Distributed guessing
  slows down; the user's recent addresses, and the user's authenticator, keep working.
- An organization's administrator clears the pair counters of sign-ins into that organization only
  (`unlock(email, organization_id)`); the account's own counter and its known addresses are the
  person's: cleared by a password reset (`reset`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import and_, case, delete, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from identity.security_events import SecurityEventKind, Severity, record_security_event
from store.db import Database
from store.models import LoginCounter, Organization


@dataclass(frozen=True, slots=True)
class LockoutPolicy:
    threshold: int = 5
    window_seconds: int = 15 * 60
    base_lock_seconds: int = 60
    max_lock_seconds: int = 15 * 60
    account_ceiling: int = 50
    trusted_days: int = 90


@dataclass(frozen=True, slots=True)
class Attempt:
    account_key: str
    pair_key: str
    allowed: bool
    reason: str | None = None
    client_ip: str | None = None
    # the account signed in from this address before (ever), and within `trusted_days`
    known_address: bool = False
    trusted_address: bool = False

    @property
    def needs_second_factor(self) -> bool:
        """Past the account's ceiling from an address it does not know: only password and second factor
        together may pass."""
        return self.reason == "account_ceiling"


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
        return datetime.fromtimestamp(self.clock(), UTC)

    async def begin(self, email: str, client_ip: str | None, organization_id: str | None = None) -> Attempt:
        """Count the attempt as a failure now; `allowed` says whether the password may be verified."""
        account = email_key(email)
        address = client_ip or "-"
        pair = f"pair:{account}|{organization_id or '-'}|{address}"
        now = self._now()
        col = LoginCounter.__table__.c  # type: ignore[attr-defined]
        async with self.db.transaction() as session:
            pair_row = await self._count(session, pair, account, now, organization_id)
            account_row = await self._count(session, f"acct:{account}", account, now, None)
            seen = (
                await session.execute(select(col.last_success_at).where(col.key == _seen_key(account, address)))
            ).scalar_one_or_none()
        pair_failures, pair_locked_until, _, _ = pair_row
        account_failures = account_row[0]
        trusted = seen is not None and seen > now - timedelta(days=self.policy.trusted_days)
        reason: str | None = None
        if (pair_locked_until is not None and pair_locked_until > now) or pair_failures > self.policy.threshold:
            reason = "locked"
        elif account_failures > self.policy.account_ceiling and not trusted:
            reason = "account_ceiling"
        return Attempt(
            account,
            pair,
            allowed=reason is None,
            reason=reason,
            client_ip=client_ip,
            known_address=seen is not None,
            trusted_address=trusted,
        )

    async def _count(
        self, session: AsyncSession, key: str, account: str, now: datetime, organization_id: str | None
    ) -> tuple[Any, ...]:
        values = {
            "key": key,
            "account_key": account,
            "organization_id": organization_id,
            "failures": 0,
            "window_started_at": now,
            "lock_count": 0,
        }
        await session.execute(_insert(session).values(**values).on_conflict_do_nothing())
        cutoff = now - timedelta(seconds=self.policy.window_seconds)
        col = LoginCounter.__table__.c  # type: ignore[attr-defined]
        expired = or_(
            col.window_started_at < cutoff,
            and_(col.locked_until.is_not(None), col.locked_until <= now),
        )
        stmt = (
            update(LoginCounter)
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
        col = LoginCounter.__table__.c  # type: ignore[attr-defined]
        seen = _seen_key(attempt.account_key, attempt.client_ip or "-")
        async with self.db.transaction() as session:
            await session.execute(
                update(LoginCounter)
                .where(col.key == attempt.pair_key)
                .values(failures=0, locked_until=None, lock_count=0, last_success_at=now)
            )
            await session.execute(
                update(LoginCounter)
                .where(col.key == f"acct:{attempt.account_key}")
                .values(failures=case((col.failures > 0, col.failures - 1), else_=0))
            )
            insert = _insert(session).values(
                key=seen,
                account_key=attempt.account_key,
                failures=0,
                window_started_at=now,
                lock_count=0,
                last_success_at=now,
            )
            await session.execute(insert.on_conflict_do_update(index_elements=["key"], set_={"last_success_at": now}))

    async def failed(self, attempt: Attempt) -> bool:
        """Record a verified failure; True when this failure locked the pair (log it once)."""
        now = self._now()
        col = LoginCounter.__table__.c  # type: ignore[attr-defined]
        async with self.db.transaction() as session:
            row = (
                await session.execute(
                    update(LoginCounter)
                    .where(
                        col.key == attempt.pair_key,
                        col.failures >= self.policy.threshold,
                        or_(col.locked_until.is_(None), col.locked_until <= now),
                    )
                    .values(lock_count=col.lock_count + 1)
                    .returning(col.lock_count, col.organization_id)
                )
            ).first()
            if row is None:
                return False
            seconds = min(self.policy.base_lock_seconds * 2 ** (row[0] - 1), self.policy.max_lock_seconds)
            await session.execute(
                update(LoginCounter)
                .where(col.key == attempt.pair_key)
                .values(locked_until=now + timedelta(seconds=seconds))
            )
            org_id = row[1]
            if org_id is not None and await session.get(Organization, org_id) is not None:
                # the lock and its event commit together: the organization the sign-in aimed at sees it
                await record_security_event(
                    session,
                    organization_id=org_id,
                    kind=SecurityEventKind.ACCOUNT_LOCKED,
                    severity=Severity.MEDIUM,
                    summary=f"Sign-ins to {attempt.account_key} from {attempt.client_ip or 'an unknown address'} "
                    f"locked for {seconds} s after repeated failures",
                    client_ip=attempt.client_ip,
                    details={"account": attempt.account_key, "lockedSeconds": seconds, "lockCount": row[0]},
                )
        return True

    async def unlock(self, email: str, organization_id: str) -> int:
        """An organization's unlock: the counters of sign-ins into that organization, and nothing else."""
        col = LoginCounter.__table__.c  # type: ignore[attr-defined]
        async with self.db.transaction() as session:
            result = await session.execute(
                delete(LoginCounter).where(col.account_key == email_key(email), col.organization_id == organization_id)
            )
        return int(getattr(result, "rowcount", 0) or 0)

    async def reset(self, email: str) -> int:
        """After the person proved control of the account (a password reset): every failure counter and
        lock of the account, in every organization; its known addresses stay known."""
        col = LoginCounter.__table__.c  # type: ignore[attr-defined]
        async with self.db.transaction() as session:
            result = await session.execute(
                delete(LoginCounter).where(col.account_key == email_key(email), ~col.key.startswith("seen:"))
            )
        return int(getattr(result, "rowcount", 0) or 0)


def _seen_key(account: str, address: str) -> str:
    return f"seen:{account}|{address}"


def _insert(session: AsyncSession) -> Any:
    dialect = session.bind.dialect.name if session.bind is not None else "sqlite"
    return (postgresql.insert if dialect == "postgresql" else sqlite.insert)(LoginCounter)
