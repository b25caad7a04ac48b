"""Admission: which limits a request spends, taken in one round trip, and what a refusal looks like.

Where it runs. A GraphQL request's cost is known only once its document is parsed and validated, and
the cost must be debited in the same round trip as the request limits. So for `/graphql` admission
runs inside the schema, as the last step before execution (`schema.limits.admission.AdmissionExtension`,
in `on_validate` after the operation limits, the cost and the field decisions), and calls
`EdgeAdmission.admit`; a request that never reaches validation (a syntax error, the token limit) is
counted as it fails, at no cost. Every other tenant route is admitted at the edge
(`gateway.route_admission.AdmissionMiddleware`), at no cost. `/healthz`, `/readyz`, `/metrics` and
`/.well-known/` are not limited.

What a request spends, all in one `WindowStore.take` (one EVALSHA in shared mode; the day's usage is
counted in the process, `gateway/usage.py`):
- a caller of a tenant: the tenant's REQUESTS_PER_MINUTE, REQUESTS_PER_DAY and COST_PER_MINUTE
  (`authz.plans.effective_limits`: the plan's row and the organization's overrides; an unlimited
  resource is not counted), and an API key's own `rateLimitPerMinute`;
- an anonymous caller: the per-address limit (`anonymous_requests_per_minute`);
- each `login` field of the document (aliases included): one attempt against the (account it names,
  caller's address) pair and one against the caller's address.

When the store fails: login limits fail closed (503); the others follow `limits_on_redis_error`
(closed: 503; open: admitted), logged and counted, never replaced by a per-process count.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlmodel import col, select

from authz import Principal, PrincipalKind
from authz.plans import QuotaResource, effective_limits
from gateway.rate_limit_audit import RateLimitAudit
from gateway.usage import UsageCounter
from gateway.windows import Limit, LimitState, Outcome, StoreUnavailable, WindowStore, retry_seconds
from identity.lockout import email_key
from identity.redis_health import RedisHealth
from resolvers.budgets import RATE_RESOURCES, BudgetState
from store.audit import ActorType, AuditAction, AuditEvent
from store.db import Database
from store.models import Organization
from store.single_flight import SingleFlight
from store.telemetry import span

log = logging.getLogger("portcullis.admission")

MINUTE, DAY = 60, 86_400
_TENANT_LIMITS_CACHE = 4096
_WINDOWS = {
    QuotaResource.REQUESTS_PER_MINUTE: ("tenant-minute", "m", MINUTE),
    QuotaResource.REQUESTS_PER_DAY: ("tenant-day", "d", DAY),
    QuotaResource.COST_PER_MINUTE: ("tenant-cost", "c", MINUTE),
}


@dataclass(frozen=True, slots=True)
class AdmissionPolicy:
    anonymous_per_minute: int = 60
    login_per_account_per_minute: int = 10
    login_per_address_per_minute: int = 30
    fail_open: bool = False


@dataclass(frozen=True, slots=True)
class AdmissionDecision:
    """What the gateway answers: admitted (with the tenant's cost budget), 429 or 503."""

    status: int  # 200, 429 or 503
    retry_after: int = 0
    refused_by: Limit | None = None
    states: tuple[LimitState, ...] = ()
    now_ms: int = 0

    @property
    def admitted(self) -> bool:
        return self.status == 200

    def state(self, name: str) -> LimitState | None:
        for s in self.states:
            if s.limit.name == name:
                return s
        return None

    def cost_extension(self, requested: int) -> dict[str, Any]:
        """`extensions.cost`: the operation's cost, and what is left of the tenant's cost budget."""
        s = self.state("tenant-cost")
        if s is None:
            return {"requested": requested, "remaining": None, "resetAt": None}
        return {"requested": requested, "remaining": s.remaining, "resetAt": iso(s.reset_ms)}

    def headers(self) -> list[tuple[bytes, bytes]]:
        """`Retry-After`, and the refusing limit as `RateLimit-Policy` and `RateLimit`
        (draft-ietf-httpapi-ratelimit-headers)."""
        out = [(b"retry-after", str(self.retry_after).encode())]
        limit = self.refused_by
        if limit is not None:
            remaining = next((s.remaining for s in self.states if s.limit is limit), 0)
            out.append((b"ratelimit-policy", f'"{limit.name}";q={limit.amount};w={limit.window}'.encode()))
            out.append((b"ratelimit", f'"{limit.name}";r={remaining};t={self.retry_after}'.encode()))
        return out


@functools.lru_cache(maxsize=4096)
def _policy_header(limits: tuple[Limit, ...]) -> bytes:
    """`RateLimit-Policy` of a set of limits: the same from one request to the next, so kept formatted."""
    return ", ".join([f'"{limit.name}";q={limit.amount};w={limit.window}' for limit in limits]).encode()


def _reset_seconds(state: LimitState, now_ms: int) -> int:
    """Whole seconds until the oldest counted request stops counting, within the window (its buckets round up)."""
    return min(state.limit.window, max(0, -((now_ms - state.reset_ms) // 1000)))


def rate_limit_headers(decision: AdmissionDecision) -> list[tuple[bytes, bytes]]:
    """An admitted request's `RateLimit-Policy` and `RateLimit` (draft-ietf-httpapi-ratelimit-headers, the format
    of a refusal's): one item per limit the request was counted against, each with what is left of it (`r`) and
    the seconds until that much more is free (`t`); none when no limit applies (a public route, an unlimited
    tenant)."""
    states = decision.states
    if not states:
        return []
    now = decision.now_ms
    left = ", ".join([f'"{s.limit.name}";r={s.remaining};t={_reset_seconds(s, now)}' for s in states])
    return [(b"ratelimit-policy", _policy_header(tuple([s.limit for s in states]))), (b"ratelimit", left.encode())]


@functools.lru_cache(maxsize=256)
def iso(ms: int) -> str:
    """A millisecond timestamp as ISO 8601 UTC (`...T12:00:00.500Z`). Reset times repeat from one request to
    the next until their bucket moves on, so the few recent ones are kept formatted."""
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class OrgLimitCache:
    """Each organization's effective limits, read from the database once and kept until the revocation
    bus says "org:<id>" (or "*"); a TTL bounds how long a lost message could keep a stale entry. A read that
    was running when such a message arrived is not kept (it may predate the change), and the requests that
    miss the same organization at once share one read."""

    def __init__(self, db: Database, ttl_seconds: float = 300.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.db = db
        self.ttl = ttl_seconds
        self.clock = clock
        self._entries: dict[str, tuple[float, str, dict[QuotaResource, int | None]]] = {}
        self.epoch = 0
        self._loads: SingleFlight[tuple[str, dict[QuotaResource, int | None]]] = SingleFlight()

    def invalidate(self, keys: list[str]) -> None:
        self.epoch += 1
        for key in keys:
            if key == "*":
                self._entries.clear()
            elif key.startswith("org:"):
                self._entries.pop(key[4:], None)

    async def get(self, organization_id: str) -> tuple[str, dict[QuotaResource, int | None]]:
        entry = self._entries.get(organization_id)
        if entry is not None and entry[0] > self.clock():
            return entry[1], entry[2]
        epoch = self.epoch
        return await self._loads.load((organization_id, epoch), lambda: self._load(organization_id, epoch))

    async def _load(self, organization_id: str, epoch: int) -> tuple[str, dict[QuotaResource, int | None]]:
        async with self.db.transaction() as session:
            row = (
                await session.execute(
                    select(Organization.plan, Organization.limit_overrides).where(
                        col(Organization.id) == organization_id
                    )
                )
            ).first()
        plan, overrides = (row[0], row[1]) if row is not None else ("", {})
        limits = effective_limits(plan, overrides)
        if epoch == self.epoch:
            self._entries[organization_id] = (self.clock() + self.ttl, plan, limits)
        return plan, limits


class EdgeAdmission:
    """The gateway's admission: each request's limits taken from the window store in one call."""

    def __init__(
        self,
        store: WindowStore,
        orgs: OrgLimitCache,
        policy: AdmissionPolicy,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.orgs = orgs
        self.policy = policy
        self.clock = clock
        self.usage = UsageCounter()
        self._tenant_limits: dict[tuple[str, int], tuple[Mapping[QuotaResource, int | None], tuple[Limit, ...]]] = {}
        self._day_from, self._day = 0.0, ""
        self.on_refused: Callable[[str], None] = lambda _name: None
        self.on_store_error: Callable[[str], None] = lambda _outcome: None
        # refusals are audited, counted per (tenant, limit key, minute): one entry, not one per request
        self.refusals: RateLimitAudit | None = None
        self.redis_health = RedisHealth()

    async def tenant_limits(self, organization_id: str, *, cost: int = 0) -> list[Limit]:
        _, limits = await self.orgs.get(organization_id)
        return list(self._built(organization_id, limits, cost))

    def _built(self, organization_id: str, limits: Mapping[QuotaResource, int | None], cost: int) -> tuple[Limit, ...]:
        # the same tenant limits and cost come back request after request: built once per (limits, cost),
        # and built anew when the organization's limits are read again (a new dict)
        key = (organization_id, cost)
        built = self._tenant_limits.get(key)
        if built is not None and built[0] is limits:
            return built[1]
        out = []
        for resource, (name, suffix, window) in _WINDOWS.items():
            amount = limits.get(resource)
            if amount is None:
                continue
            weight = cost if resource is QuotaResource.COST_PER_MINUTE else 1
            out.append(Limit(name, f"t:{organization_id}:{suffix}", amount, window, weight))
        if len(self._tenant_limits) >= _TENANT_LIMITS_CACHE:
            self._tenant_limits.pop(next(iter(self._tenant_limits)))
        self._tenant_limits[key] = (limits, tuple(out))
        return tuple(out)

    async def limits_for(
        self,
        principal: Principal,
        *,
        key_rate_limit: int | None = None,
        cost: int = 0,
        login_accounts: Sequence[str] = (),
    ) -> list[Limit]:
        limits: list[Limit] = []
        if principal.organization_id is not None:
            limits += await self.tenant_limits(principal.organization_id, cost=cost)
            if principal.kind is PrincipalKind.API_KEY and key_rate_limit is not None:
                limits.append(Limit("api-key", f"k:{principal.subject_id}", key_rate_limit, MINUTE))
        else:
            limits.append(
                Limit("address", f"ip:{principal.client_ip or 'unknown'}", self.policy.anonymous_per_minute, MINUTE)
            )
        if login_accounts:
            per_account: dict[str, int] = {}
            address = principal.client_ip or "unknown"
            for account in login_accounts:
                # Per account *and* address: one address guessing at an account only spends its own
                # attempts, never the account's sign-ins from elsewhere (C-127). Across addresses, the
                # account's failures are counted by the login throttle (identity/lockout.py), which lets
                # the account's recent addresses and its second factor through (C-088). The counter is
                # named by a digest: no email or address in Redis, and a bounded key.
                k = hashlib.sha256(f"{email_key(account)}|{address}".encode("utf-8", "surrogatepass")).hexdigest()[:32]
                per_account[k] = per_account.get(k, 0) + 1
            for account, n in per_account.items():
                limits.append(
                    Limit("login-account", f"la:{account}", self.policy.login_per_account_per_minute, MINUTE, n)
                )
            limits.append(
                Limit(
                    "login-address",
                    f"li:{principal.client_ip or 'unknown'}",
                    self.policy.login_per_address_per_minute,
                    MINUTE,
                    len(login_accounts),
                )
            )
        return limits

    def _usage(self, principal: Principal) -> list[str]:
        org = principal.organization_id
        if org is None:
            return []
        now = self.clock()
        if not self._day_from <= now < self._day_from + DAY:
            self._day_from = now - now % DAY
            self._day = datetime.fromtimestamp(now, UTC).date().isoformat()
        day = self._day
        kind = principal.kind.value if principal.subject_id else "anonymous"
        return [f"{day}|{org}|total||", f"{day}|{org}|{kind}|{principal.subject_id or ''}|"]

    async def admit(
        self,
        principal: Principal,
        *,
        key_rate_limit: int | None = None,
        cost: int = 0,
        login_accounts: Sequence[str] = (),
        spend: bool = True,
        spend_cost: bool = True,
    ) -> AdmissionDecision:
        """Takes every limit of the request at once. `spend_cost=False` counts the request but not its
        cost (an explained operation, which does not execute)."""
        with span("admission", attributes={"portcullis.cost": cost if spend_cost else 0}):
            limits = await self.limits_for(
                principal, key_rate_limit=key_rate_limit, cost=cost if spend_cost else 0, login_accounts=login_accounts
            )
            if not limits:
                return AdmissionDecision(200)
            return await self._decide(
                principal,
                self.store.take(limits, spend=spend),
                closed=bool(login_accounts),
                spend=spend,
                cost=cost if spend_cost else 0,
            )

    async def charge(self, principal: Principal, cost: int) -> AdmissionDecision:
        """A take of `cost` points from the tenant's COST_PER_MINUTE budget alone, after admission: work a
        resolver prices once it knows how much data it reads (`resolvers.budgets.charge_work`, C-130). The
        request limits are not taken again. Admitted at once for a caller without a tenant or an unlimited
        budget; a refusal is counted and audited like any other."""
        organization_id = principal.organization_id
        if organization_id is None or cost <= 0:
            return AdmissionDecision(200)
        _, limits = await self.orgs.get(organization_id)
        amount = limits.get(QuotaResource.COST_PER_MINUTE)
        if amount is None:
            return AdmissionDecision(200)
        name, suffix, window = _WINDOWS[QuotaResource.COST_PER_MINUTE]
        limit = Limit(name, f"t:{organization_id}:{suffix}", amount, window, cost)
        decision = await self._decide(principal, self.store.take([limit]), closed=False, spend=False, cost=cost)
        if decision.admitted:
            # the day's usage gains the cost, not another request
            self.usage.restore({prefix + "c": cost for prefix in self._usage(principal)})
        return decision

    async def _decide(
        self, principal: Principal, taking: Awaitable[Outcome], *, closed: bool, spend: bool, cost: int
    ) -> AdmissionDecision:
        try:
            outcome: Outcome = await taking
        except StoreUnavailable as exc:
            closed = closed or not self.policy.fail_open
            # logged once per outage (identity/redis_health.py); each request is counted (on_store_error)
            self.redis_health.failed("admission", exc)
            self.on_store_error("refused" if closed else "admitted")
            return AdmissionDecision(503, retry_after=1) if closed else AdmissionDecision(200)
        if self.redis_health.down_since is not None:
            self.redis_health.ok("admission")
        if spend:
            self.usage.add(self._usage(principal), admitted=outcome.admitted, cost=cost)
        if outcome.admitted:
            return AdmissionDecision(200, states=outcome.states, now_ms=outcome.now_ms)
        refused_by = outcome.refused_by
        if refused_by is not None:
            self.on_refused(refused_by.name)
            await self._audit_refusal(principal, refused_by)
        return AdmissionDecision(
            429,
            retry_after=retry_seconds(outcome.retry_ms),
            refused_by=refused_by,
            states=outcome.states,
            now_ms=outcome.now_ms,
        )

    async def _audit_refusal(self, principal: Principal, limit: Limit) -> None:
        if self.refusals is None:
            return
        actor = (
            ActorType.API_KEY
            if principal.kind is PrincipalKind.API_KEY
            else ActorType.USER
            if principal.subject_id
            else ActorType.ANONYMOUS
        )
        event = AuditEvent(
            action=AuditAction.EXCESS_RATE_LIMIT_EXCEEDED,
            organization_id=principal.organization_id,
            actor_type=actor,
            actor_id=principal.subject_id,
            request_id=principal.request_id,
            ip=principal.client_ip,
            details={"limit": limit.name, "per": limit.amount, "windowSeconds": limit.window},
        )
        try:
            await self.refusals.refused(event, key=limit.key)
        except Exception:  # the refusal stands; only its audit count is lost, and that is logged
            log.exception(
                "rate-limit refusal not counted for the audit log", extra={"request_id": principal.request_id}
            )

    async def budgets(
        self, organization_id: str, limits: Mapping[QuotaResource, int | None]
    ) -> dict[QuotaResource, BudgetState]:
        """`RateBudgets`: the tenant's three rate budgets, read without spending."""
        counted = []
        for resource, (name, suffix, window) in _WINDOWS.items():
            amount = limits.get(resource)
            if amount is not None:
                counted.append((resource, Limit(name, f"t:{organization_id}:{suffix}", amount, window, 0)))
        states: dict[str, LimitState] = {}
        now_ms = int(self.clock() * 1000)
        if counted:
            outcome = await self.store.take([limit for _, limit in counted], spend=False)
            now_ms = outcome.now_ms
            states = {s.limit.name: s for s in outcome.states}
        out: dict[QuotaResource, BudgetState] = {}
        for resource in RATE_RESOURCES:
            s = states.get(_WINDOWS[resource][0])
            if s is None:
                reset = datetime.fromtimestamp(now_ms / 1000, UTC)
                out[resource] = BudgetState(limit=None, used=0, remaining=None, reset_at=reset)
            else:
                reset = datetime.fromtimestamp(s.reset_ms / 1000, UTC)
                out[resource] = BudgetState(limit=s.limit.amount, used=s.used, remaining=s.remaining, reset_at=reset)
        return out
