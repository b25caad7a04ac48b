"""The root-field limit: fields selected at the operation's root, through fragments too.

Each root field is an independent entry point (a query, or a mutation run in order), so their
number bounds how much unrelated work one request starts.
"""

from __future__ import annotations

from typing import Any

from graphql import DocumentNode, FieldNode, OperationDefinitionNode

from schema.limits.base import Fragments, OperationLimit, expanded_count


def _field(node: Any) -> int:
    return 1 if isinstance(node, FieldNode) else 0


class RootFieldLimit(OperationLimit):
    field = "root_fields"
    name = "rootFields"

    def measure(self, document: DocumentNode, operation: OperationDefinitionNode, fragments: Fragments) -> int:
        return expanded_count(operation.selection_set, fragments, _field, into_fields=False)
