"""What every operation limit shares: the caller's plan row, the refusal, a per-document cache.

A limit measures the executable operation of a parsed and validated document (fragments expanded
where they are spread, aliases included) and refuses it before execution when the measure is over
the plan's maximum: a single `OPERATION_TOO_COMPLEX` error naming the limit, the maximum and the
measured value, and HTTP 400. It runs in `on_validate` after the validation cache, so a document
that is invalid (a fragment cycle, an unknown field) is refused by validation first, and before
`Authorization`, which takes no decision once an error is set.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar

from graphql import DocumentNode, FragmentDefinitionNode, GraphQLError, OperationDefinitionNode
from graphql.utilities import get_operation_ast
from strawberry.extensions import SchemaExtension
from strawberry.types import ExecutionContext

from authz.errors import OperationTooComplex
from schema.enums import Plan
from schema.limits.plans import OPERATION_LIMITS, OperationLimits, limits_for

Fragments = Mapping[str, FragmentDefinitionNode]


def fragments_of(document: DocumentNode) -> dict[str, FragmentDefinitionNode]:
    return {d.name.value: d for d in document.definitions if isinstance(d, FragmentDefinitionNode)}


def refuse(ec: ExecutionContext, error: OperationTooComplex) -> None:
    """Ends the operation before execution with `error` and HTTP 400."""
    ec.pre_execution_errors = [GraphQLError(error.message, original_error=error)]
    response = getattr(ec.context, "response", None)
    if response is not None:
        response.status_code = 400


class OperationLimit(SchemaExtension):
    """One static limit. Subclasses name the limit and measure an operation."""

    # the attribute of `OperationLimits`, and the `limit` the error reports
    field: ClassVar[str]
    name: ClassVar[str]
    cache_size: ClassVar[int] = 1024
    _cache: ClassVar[OrderedDict[tuple[int, str | None], tuple[DocumentNode, int]]]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._cache = OrderedDict()

    def __init__(self, *, table: Mapping[Plan, OperationLimits] = OPERATION_LIMITS) -> None:
        super().__init__()
        self.table = table

    def measure(self, document: DocumentNode, operation: OperationDefinitionNode, fragments: Fragments) -> int:
        raise NotImplementedError

    def maximum(self) -> int:
        return int(getattr(limits_for(self.execution_context.context.principal, self.table), self.field))

    def measured(self, document: DocumentNode, operation: OperationDefinitionNode) -> int:
        """The measure depends on the document alone, so it is taken once per cached document."""
        key = (id(document), self.execution_context.operation_name)
        cached = self._cache.get(key)
        if cached is not None and cached[0] is document:
            self._cache.move_to_end(key)
            return cached[1]
        value = self.measure(document, operation, fragments_of(document))
        self._cache[key] = (document, value)
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return value

    def on_validate(self) -> Iterator[None]:
        ec = self.execution_context
        document = ec.graphql_document
        if document is not None and not ec.pre_execution_errors:
            operation = get_operation_ast(document, ec.operation_name)
            if operation is not None:
                value = self.measured(document, operation)
                maximum = self.maximum()
                if value > maximum:
                    refuse(ec, OperationTooComplex(self.name, maximum, value))
        yield


def expanded_count(
    selection_set: Any,
    fragments: Fragments,
    count: Any,
    *,
    into_fields: bool = True,
    memo: dict[str, int] | None = None,
    visiting: frozenset[str] = frozenset(),
) -> int:
    """Sums `count(node)` over every selection the operation would execute: each fragment counted
    once per spread (memoized, so exponential spreading costs linear time), fields' sub-selections
    included unless `into_fields` is false (the root level only)."""
    from graphql import FieldNode, FragmentSpreadNode, InlineFragmentNode

    memo = {} if memo is None else memo
    total = 0
    for selection in selection_set.selections:
        total += count(selection)
        if isinstance(selection, FieldNode):
            if into_fields and selection.selection_set is not None:
                total += expanded_count(
                    selection.selection_set, fragments, count, into_fields=True, memo=memo, visiting=visiting
                )
        elif isinstance(selection, InlineFragmentNode):
            total += expanded_count(
                selection.selection_set, fragments, count, into_fields=into_fields, memo=memo, visiting=visiting
            )
        elif isinstance(selection, FragmentSpreadNode):
            name = selection.name.value
            fragment = fragments.get(name)
            if fragment is None or name in visiting:
                continue
            if name not in memo:
                memo[name] = count(fragment) + expanded_count(
                    fragment.selection_set,
                    fragments,
                    count,
                    into_fields=into_fields,
                    memo=memo,
                    visiting=visiting | {name},
                )
            total += memo[name]
    return total
