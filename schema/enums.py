from __future__ import annotations

import strawberry

from authz import plans

# the plans of authz.plans, registered as the GraphQL enum (strawberry.enum marks the class itself)
Plan = plans.Plan
strawberry.enum(Plan, name="Plan")

# the resource names of authz.plans, registered as the GraphQL enum (strawberry.enum marks the class itself)
QuotaResource = plans.QuotaResource
strawberry.enum(QuotaResource, name="QuotaResource")
