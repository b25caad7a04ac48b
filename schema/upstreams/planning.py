"""Planning: what each upstream receives for an operation, printed once per document and denied fields."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from graphql import (
    ArgumentNode,
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLInterfaceType,
    GraphQLNamedType,
    GraphQLObjectType,
    GraphQLSchema,
    GraphQLUnionType,
    InlineFragmentNode,
    NameNode,
    OperationDefinitionNode,
    OperationType,
    SelectionNode,
    SelectionSetNode,
    VariableDefinitionNode,
    VariableNode,
    get_named_type,
    parse_type,
    print_ast,
)

from schema.upstreams.composition import Composition

PRESET_VARIABLE_PREFIX = "portcullisPreset_"
_TYPENAME = FieldNode(name=NameNode(value="__typename"), arguments=(), directives=())


@dataclass(frozen=True, slots=True)
class Batch:
    upstream: str
    body_prefix: bytes  # the JSON request body up to the variables: {"query": ..., "operationName": ...,
    variables: tuple[str, ...]  # the operation's variables the forwarded selections use
    presets: Mapping[str, str]  # preset variable -> caller attribute
    keys: tuple[str, ...]  # root response keys answered by this batch
    fields: tuple[str, ...]  # root field names, in order (for the audit of mutations)
    mutation: bool


@dataclass(frozen=True, slots=True)
class OperationPlan:
    document: DocumentNode  # held so that node ids stay unique while the plan is cached
    batches: tuple[Batch, ...]
    by_key: Mapping[str, int]  # root response key -> batch index

    @property
    def keys(self) -> frozenset[str]:
        return frozenset(self.by_key)


class Planner:
    def __init__(
        self,
        composition: Composition,
        document: DocumentNode,
        operation: OperationDefinitionNode,
        denied: Mapping[int, Any],
    ) -> None:
        self.composition = composition
        self.document = document
        self.operation = operation
        self.denied = denied
        self.fragments = {d.name.value: d for d in document.definitions if isinstance(d, FragmentDefinitionNode)}
        self.kind = "mutation" if operation.operation is OperationType.MUTATION else "query"

    def _root_fields(
        self, selection_set: SelectionSetNode, visiting: frozenset[str] = frozenset()
    ) -> Iterator[FieldNode]:
        for selection in selection_set.selections:
            if isinstance(selection, FieldNode):
                yield selection
            elif isinstance(selection, InlineFragmentNode):
                yield from self._root_fields(selection.selection_set, visiting)
            elif isinstance(selection, FragmentSpreadNode):
                name = selection.name.value
                fragment = self.fragments.get(name)
                if fragment is not None and name not in visiting:
                    yield from self._root_fields(fragment.selection_set, visiting | {name})

    def plan(self) -> OperationPlan:
        runs: list[tuple[str, list[FieldNode]]] = []
        for node in self._root_fields(self.operation.selection_set):
            root = self.composition.roots.get((self.kind, node.name.value))
            if root is None or id(node) in self.denied:
                if self.kind == "mutation" and root is None:
                    runs.append(("", []))  # a local field ends a run of mutations
                continue
            if self.kind == "query":
                found = next((r for r in runs if r[0] == root.upstream), None)
                if found is None:
                    runs.append((root.upstream, [node]))
                else:
                    found[1].append(node)
            elif runs and runs[-1][0] == root.upstream:
                runs[-1][1].append(node)
            else:
                runs.append((root.upstream, [node]))
        batches: list[Batch] = []
        by_key: dict[str, int] = {}
        for upstream, nodes in runs:
            if not upstream:
                continue
            batch = self._batch(upstream, nodes)
            for key in batch.keys:
                by_key[key] = len(batches)
            batches.append(batch)
        return OperationPlan(self.document, tuple(batches), by_key)

    def _batch(self, upstream: str, nodes: list[FieldNode]) -> Batch:
        mounted = self.composition.upstreams[upstream]
        schema = mounted.schema
        root_type = schema.mutation_type if self.kind == "mutation" else schema.query_type
        assert root_type is not None
        cutter = _Cutter(schema, self.fragments, self.denied, mounted.preset_fields)
        selections = [cutter.field(node, root_type) for node in nodes]
        kept = [s for s in selections if s is not None]
        fragments = cutter.fragment_definitions()
        used = cutter.variables
        variable_definitions = [d for d in (self.operation.variable_definitions or ()) if d.variable.name.value in used]
        preset_definitions = [
            VariableDefinitionNode(
                variable=VariableNode(name=NameNode(value=PRESET_VARIABLE_PREFIX + arg)),
                type=parse_type(str(_preset_type(schema, mounted.preset_fields, arg))),
                directives=(),
            )
            for arg in sorted(cutter.presets)
        ]
        operation = OperationDefinitionNode(
            operation=self.operation.operation,
            name=self.operation.name,
            variable_definitions=(*variable_definitions, *preset_definitions),
            directives=(),
            selection_set=SelectionSetNode(selections=tuple(kept)),
        )
        text = print_ast(DocumentNode(definitions=(operation, *fragments)))
        prefix = b'{"query":' + orjson.dumps(text)
        if self.operation.name is not None:
            prefix += b',"operationName":' + orjson.dumps(self.operation.name.value)
        return Batch(
            upstream=upstream,
            body_prefix=prefix,
            variables=tuple(sorted(used)),
            presets={PRESET_VARIABLE_PREFIX + arg: mounted.config.presets[arg] for arg in cutter.presets},
            keys=tuple((n.alias or n.name).value for n in nodes),
            fields=tuple(n.name.value for n in nodes),
            mutation=self.kind == "mutation",
        )


def _preset_type(schema: GraphQLSchema, preset_fields: Mapping[tuple[str, str], Mapping[str, str]], arg: str) -> Any:
    for (type_name, field_name), presets in preset_fields.items():
        if arg in presets:
            gtype = schema.type_map[type_name]
            assert isinstance(gtype, GraphQLObjectType | GraphQLInterfaceType)
            return gtype.fields[field_name].args[arg].type
    raise KeyError(arg)


class _Cutter:
    """Copies selections for one upstream, without the denied fields, with presets added and `__typename`
    asked wherever an abstract type must be told apart."""

    def __init__(
        self,
        schema: GraphQLSchema,
        fragments: Mapping[str, FragmentDefinitionNode],
        denied: Mapping[int, Any],
        preset_fields: Mapping[tuple[str, str], Mapping[str, str]],
    ) -> None:
        self.schema = schema
        self.fragments = fragments
        self.denied = denied
        self.preset_fields = preset_fields
        self.variables: set[str] = set()
        self.presets: set[str] = set()
        self._fragments_out: dict[str, FragmentDefinitionNode] = {}
        self._pending: list[str] = []

    def field(self, node: FieldNode, parent: GraphQLNamedType) -> FieldNode | None:
        if id(node) in self.denied:
            return None
        name = node.name.value
        if name == "__typename":
            return node
        assert isinstance(parent, GraphQLObjectType | GraphQLInterfaceType)
        definition = parent.fields[name]
        arguments = list(node.arguments or ())
        for argument in arguments:
            self._collect_variables(argument.value)
        for arg in self.preset_fields.get((parent.name, name), {}):
            self.presets.add(arg)
            arguments.append(
                ArgumentNode(
                    name=NameNode(value=arg), value=VariableNode(name=NameNode(value=PRESET_VARIABLE_PREFIX + arg))
                )
            )
        for directive in node.directives or ():
            for argument in directive.arguments or ():
                self._collect_variables(argument.value)
        selection_set = None
        if node.selection_set is not None:
            selection_set = self.selection_set(node.selection_set, get_named_type(definition.type))
        return FieldNode(
            alias=node.alias,
            name=node.name,
            arguments=tuple(arguments),
            directives=node.directives,
            selection_set=selection_set,
        )

    def selection_set(self, selection_set: SelectionSetNode, parent: GraphQLNamedType) -> SelectionSetNode:
        kept: list[SelectionNode] = []
        for selection in selection_set.selections:
            if isinstance(selection, FieldNode):
                copied = self.field(selection, parent)
                if copied is not None:
                    kept.append(copied)
            elif isinstance(selection, InlineFragmentNode):
                target = (
                    self.schema.get_type(selection.type_condition.name.value) if selection.type_condition else parent
                )
                assert target is not None
                kept.append(
                    InlineFragmentNode(
                        type_condition=selection.type_condition,
                        directives=selection.directives,
                        selection_set=self.selection_set(selection.selection_set, target),
                    )
                )
            elif isinstance(selection, FragmentSpreadNode):
                self._want(selection.name.value)
                for directive in selection.directives or ():
                    for argument in directive.arguments or ():
                        self._collect_variables(argument.value)
                kept.append(selection)
        if isinstance(parent, GraphQLInterfaceType | GraphQLUnionType) or not kept:
            kept.append(_TYPENAME)
        return SelectionSetNode(selections=tuple(kept))

    def _want(self, name: str) -> None:
        if name not in self._fragments_out and name not in self._pending:
            self._pending.append(name)

    def fragment_definitions(self) -> list[FragmentDefinitionNode]:
        while self._pending:
            name = self._pending.pop()
            if name in self._fragments_out:
                continue
            fragment = self.fragments[name]
            target = self.schema.get_type(fragment.type_condition.name.value)
            assert target is not None
            # reserve the name first: a fragment spread inside itself is refused by validation anyway
            self._fragments_out[name] = fragment
            self._fragments_out[name] = FragmentDefinitionNode(
                name=fragment.name,
                type_condition=fragment.type_condition,
                directives=fragment.directives,
                selection_set=self.selection_set(fragment.selection_set, target),
                variable_definitions=fragment.variable_definitions,
            )
        return list(self._fragments_out.values())

    def _collect_variables(self, value: Any) -> None:
        if isinstance(value, VariableNode):
            self.variables.add(value.name.value)
            return
        for child in getattr(value, "values", None) or ():
            self._collect_variables(child)
        for child in getattr(value, "fields", None) or ():
            self._collect_variables(child.value)
