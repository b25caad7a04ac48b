from __future__ import annotations

from datetime import datetime

import strawberry

from authz.plans import QuotaResource
from resolvers import rate_limits as service
from resolvers.budgets import BudgetState
from schema.context import Info
from schema.directives import authenticated
from schema.enums import Plan


@strawberry.type(description="A rate budget: `limit` null is unlimited; `resetAt` is when the window has room again.")
class Budget:
    limit: int | None
    remaining: int | None
    reset_at: datetime

    @classmethod
    def from_state(cls, state: BudgetState) -> Budget:
        return cls(limit=state.limit, remaining=state.remaining, reset_at=state.reset_at)


@strawberry.type
class RateLimitStatus:
    plan: Plan
    requests_per_minute: Budget
    requests_per_day: Budget
    cost_per_minute: Budget


@strawberry.type
class RateLimitQuery:
    @strawberry.field(description="The caller's tenant's rate budgets, spending nothing.", **authenticated())
    async def rate_limit(self, info: Info) -> RateLimitStatus:
        plan, budgets = await service.get_rate_budgets(info.context)
        return RateLimitStatus(
            plan=Plan(plan),
            requests_per_minute=Budget.from_state(budgets[QuotaResource.REQUESTS_PER_MINUTE]),
            requests_per_day=Budget.from_state(budgets[QuotaResource.REQUESTS_PER_DAY]),
            cost_per_minute=Budget.from_state(budgets[QuotaResource.COST_PER_MINUTE]),
        )
