"""Arguments the database can store (C-133): no string of an operation's arguments may hold U+0000 or a
lone surrogate (see store/text.py), whatever its type (String, ID, a DateTime, a JSON scalar's keys and
values), at any depth of input objects and lists. Such an operation is refused before execution, like an
operation over a limit: one `BAD_USER_INPUT` error naming the argument or the variable, HTTP 400, nothing
executed and nothing written. Resolvers then never meet such a value, and need no check of their own.

Literals depend on the document alone: they are checked once per parsed document (the parser cache hands
the same document back for the same text), so a cached document costs a dictionary lookup. Variables
change with every request and are checked every time: a walk over what the body carried, keys included,
iterative (a JSON body may nest deeper than Python recurses), and nothing at all without variables.
Descriptions of the document are not arguments and are not checked: nothing reads them.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar

from graphql import DocumentNode, GraphQLError, ListValueNode, ObjectValueNode, StringValueNode
from strawberry.extensions import SchemaExtension

from authz.errors import BadUserInput
from store.audit import clean_text
from store.text import storable

WHAT = "a character that cannot be stored (U+0000 or an unpaired surrogate)"
# (where, the string's node) of the first literal that cannot be stored, or None
Finding = tuple[str, StringValueNode] | None


def _name(segment: object) -> str:
    # a path segment may be the offending key itself: shown escaped, and short
    return clean_text(segment, 64)


def unstorable_literal(document: DocumentNode) -> Finding:
    """The first string literal in an argument or a variable's default value that cannot be stored.

    Only where values can be is visited (arguments of fields and directives, variables' defaults), not
    every node of the document."""
    nodes: list[Any] = list(reversed(document.definitions))
    values: list[tuple[Any, str]] = []
    while nodes:
        node = nodes.pop()
        for argument in getattr(node, "arguments", None) or ():
            values.append((argument.value, argument.name.value))
        for definition in getattr(node, "variable_definitions", None) or ():
            if definition.default_value is not None:
                values.append((definition.default_value, f"${definition.variable.name.value}"))
            nodes.extend(definition.directives or ())
        while values:
            value, where = values.pop()
            if isinstance(value, StringValueNode):
                if not storable(value.value):
                    return where, value
            elif isinstance(value, ObjectValueNode):
                values.extend((f.value, f"{where}.{f.name.value}") for f in reversed(value.fields))
            elif isinstance(value, ListValueNode):
                values.extend((v, f"{where}.{i}") for i, v in reversed(list(enumerate(value.values))))
        selection_set = getattr(node, "selection_set", None)
        if selection_set is not None:
            nodes.extend(reversed(selection_set.selections))
        nodes.extend(reversed(getattr(node, "directives", None) or ()))
    return None


def _all_storable(value: Any) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if not storable(item):
                return False
        elif isinstance(item, list | tuple):
            stack.extend(item)
        elif isinstance(item, dict | Mapping):  # a dict is told apart without the slower check of the ABC
            for key in item:
                if isinstance(key, str) and not storable(key):
                    return False
            stack.extend(item.values())
    return True


def unstorable_variable(variables: Mapping[str, Any]) -> str | None:
    """Where the first string (or object key) of the variables that cannot be stored is: `name.key.0`."""
    if _all_storable(variables):
        return None
    for name in variables:
        if not storable(name):
            return _name(name)
    stack: list[tuple[Any, str]] = [(value, _name(name)) for name, value in reversed(list(variables.items()))]
    while stack:
        item, where = stack.pop()
        if isinstance(item, str):
            if not storable(item):
                return where
        elif isinstance(item, Mapping):
            for key in item:
                if isinstance(key, str) and not storable(key):
                    return f"{where}.{_name(key)}"
            stack.extend((v, f"{where}.{_name(k)}") for k, v in reversed(list(item.items())))
        elif isinstance(item, list | tuple):
            stack.extend((v, f"{where}.{i}") for i, v in reversed(list(enumerate(item))))
    return None  # pragma: no cover (the first walk found one)


class StorableArguments(SchemaExtension):
    """Installed after the validation cache, it decides in `on_validate`, before the operation limits."""

    cache_size: ClassVar[int] = 1024
    _cache: ClassVar[OrderedDict[int, tuple[DocumentNode, Finding]]] = OrderedDict()

    @classmethod
    def literal(cls, document: DocumentNode) -> Finding:
        cached = cls._cache.get(id(document))
        if cached is not None and cached[0] is document:
            return cached[1]
        found = unstorable_literal(document)
        cls._cache[id(document)] = (document, found)
        if len(cls._cache) > cls.cache_size:
            cls._cache.popitem(last=False)
        return found

    def on_validate(self) -> Iterator[None]:
        ec = self.execution_context
        document = ec.graphql_document
        if document is not None and not ec.pre_execution_errors:
            error: GraphQLError | None = None
            found = self.literal(document)
            if found is not None:
                where, node = found
                exc = BadUserInput(f'Argument "{where}" contains {WHAT}.', argument=where)
                error = GraphQLError(exc.message, nodes=[node], original_error=exc)
            elif ec.variables:
                variable = unstorable_variable(ec.variables)
                if variable is not None:
                    exc = BadUserInput(f'Variable "${variable}" contains {WHAT}.', variable=variable)
                    error = GraphQLError(exc.message, original_error=exc)
            if error is not None:
                ec.pre_execution_errors = [error]
                response = getattr(ec.context, "response", None)
                if response is not None:
                    response.status_code = 400
        yield
