"""The directive limit: directive usages in the operation (C-008).

Counted on the operation, its fields, inline fragments, spreads and the fragment definitions they
spread (once per spread). Repeating a non-repeatable directive at one location is already a
validation error; this bounds a flood spread over many locations.
"""

from __future__ import annotations

from typing import Any

from graphql import DocumentNode, OperationDefinitionNode

from schema.limits.base import Fragments, OperationLimit, expanded_count


def _directives(node: Any) -> int:
    return len(getattr(node, "directives", None) or ())


class DirectiveLimit(OperationLimit):
    field = "directives"
    name = "directives"

    def measure(self, document: DocumentNode, operation: OperationDefinitionNode, fragments: Fragments) -> int:
        return _directives(operation) + expanded_count(operation.selection_set, fragments, _directives)
