"""The depth limit: the most fields on one path from the operation's root, fragments expanded.

`{ me { id } }` has depth 2. Fragment spreads and inline fragments add no level of their own; the
fields inside them do, so nesting hidden in fragments (C-001) counts exactly as written inline.
"""

from __future__ import annotations

from graphql import (
    DocumentNode,
    FieldNode,
    FragmentSpreadNode,
    InlineFragmentNode,
    OperationDefinitionNode,
    SelectionSetNode,
)

from schema.introspection import INTROSPECTION_ROOTS
from schema.limits.base import Fragments, OperationLimit


def selection_depth(
    selection_set: SelectionSetNode, fragments: Fragments, memo: dict[str, int], visiting: frozenset[str] = frozenset()
) -> int:
    deepest = 0
    for selection in selection_set.selections:
        if isinstance(selection, FieldNode):
            depth = 1
            # introspection is answered from the schema itself, whose shape bounds it: tools' standard
            # introspection query nests `ofType` deeper than any data query needs
            if selection.selection_set is not None and selection.name.value not in INTROSPECTION_ROOTS:
                depth += selection_depth(selection.selection_set, fragments, memo, visiting)
        elif isinstance(selection, InlineFragmentNode):
            depth = selection_depth(selection.selection_set, fragments, memo, visiting)
        elif isinstance(selection, FragmentSpreadNode):
            name = selection.name.value
            fragment = fragments.get(name)
            if fragment is None or name in visiting:  # a cycle never validates; do not loop on one
                continue
            if name not in memo:
                memo[name] = selection_depth(fragment.selection_set, fragments, memo, visiting | {name})
            depth = memo[name]
        else:
            continue
        deepest = max(deepest, depth)
    return deepest


class DepthLimit(OperationLimit):
    field = "depth"
    name = "depth"

    def measure(self, document: DocumentNode, operation: OperationDefinitionNode, fragments: Fragments) -> int:
        return selection_depth(operation.selection_set, fragments, {})
