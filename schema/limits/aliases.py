"""The alias limit: aliased fields in the operation, each fragment counted once per spread.

Aliases are how one document asks for the same field many times (C-002) or signs in a hundred times
(C-003); refused here, none of those fields' resolvers runs.
"""

from __future__ import annotations

from typing import Any

from graphql import DocumentNode, FieldNode, OperationDefinitionNode

from schema.limits.base import Fragments, OperationLimit, expanded_count


def _aliased(node: Any) -> int:
    return 1 if isinstance(node, FieldNode) and node.alias is not None else 0


class AliasLimit(OperationLimit):
    field = "aliases"
    name = "aliases"

    def measure(self, document: DocumentNode, operation: OperationDefinitionNode, fragments: Fragments) -> int:
        return expanded_count(operation.selection_set, fragments, _aliased)
