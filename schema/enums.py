from __future__ import annotations

from enum import Enum

import strawberry

from authz import plans


@strawberry.enum
class Plan(Enum):
    FREE = "free"
    STARTER = "starter"
    PROFESSIONAL = "professional"
    ENTERPRISE = "enterprise"


# the resource names of authz.plans, registered as the GraphQL enum (strawberry.enum marks the class itself)
QuotaResource = plans.QuotaResource
strawberry.enum(QuotaResource, name="QuotaResource")
