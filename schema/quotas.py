from __future__ import annotations

from datetime import datetime

import strawberry

from resolvers.quotas import QuotaUsage
from schema.enums import QuotaResource


@strawberry.type(
    name="Quota", description="One limit of the organization's plan (with its overrides) and how much of it is used."
)
class Quota:
    resource: QuotaResource
    limit: int | None = strawberry.field(description="null: unlimited.")
    used: int
    remaining: int | None = strawberry.field(
        description="null when unlimited; 0 when usage is at or over the limit (after a downgrade, say)."
    )
    resets_at: datetime | None = strawberry.field(
        description="When the count starts again (reports: the next UTC month); null for what does not reset."
    )

    @classmethod
    def from_usage(cls, usage: QuotaUsage) -> Quota:
        return cls(
            resource=usage.resource,
            limit=usage.limit,
            used=usage.used,
            remaining=usage.remaining,
            resets_at=usage.resets_at,
        )
