from __future__ import annotations

from enum import Enum

import strawberry


@strawberry.enum
class Plan(Enum):
    FREE = "free"
    STARTER = "starter"
    PROFESSIONAL = "professional"
    ENTERPRISE = "enterprise"
