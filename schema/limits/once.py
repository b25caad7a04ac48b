"""Fields whose work grows with the tenant's data, at most once per operation (C-130).

`verifyAuditChain` re-reads and re-hashes a whole chain, `generateReport` reads a period's rows: each is
priced by that work when it runs (`resolvers.budgets.charge_work`), but a document that aliases one of
them N times, or spreads it through N fragments, would start N times that work from one request, with
the price of each known only once the previous ones ran. Such a document is refused before execution:
`OPERATION_TOO_COMPLEX` with `limit: "oncePerOperation"`, the field, the maximum (1) and the measured
count, like the other operation limits. Counted at the operation's root (these are root fields),
through fragments and inline fragments, whatever `@skip`/`@include` say, as the other limits count;
selections that share a response key merge into one execution and count once.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from typing import ClassVar

from graphql import (
    DocumentNode,
    FieldNode,
    FragmentSpreadNode,
    InlineFragmentNode,
    OperationDefinitionNode,
    SelectionSetNode,
)
from graphql.utilities import get_operation_ast
from strawberry.extensions import SchemaExtension

from authz.errors import GatewayError, OperationTooComplex
from schema.limits.base import Fragments, fragments_of, refuse

# (root type, field): the work of each grows with the data, so one document runs it once
ONCE_PER_OPERATION: frozenset[tuple[str, str]] = frozenset(
    {("Query", "verifyAuditChain"), ("Mutation", "generateReport")}
)
LIMIT_NAME = "oncePerOperation"


class SelectedMoreThanOnce(OperationTooComplex):
    def __init__(self, field: str, measured: int) -> None:
        GatewayError.__init__(
            self,
            f"`{field}` may be selected once per operation; this one selects it {measured} times.",
            limit=LIMIT_NAME,
            field=field,
            maximum=1,
            measured=measured,
        )


def _response_keys(
    selection_set: SelectionSetNode,
    fragments: Fragments,
    names: frozenset[str],
    memo: dict[str, frozenset[tuple[str, str]]],
    visiting: frozenset[str],
) -> set[tuple[str, str]]:
    """(field, response key) of every selection of `names` at this level, through fragments (each
    fragment walked once: spreading one many times costs nothing more)."""
    found: set[tuple[str, str]] = set()
    for selection in selection_set.selections:
        if isinstance(selection, FieldNode):
            if selection.name.value in names:
                found.add((selection.name.value, selection.alias.value if selection.alias else selection.name.value))
        elif isinstance(selection, InlineFragmentNode):
            found |= _response_keys(selection.selection_set, fragments, names, memo, visiting)
        elif isinstance(selection, FragmentSpreadNode):
            name = selection.name.value
            fragment = fragments.get(name)
            if fragment is None or name in visiting:
                continue
            if name not in memo:
                memo[name] = frozenset(
                    _response_keys(fragment.selection_set, fragments, names, memo, visiting | {name})
                )
            found |= memo[name]
    return found


def repeated(operation: OperationDefinitionNode, document: DocumentNode) -> tuple[str, int] | None:
    """The first field of ONCE_PER_OPERATION the operation runs more than once, with how many times: once
    per response key (selections under one key merge into one execution; aliases do not)."""
    root = {"query": "Query", "mutation": "Mutation"}.get(operation.operation.value)
    names = frozenset(f for t, f in ONCE_PER_OPERATION if t == root)
    if not names:
        return None
    keys = _response_keys(operation.selection_set, fragments_of(document), names, {}, frozenset())
    for name in sorted(names):
        count = sum(1 for field, _ in keys if field == name)
        if count > 1:
            return name, count
    return None


class OncePerOperation(SchemaExtension):
    cache_size = 1024
    # one cache for the process, shared by every request's instance
    _cache: ClassVar[OrderedDict[tuple[int, str | None], tuple[DocumentNode, tuple[str, int] | None]]] = OrderedDict()

    def _measured(self, document: DocumentNode, operation: OperationDefinitionNode) -> tuple[str, int] | None:
        key = (id(document), self.execution_context.operation_name)
        cached = self._cache.get(key)
        if cached is not None and cached[0] is document:
            return cached[1]
        found = repeated(operation, document)
        self._cache[key] = (document, found)
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return found

    def on_validate(self) -> Iterator[None]:
        ec = self.execution_context
        document = ec.graphql_document
        if document is not None and not ec.pre_execution_errors:
            operation = get_operation_ast(document, ec.operation_name)
            if operation is not None:
                found = self._measured(document, operation)
                if found is not None:
                    refuse(ec, SelectedMoreThanOnce(*found))
        yield
