"""Introspection answers with the schema as the caller may use it.

Fields whose rule the caller does not satisfy are absent from `__schema` and `__type`, and so is every
type the caller can no longer reach from the root through the fields that remain. The trimmed schema
is built once per (authenticated, permission set, plan) from the full schema's introspection data and
cached; an operation that asks for `__schema` or `__type` has those root fields answered from it.

The operation itself resolves those fields on the full schema (graphql-core answers them itself); the
trimmed answer then replaces them. That replacement fails closed (C-129): when the caller's schema
cannot be built, or the introspection fields do not execute on it without an error (a variable typed
with a type the caller cannot see, on a field that never runs, is valid against the full schema and
means nothing in the caller's), the operation answers that error and no data, never what it resolved on
the full schema. Only the response keys the operation produced are replaced: a field skipped there stays
absent.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from typing import Any

from graphql import (
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    GraphQLSchema,
    InlineFragmentNode,
    OperationDefinitionNode,
    SelectionSetNode,
    build_client_schema,
    execute,
    introspection_from_schema,
)

from authz import Principal, Requirement, decide

INTROSPECTION_ROOTS = frozenset({"__schema", "__type"})
_ALWAYS = frozenset({"String", "Boolean", "ID", "Int", "Float"})


def _named(ref: dict[str, Any] | None) -> str | None:
    while ref is not None and ref.get("ofType") is not None:
        ref = ref["ofType"]
    return ref.get("name") if ref else None


def introspection_fields(document: DocumentNode, operation: OperationDefinitionNode) -> list[FieldNode]:
    """The root `__schema`/`__type` fields of an operation, found through root fragments too."""
    fragments = {d.name.value: d for d in document.definitions if isinstance(d, FragmentDefinitionNode)}
    found: list[FieldNode] = []

    def visit(selection_set: SelectionSetNode, seen: frozenset[str]) -> None:
        for s in selection_set.selections:
            if isinstance(s, FieldNode) and s.name.value in INTROSPECTION_ROOTS:
                found.append(s)
            elif isinstance(s, InlineFragmentNode):
                visit(s.selection_set, seen)
            elif isinstance(s, FragmentSpreadNode) and s.name.value in fragments and s.name.value not in seen:
                visit(fragments[s.name.value].selection_set, seen | {s.name.value})

    visit(operation.selection_set, frozenset())
    return found


class IntrospectionFailed(Exception):
    """The caller's introspection cannot be answered on its own schema: the operation answers `errors`."""

    def __init__(self, errors: list[GraphQLError]) -> None:
        super().__init__("introspection failed on the caller's schema")
        self.errors = errors


class IntrospectionFilter:
    def __init__(self, schema: GraphQLSchema, rules: dict[tuple[str, str], Requirement], cache_size: int = 256) -> None:
        self.full: Any = introspection_from_schema(schema)
        self.rules = rules
        self._cache: OrderedDict[tuple[Any, ...], GraphQLSchema] = OrderedDict()
        self._cache_size = cache_size

    def schema_for(self, principal: Principal) -> GraphQLSchema:
        key = (principal.is_authenticated, principal.effective_permissions, principal.plan)
        cached = self._cache.get(key)
        if cached is None:
            cached = self._build(principal)
            self._cache[key] = cached
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return cached

    def _build(self, principal: Principal) -> GraphQLSchema:
        data: Any = copy.deepcopy(self.full)
        schema = data["__schema"]
        hidden = {tf for tf, req in self.rules.items() if not decide(principal, req)}
        types = {t["name"]: t for t in schema["types"]}
        for t in types.values():
            if t.get("fields") is not None:
                t["fields"] = [f for f in t["fields"] if (t["name"], f["name"]) not in hidden]
        roots = [r["name"] for r in (schema["queryType"], schema["mutationType"]) if r and types[r["name"]]["fields"]]
        reachable = set(roots)
        frontier = list(roots)
        while frontier:
            t = types[frontier.pop()]
            refs: list[str | None] = []
            for f in t.get("fields") or ():
                refs.append(_named(f["type"]))
                refs.extend(_named(a["type"]) for a in f.get("args") or ())
            refs.extend(_named(f["type"]) for f in t.get("inputFields") or ())
            refs.extend(_named(i) for i in t.get("interfaces") or ())
            refs.extend(_named(p) for p in t.get("possibleTypes") or ())
            for name in refs:
                if name is not None and name not in reachable and name in types:
                    reachable.add(name)
                    frontier.append(name)
        keep = reachable | _ALWAYS | {n for n in types if n.startswith("__")}
        schema["types"] = [t for t in schema["types"] if t["name"] in keep]
        for t in schema["types"]:
            if t.get("possibleTypes") is not None:
                t["possibleTypes"] = [p for p in t["possibleTypes"] if _named(p) in keep]
            if t.get("interfaces") is not None:
                t["interfaces"] = [i for i in t["interfaces"] if _named(i) in keep]
        for root in ("mutationType", "subscriptionType"):
            if schema[root] and schema[root]["name"] not in keep:
                schema[root] = None
        # every caller reaches a public query field (`signInOptions`): the query root is never empty, and the
        # trimmed schema is a valid one, as GraphiQL and code generators require
        return build_client_schema(data)

    def answer(
        self,
        document: DocumentNode,
        operation: OperationDefinitionNode,
        fields: list[FieldNode],
        principal: Principal,
        variables: dict[str, Any] | None,
    ) -> dict[str, Any]:
        """The values of the operation's introspection fields, computed on the caller's schema;
        `IntrospectionFailed` unless every one of them executes there without an error."""
        only = OperationDefinitionNode(
            operation=operation.operation,
            name=operation.name,
            directives=(),
            variable_definitions=operation.variable_definitions,
            selection_set=SelectionSetNode(selections=tuple(fields)),
        )
        fragments = [d for d in document.definitions if isinstance(d, FragmentDefinitionNode)]
        result: Any = execute(
            self.schema_for(principal), DocumentNode(definitions=(only, *fragments)), variable_values=variables
        )
        if result.errors or result.data is None:
            raise IntrospectionFailed(list(result.errors or ()) or [GraphQLError("Introspection failed.")])
        return dict(result.data)

    def replace(
        self,
        data: dict[str, Any],
        document: DocumentNode,
        operation: OperationDefinitionNode,
        fields: list[FieldNode],
        principal: Principal,
        variables: dict[str, Any] | None,
    ) -> None:
        """Replaces, in the operation's `data`, what its introspection fields resolved on the full schema
        with the caller's answer; raises (and replaces nothing) when there is no such answer."""
        keys = [k for k in dict.fromkeys(f.alias.value if f.alias else f.name.value for f in fields) if k in data]
        if not keys:
            return
        trimmed = self.answer(document, operation, fields, principal, variables)
        if any(k not in trimmed for k in keys):
            raise IntrospectionFailed([GraphQLError("Introspection failed.")])
        for key in keys:
            data[key] = trimmed[key]
