"""`rateLimit`: the caller's tenant's rate budgets, read without spending anything."""

from __future__ import annotations

from authz.errors import GatewayError
from authz.plans import QuotaResource, effective_limits
from resolvers.budgets import BudgetState
from resolvers.deps import RequestContext
from resolvers.organizations import get_organization


async def get_rate_budgets(ctx: RequestContext) -> tuple[str, dict[QuotaResource, BudgetState]]:
    """The tenant's plan, and the state of its REQUESTS_PER_MINUTE, REQUESTS_PER_DAY and COST_PER_MINUTE."""
    org = await get_organization(ctx)
    budgets = ctx.services.budgets
    if budgets is None:
        raise GatewayError("Rate budgets are not available on this gateway.")
    return org.plan, await budgets.budgets(org.id, effective_limits(org.plan, org.limit_overrides))
