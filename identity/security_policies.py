"""Each organization's security policy, read from the database and kept per process.

The edge asks `PolicyCache.get` once per request for the caller's organization: a dictionary lookup while
the entry is fresh. A change is announced on the revocation bus as `org:<id>` (what `updateSecurityPolicy`
and `requireMfa` publish after commit), which every process receives within a second; an entry loaded while
such an announcement was in flight is never stored, so a tightened policy cannot be undone by a slow read.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from authz.security_policy import (
    ConcurrentSessionAction,
    RiskAction,
    SecurityPolicy,
    SignInMethod,
)
from store.db import Database
from store.models import Organization
from store.security import SecurityPolicyRow
from store.single_flight import SingleFlight

ORG_KEY = "org:"


def policy_from_row(row: SecurityPolicyRow | None, *, require_mfa: bool) -> SecurityPolicy:
    """The policy a stored row says (no row: every default), with the organization's `require_mfa`."""
    if row is None:
        return SecurityPolicy(require_mfa=require_mfa)
    methods = frozenset(SignInMethod(m) for m in row.allowed_sign_in_methods if m in SignInMethod.__members__.values())
    return SecurityPolicy(
        password_min_length=row.password_min_length,
        password_history=row.password_history,
        password_max_age_days=row.password_max_age_days,
        breached_password_check=row.breached_password_check,
        session_idle_timeout_minutes=row.session_idle_timeout_minutes,
        session_max_lifetime_hours=row.session_max_lifetime_hours,
        max_concurrent_sessions=row.max_concurrent_sessions,
        concurrent_session_action=ConcurrentSessionAction(row.concurrent_session_action),
        fresh_auth_minutes=row.fresh_auth_minutes,
        allowed_sign_in_methods=methods or frozenset(SignInMethod),
        break_glass_user_ids=frozenset(row.break_glass_user_ids),
        require_mfa=require_mfa,
        api_key_max_lifetime_days=row.api_key_max_lifetime_days,
        ip_allowlist=tuple(row.ip_allowlist),
        medium_risk_action=RiskAction(row.medium_risk_action),
        high_risk_action=RiskAction(row.high_risk_action),
    )


def row_values(policy: SecurityPolicy) -> dict[str, Any]:
    """The column values that store `policy` (everything but `require_mfa`, which lives on the organization)."""
    return {
        "password_min_length": policy.password_min_length,
        "password_history": policy.password_history,
        "password_max_age_days": policy.password_max_age_days,
        "breached_password_check": policy.breached_password_check,
        "session_idle_timeout_minutes": policy.session_idle_timeout_minutes,
        "session_max_lifetime_hours": policy.session_max_lifetime_hours,
        "max_concurrent_sessions": policy.max_concurrent_sessions,
        "concurrent_session_action": policy.concurrent_session_action.value,
        "fresh_auth_minutes": policy.fresh_auth_minutes,
        "allowed_sign_in_methods": sorted(m.value for m in policy.allowed_sign_in_methods),
        "break_glass_user_ids": sorted(policy.break_glass_user_ids),
        "api_key_max_lifetime_days": policy.api_key_max_lifetime_days,
        "ip_allowlist": list(policy.ip_allowlist),
        "medium_risk_action": policy.medium_risk_action.value,
        "high_risk_action": policy.high_risk_action.value,
    }


async def load_policy(db: AsyncSession, organization_id: str) -> SecurityPolicy:
    """The organization's policy as stored now (an unknown organization: every default)."""
    found = (
        await db.execute(
            select(SecurityPolicyRow, col(Organization.require_mfa))
            .select_from(Organization)
            .outerjoin(SecurityPolicyRow, col(SecurityPolicyRow.organization_id) == col(Organization.id))
            .where(col(Organization.id) == organization_id)
        )
    ).first()
    if found is None:
        return SecurityPolicy()
    return policy_from_row(found[0], require_mfa=bool(found[1]))


class PolicyCache:
    """Policies by organization for `ttl_seconds`, dropped on `org:<id>` (or `*`) from the revocation bus."""

    def __init__(
        self,
        db: Database,
        *,
        ttl_seconds: float = 30.0,
        max_entries: int = 50_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.db = db
        self.ttl = ttl_seconds
        self.max_entries = max_entries
        self.clock = clock
        self._entries: dict[str, tuple[float, SecurityPolicy]] = {}
        self.epoch = 0
        self._loads: SingleFlight[SecurityPolicy] = SingleFlight()

    def invalidate(self, keys: list[str]) -> None:
        self.epoch += 1
        for key in keys:
            if key == "*":
                self._entries.clear()
                return
            if key.startswith(ORG_KEY):
                self._entries.pop(key[len(ORG_KEY) :], None)

    def cached(self, organization_id: str) -> SecurityPolicy | None:
        entry = self._entries.get(organization_id)
        if entry is None or self.clock() > entry[0]:
            return None
        return entry[1]

    async def get(self, organization_id: str) -> SecurityPolicy:
        policy = self.cached(organization_id)
        if policy is not None:
            return policy
        epoch = self.epoch
        # the requests that miss the same organization at once (its entry just expired) share one read
        return await self._loads.load((organization_id, epoch), lambda: self._load(organization_id, epoch))

    async def _load(self, organization_id: str, epoch: int) -> SecurityPolicy:
        async with self.db.session() as db:
            policy = await load_policy(db, organization_id)
        if epoch == self.epoch:
            if len(self._entries) >= self.max_entries:
                self._entries.clear()
            self._entries[organization_id] = (self.clock() + self.ttl, policy)
        return policy
