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


QuotaResource = strawberry.enum(plans.QuotaResource, name="QuotaResource")
