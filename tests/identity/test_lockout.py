"""LoginThrottle against the database (SQLite and PostgreSQL), with a clock the tests drive."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from identity.lockout import Attempt, LockoutPolicy, LoginThrottle
from store.db import Database

EMAIL = "victim@acme.test"
ATTACKER = "198.51.100.66"
HOME = "203.0.113.10"
POLICY = LockoutPolicy(threshold=5, window_seconds=900, base_lock_seconds=60, max_lock_seconds=900, account_ceiling=50)


@dataclass
class Clock:
    now: float = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    database = Database(database_url)
    try:
        yield database
    finally:
        await database.dispose()


@pytest.fixture
def throttle(db: Database, clock: Clock) -> LoginThrottle:
    return LoginThrottle(db, POLICY, clock=clock)


async def fail(
    throttle: LoginThrottle, ip: str = ATTACKER, email: str = EMAIL, org: str | None = None
) -> tuple[Attempt, bool]:
    """One attempt (aimed at `org`) whose password check failed; returns the attempt and whether it locked
    the pair."""
    attempt = await throttle.begin(email, ip, org)
    locked = await throttle.failed(attempt) if attempt.allowed else False
    return attempt, locked


async def lock(throttle: LoginThrottle, ip: str = ATTACKER, already: int = 0) -> None:
    """Fail until the pair locks; `already` failures of this round were counted before."""
    results = [await fail(throttle, ip) for _ in range(POLICY.threshold - already)]
    assert all(a.allowed for a, _ in results)
    assert [locked for _, locked in results] == [False] * (len(results) - 1) + [True]


async def locked_for(throttle: LoginThrottle, clock: Clock, seconds: int, ip: str = ATTACKER) -> Attempt:
    """Assert the pair stays locked for exactly `seconds` more; returns the first allowed attempt."""
    clock.advance(seconds - 1)
    assert not (await throttle.begin(EMAIL, ip)).allowed
    clock.advance(1)
    attempt = await throttle.begin(EMAIL, ip)
    assert attempt.allowed, f"still locked after {seconds} s"
    return attempt


async def test_threshold_locks_the_pair(throttle: LoginThrottle) -> None:
    """C-113: T failures lock the (account, IP) pair; the T+1-th attempt is refused before any check."""
    await lock(throttle)
    attempt = await throttle.begin(EMAIL, ATTACKER)
    assert not attempt.allowed
    assert attempt.reason == "locked"
    # the lock is logged once: further failures report no new lock
    assert await throttle.failed(attempt) is False


async def test_refused_attempts_neither_extend_nor_renew_the_lock(throttle: LoginThrottle, clock: Clock) -> None:
    """C-113/C-115: hammering a locked pair (each refusal recorded like a failure) does not push the
    end of the lock back, and does not count as a second lock."""
    await lock(throttle)
    for _ in range(10):
        clock.advance(5)
        refused = await throttle.begin(EMAIL, ATTACKER)
        assert not refused.allowed
        assert await throttle.failed(refused) is False
    attempt = await locked_for(throttle, clock, POLICY.base_lock_seconds - 50)
    await throttle.succeeded(attempt)


async def test_lock_is_per_pair_not_per_account(throttle: LoginThrottle) -> None:
    """C-115: a pair locked from the attacker's address leaves the victim's address alone."""
    await lock(throttle)
    home = await throttle.begin(EMAIL, HOME)
    assert home.allowed
    await throttle.succeeded(home)
    assert not (await throttle.begin(EMAIL, ATTACKER)).allowed
    assert (await throttle.begin("someone.else@acme.test", ATTACKER)).allowed


async def test_lock_lasts_the_base_duration(throttle: LoginThrottle, clock: Clock) -> None:
    """C-113: locked for exactly `base_lock_seconds`, then attempts are allowed again from a fresh count."""
    await lock(throttle)
    attempt = await locked_for(throttle, clock, POLICY.base_lock_seconds)
    await throttle.succeeded(attempt)
    # after a success the count starts over: T more failures before the next lock
    await lock(throttle)


async def test_backoff_doubles_and_caps(throttle: LoginThrottle, clock: Clock) -> None:
    """C-113/C-115: repeated locks last 60, 120, 240, 480, then 900 s (the cap), never longer."""
    await lock(throttle)
    for seconds in (60, 120, 240, 480, 900, 900):
        first = await locked_for(throttle, clock, seconds)
        assert await throttle.failed(first) is False
        await lock(throttle, already=1)


async def test_success_resets_the_backoff(throttle: LoginThrottle, clock: Clock) -> None:
    await lock(throttle)
    await throttle.failed(await locked_for(throttle, clock, 60))
    await lock(throttle, already=1)
    ok = await locked_for(throttle, clock, 120)
    await throttle.succeeded(ok)
    await lock(throttle)
    await locked_for(throttle, clock, 60)  # back to the base duration


async def test_failures_outside_the_window_do_not_add_up(throttle: LoginThrottle, clock: Clock) -> None:
    """C-113: T failures must fall within W to lock."""
    for _ in range(POLICY.threshold - 1):
        await fail(throttle)
    clock.advance(POLICY.window_seconds + 1)
    for _ in range(POLICY.threshold - 1):
        attempt, locked = await fail(throttle)
        assert attempt.allowed
        assert not locked
    assert (await throttle.begin(EMAIL, ATTACKER)).allowed


async def test_email_key_is_normalised(throttle: LoginThrottle) -> None:
    """The same account however its address is typed: no fresh counter per spelling."""
    spellings = ["Victim@Acme.Test", " victim@acme.test", "VICTIM@ACME.TEST ", "victim@acme.test", EMAIL]
    results = [await fail(throttle, email=s) for s in spellings]
    assert results[-1][1] is True
    assert not (await throttle.begin("vIcTiM@aCmE.tEsT", ATTACKER)).allowed


async def test_concurrent_attempts_get_at_most_threshold_checks(throttle: LoginThrottle) -> None:
    """C-114: the count is taken atomically before verification: 50 at once → exactly T allowed."""
    attempts = await asyncio.gather(*(throttle.begin(EMAIL, ATTACKER) for _ in range(50)))
    allowed = [a for a in attempts if a.allowed]
    assert len(allowed) == POLICY.threshold
    assert {a.reason for a in attempts if not a.allowed} == {"locked"}
    locks = await asyncio.gather(*(throttle.failed(a) for a in allowed))
    assert sorted(locks) == [False] * (POLICY.threshold - 1) + [True]
    assert not (await throttle.begin(EMAIL, ATTACKER)).allowed


async def test_account_ceiling_refuses_unknown_addresses(db: Database, clock: Clock) -> None:
    """C-116: many addresses guessing one account; after the ceiling only known addresses may try."""
    throttle = LoginThrottle(db, LockoutPolicy(threshold=5, account_ceiling=4), clock=clock)
    known = await throttle.begin(EMAIL, HOME)
    await throttle.succeeded(known)
    for i in range(4):
        attempt, _ = await fail(throttle, ip=f"192.0.2.{i + 1}")
        assert attempt.allowed
    refused = await throttle.begin(EMAIL, "192.0.2.200")
    assert not refused.allowed
    assert refused.reason == "account_ceiling"
    assert (await throttle.begin(EMAIL, HOME)).allowed
    # other accounts are not affected
    assert (await throttle.begin("other@acme.test", "192.0.2.200")).allowed
    # the ceiling is per window
    clock.advance(POLICY.window_seconds + 1)
    assert (await throttle.begin(EMAIL, "192.0.2.201")).allowed


async def test_c127_an_organizations_unlock_clears_only_the_counters_of_sign_ins_into_it(
    throttle: LoginThrottle,
) -> None:
    """C-115, C-127: an organization's unlock ends its own lock at once; another organization's lock, and
    the account's own counter, stay."""
    for _ in range(POLICY.threshold + 1):
        await fail(throttle, org="org-a")
    for _ in range(POLICY.threshold + 1):
        await fail(throttle, org="org-b")
    await fail(throttle, email="bystander@acme.test", org="org-a")
    assert not (await throttle.begin(EMAIL, ATTACKER, "org-a")).allowed
    assert not (await throttle.begin(EMAIL, ATTACKER, "org-b")).allowed
    assert await throttle.unlock("VICTIM@acme.test", "org-a") == 1
    assert (await throttle.begin(EMAIL, ATTACKER, "org-a")).allowed
    assert not (await throttle.begin(EMAIL, ATTACKER, "org-b")).allowed
    assert await throttle.unlock("nobody@acme.test", "org-a") == 0
    assert await throttle.unlock("bystander@acme.test", "org-a") == 1


async def test_c127_failures_aimed_at_one_organization_do_not_lock_another(throttle: LoginThrottle) -> None:
    for _ in range(POLICY.threshold + 1):
        await fail(throttle, org="org-a")
    assert not (await throttle.begin(EMAIL, ATTACKER, "org-a")).allowed
    assert (await throttle.begin(EMAIL, ATTACKER, "org-b")).allowed
    assert (await throttle.begin(EMAIL, ATTACKER)).allowed


async def test_c134_a_reset_clears_every_lock_and_keeps_the_known_addresses(throttle: LoginThrottle) -> None:
    home = await throttle.begin(EMAIL, HOME, "org-a")
    await throttle.succeeded(home)
    for org in ("org-a", "org-b", None):
        for _ in range(POLICY.threshold + 1):
            await fail(throttle, org=org)
    assert await throttle.reset("VICTIM@acme.test") >= 4
    for org in ("org-a", "org-b", None):
        assert (await throttle.begin(EMAIL, ATTACKER, org)).allowed
    assert (await throttle.begin(EMAIL, HOME)).known_address
