"""The operation limits of each plan: one table, read by every limit extension.

An anonymous caller (no plan) gets the FREE row. The names are the `limit` reported in an
`OPERATION_TOO_COMPLEX` error.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from schema.enums import Plan


@dataclass(frozen=True)
class OperationLimits:
    depth: int
    aliases: int
    tokens: int
    root_fields: int
    directives: int
    cost: int


OPERATION_LIMITS: Mapping[Plan, OperationLimits] = {
    Plan.FREE: OperationLimits(depth=10, aliases=15, tokens=1_000, root_fields=10, directives=20, cost=1_000),
    Plan.STARTER: OperationLimits(depth=12, aliases=30, tokens=2_000, root_fields=15, directives=50, cost=5_000),
    Plan.PROFESSIONAL: OperationLimits(depth=15, aliases=50, tokens=5_000, root_fields=20, directives=100, cost=10_000),
    Plan.ENTERPRISE: OperationLimits(depth=20, aliases=100, tokens=10_000, root_fields=30, directives=200, cost=50_000),
}

# The list size assumed for a list field with neither a slicing argument nor `@listSize(assumedSize:)`.
DEFAULT_LIST_SIZE = 10


def limits_for(principal: Any, table: Mapping[Plan, OperationLimits] = OPERATION_LIMITS) -> OperationLimits:
    """The row of the caller's plan; FREE's for an anonymous caller or a plan the table lacks."""
    plan = getattr(principal, "plan", None)
    try:
        return table[Plan(plan)] if plan else table[Plan.FREE]
    except (ValueError, KeyError):
        return table[Plan.FREE]
