"""The caller's rate budgets as the resolvers see them: `rateLimit` and the rate rows of `Organization.quotas`,
and the work a resolver prices by the data it reads.

The admission step at the edge (`gateway/`) keeps the counters; it hands the resolvers an object with this
shape (`Services.budgets`), which reads them without spending anything, and itself (`Services.admission`),
whose `charge` takes more of the tenant's cost budget once a resolver knows what its work will cost.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Protocol

from authz import Principal
from authz.errors import ErrorCode, GatewayError
from authz.plans import QuotaResource

if TYPE_CHECKING:
    from resolvers.deps import RequestContext

RATE_RESOURCES: tuple[QuotaResource, ...] = (
    QuotaResource.REQUESTS_PER_MINUTE,
    QuotaResource.REQUESTS_PER_DAY,
    QuotaResource.COST_PER_MINUTE,
)


@dataclass(frozen=True, slots=True)
class BudgetState:
    limit: int | None  # None: unlimited
    used: int
    remaining: int | None  # None when unlimited
    reset_at: datetime  # when the window has room again (moving window: the oldest hit's expiry)


class RateBudgets(Protocol):
    async def budgets(
        self, organization_id: str, limits: Mapping[QuotaResource, int | None]
    ) -> dict[QuotaResource, BudgetState]:
        """The state of each of RATE_RESOURCES for the tenant, spending nothing."""
        ...


# -- work priced by the data (C-130) ---------------------------------------------------------------------

# Work that grows with the tenant's data (re-hashing an audit chain, reading a period's security events)
# costs one point of the tenant's COST_PER_MINUTE budget per this many audit entries it reads, on top of
# its static cost. Of the order of the static model's points: the one-point `{ organization { id slug name
# plan } }` takes ~1.7 ms of a worker (~590 req/s, docs/performance.md), a list adds a point per object
# read, and reading and hashing 10 entries takes ~250 µs (docs/audit.md).
ENTRIES_PER_COST_POINT = 10


def work_price(entries: int) -> int:
    """The cost points of reading `entries` audit entries: ceil(entries / ENTRIES_PER_COST_POINT)."""
    return -(-max(0, entries) // ENTRIES_PER_COST_POINT)


class CostCharge(Protocol):
    """The admission's decision on an additional take (gateway/admission.py `AdmissionDecision`)."""

    @property
    def status(self) -> int: ...  # 200, 429 or 503

    @property
    def retry_after(self) -> int: ...

    @property
    def admitted(self) -> bool: ...

    def headers(self) -> list[tuple[bytes, bytes]]: ...


class CostCharger(Protocol):
    async def charge(self, principal: Principal, cost: int) -> CostCharge:
        """Takes `cost` points from the caller's tenant's COST_PER_MINUTE budget alone, now."""
        ...


async def charge_work(ctx: RequestContext, entries: int, what: str) -> int:
    """Debits the price of reading `entries` audit entries from the tenant's cost budget before the work
    starts; over budget, RATE_LIMITED (429, `retryAfter`) and the work must not start. The price, added
    to what the response reports in `extensions.cost`. Nothing is charged without an admission step
    (`Services.admission` is None) or for a caller without a tenant."""
    price = work_price(entries)
    admission: CostCharger | None = ctx.services.admission
    if admission is None or price == 0 or ctx.principal.organization_id is None:
        return 0
    decision = await admission.charge(ctx.principal, price)
    if not decision.admitted:
        response = ctx.response
        if response is not None:
            response.status_code = decision.status
            for name, value in decision.headers():
                response.headers[name.decode()] = value.decode()
        if decision.status == 429:
            raise GatewayError(
                f"{what} reads {entries} audit entries, {price} cost points: more than the tenant's cost budget "
                f"has left; retry in {decision.retry_after} s.",
                code=ErrorCode.RATE_LIMITED,
                retryAfter=decision.retry_after,
                cost=price,
            )
        raise GatewayError("The rate limiter is unavailable; retry shortly.", retryAfter=decision.retry_after)
    ctx.work_cost += price
    ctx.work_charge = decision
    return price
