"""The caller's rate budgets as the resolvers see them: `rateLimit` and the rate rows of `Organization.quotas`.

The admission step at the edge (`gateway/`) keeps the counters; it hands the resolvers an object with this
shape (`Services.budgets`), which reads them without spending anything.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from authz.plans import QuotaResource

RATE_RESOURCES: tuple[QuotaResource, ...] = (
    QuotaResource.REQUESTS_PER_MINUTE, QuotaResource.REQUESTS_PER_DAY, QuotaResource.COST_PER_MINUTE,
)


@dataclass(frozen=True, slots=True)
class BudgetState:
    limit: int | None  # None: unlimited
    used: int
    remaining: int | None  # None when unlimited
    reset_at: datetime  # naive UTC: when the window has room again (moving window: the oldest hit's expiry)


class RateBudgets(Protocol):
    async def budgets(
        self, organization_id: str, limits: Mapping[QuotaResource, int | None]
    ) -> dict[QuotaResource, BudgetState]:
        """The state of each of RATE_RESOURCES for the tenant, spending nothing."""
        ...
