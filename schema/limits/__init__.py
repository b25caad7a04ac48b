"""Operation limits, checked before execution: one schema extension per limit, per plan (see
`plans.OPERATION_LIMITS` and docs/limits.md)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from schema.enums import Plan
from schema.limits.aliases import AliasLimit
from schema.limits.cost import CostLimit, CostModel
from schema.limits.depth import DepthLimit
from schema.limits.directives import DirectiveLimit
from schema.limits.plans import DEFAULT_LIST_SIZE, OPERATION_LIMITS, OperationLimits, limits_for
from schema.limits.root_fields import RootFieldLimit
from schema.limits.tokens import TokenLimit

__all__ = [
    "DEFAULT_LIST_SIZE",
    "OPERATION_LIMITS",
    "AliasLimit",
    "CostLimit",
    "CostModel",
    "DepthLimit",
    "DirectiveLimit",
    "OperationLimits",
    "RootFieldLimit",
    "TokenLimit",
    "document_limits",
    "limits_for",
]


def document_limits(table: Mapping[Plan, OperationLimits], cost_model: Any) -> list[Any]:
    """The extensions that measure a parsed, validated document, cheapest first; the cost model is
    read through a callable because it needs the built schema."""
    return [
        lambda: DepthLimit(table=table),
        lambda: AliasLimit(table=table),
        lambda: RootFieldLimit(table=table),
        lambda: DirectiveLimit(table=table),
        lambda: CostLimit(model=cost_model(), table=table),
    ]
