"""Static cost: what an operation would cost, computed from the document before it executes.

The IBM GraphQL cost specification, as Apollo Router and Cosmo apply it:

- a field returning an object weighs 1, a scalar or an enum 0; `@cost(weight:)` on the field, else
  on its return type, replaces that weight;
- an argument with `@cost(weight:)` adds its weight when the operation passes it;
- a list field costs its size times (its weight + the cost of its selection). The size is the value
  of a slicing argument named by `@listSize(slicingArguments:)` (a literal, a variable, else the
  argument's default), else `@listSize(assumedSize:)`, else the configured default list size. With
  `@listSize(sizedFields:)` (a connection) the size applies to the named child fields instead;
- a fragment or inline fragment costs what its selection costs, once per spread; an alias is a
  field like any other;
- a mutation operation adds a base cost of 10.

A negative size counts as 0 (the resolver refuses such an argument itself). The operation's cost is
left on the context (`operation_cost`) and reported in every response's `extensions.cost.requested`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from graphql import (
    DocumentNode,
    FieldNode,
    FragmentSpreadNode,
    GraphQLField,
    GraphQLInterfaceType,
    GraphQLList,
    GraphQLNamedType,
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLSchema,
    InlineFragmentNode,
    IntValueNode,
    OperationDefinitionNode,
    OperationType,
    SelectionSetNode,
    VariableNode,
    get_named_type,
    is_leaf_type,
)
from graphql.type import SchemaMetaFieldDef, TypeMetaFieldDef, TypeNameMetaFieldDef
from graphql.utilities import get_operation_ast
from strawberry.extensions import SchemaExtension

from authz.errors import OperationTooComplex
from schema.directives import Cost, ListSize
from schema.enums import Plan
from schema.introspection import INTROSPECTION_ROOTS
from schema.limits.base import Fragments, fragments_of, refuse
from schema.limits.plans import DEFAULT_LIST_SIZE, OPERATION_LIMITS, OperationLimits, limits_for

MUTATION_BASE_COST = 10


def _directives(graphql_thing: Any) -> tuple[Any, ...]:
    definition = (getattr(graphql_thing, "extensions", None) or {}).get("strawberry-definition")
    return tuple(getattr(definition, "directives", None) or ())


def _cost_of(graphql_thing: Any) -> int | None:
    for directive in _directives(graphql_thing):
        if isinstance(directive, Cost):
            return int(directive.weight)
    return None


@dataclass(frozen=True)
class FieldCost:
    weight: int
    is_list: bool
    argument_weights: Mapping[str, int] = field(default_factory=dict)
    list_size: ListSize | None = None
    argument_defaults: Mapping[str, Any] = field(default_factory=dict)


class CostModel:
    """Every field's weight, list size rule and argument weights, read once from the schema."""

    def __init__(self, schema: GraphQLSchema, *, default_list_size: int = DEFAULT_LIST_SIZE) -> None:
        self.schema = schema
        self.default_list_size = default_list_size
        self._fields: dict[tuple[str, str], FieldCost] = {}
        for type_name, gtype in schema.type_map.items():
            if isinstance(gtype, GraphQLObjectType | GraphQLInterfaceType):
                for field_name, gfield in gtype.fields.items():
                    self._fields[(type_name, field_name)] = self._describe(gfield)

    @staticmethod
    def _describe(gfield: GraphQLField) -> FieldCost:
        named = get_named_type(gfield.type)
        weight = _cost_of(gfield)
        if weight is None:
            weight = _cost_of(named)
        if weight is None:
            weight = 0 if is_leaf_type(named) else 1
        inner = gfield.type.of_type if isinstance(gfield.type, GraphQLNonNull) else gfield.type
        list_size = next((d for d in _directives(gfield) if isinstance(d, ListSize)), None)
        arguments = {name: w for name, arg in gfield.args.items() if (w := _cost_of(arg)) is not None}
        defaults = {name: arg.default_value for name, arg in gfield.args.items()}
        return FieldCost(weight, isinstance(inner, GraphQLList), arguments, list_size, defaults)

    def field(self, parent: GraphQLNamedType, name: str) -> tuple[FieldCost, GraphQLNamedType] | None:
        if name in ("__schema", "__type", "__typename"):
            meta = {"__schema": SchemaMetaFieldDef, "__type": TypeMetaFieldDef, "__typename": TypeNameMetaFieldDef}[
                name
            ]
            return self._describe(meta), get_named_type(meta.type)
        if not isinstance(parent, GraphQLObjectType | GraphQLInterfaceType) or name not in parent.fields:
            return None
        described = self._fields.get((parent.name, name)) or self._describe(parent.fields[name])
        return described, get_named_type(parent.fields[name].type)

    def estimate(
        self, document: DocumentNode, operation: OperationDefinitionNode, variables: Mapping[str, Any] | None
    ) -> tuple[int, bool]:
        """The operation's cost, and whether it read a variable (then it is not cached)."""
        run = _Estimate(self, fragments_of(document), variables or {})
        root = self.schema.get_root_type(operation.operation)
        if root is None:
            return 0, False
        cost = run.selection(operation.selection_set, root, None, frozenset())
        if operation.operation is OperationType.MUTATION:
            cost += MUTATION_BASE_COST
        return cost, run.used_variables


class _Estimate:
    def __init__(self, model: CostModel, fragments: Fragments, variables: Mapping[str, Any]) -> None:
        self.model = model
        self.fragments = fragments
        self.variables = variables
        self.used_variables = False
        self._memo: dict[tuple[str, int | None, frozenset[str] | None], int] = {}

    def selection(
        self,
        selection_set: SelectionSetNode,
        parent: GraphQLNamedType,
        sized: tuple[frozenset[str], int] | None,
        visiting: frozenset[str],
    ) -> int:
        total = 0
        for selection in selection_set.selections:
            if isinstance(selection, FieldNode):
                total += self.field(selection, parent, sized, visiting)
            elif isinstance(selection, InlineFragmentNode):
                target = (
                    self.model.schema.get_type(selection.type_condition.name.value)
                    if selection.type_condition
                    else parent
                )
                total += self.selection(selection.selection_set, target or parent, sized, visiting)
            elif isinstance(selection, FragmentSpreadNode):
                name = selection.name.value
                fragment = self.fragments.get(name)
                if fragment is None or name in visiting:
                    continue
                key = (name, sized[1] if sized else None, sized[0] if sized else None)
                if key not in self._memo:
                    target = self.model.schema.get_type(fragment.type_condition.name.value) or parent
                    self._memo[key] = self.selection(fragment.selection_set, target, sized, visiting | {name})
                total += self._memo[key]
        return total

    def field(
        self,
        node: FieldNode,
        parent: GraphQLNamedType,
        sized: tuple[frozenset[str], int] | None,
        visiting: frozenset[str],
    ) -> int:
        if node.name.value in INTROSPECTION_ROOTS:
            return 0  # answered from the schema in memory, not from data (see depth.py)
        found = self.model.field(parent, node.name.value)
        if found is None:
            return 0
        described, named = found
        arguments = {arg.name.value: arg.value for arg in node.arguments or ()}
        argument_cost = sum(w for name, w in described.argument_weights.items() if name in arguments)
        size = self.size(described, arguments)
        child_sized = None
        if described.list_size is not None and described.list_size.sized_fields and size is not None:
            child_sized = (frozenset(described.list_size.sized_fields), size)
        below = self.selection(node.selection_set, named, child_sized, visiting) if node.selection_set else 0
        own = described.weight + below
        if sized is not None and node.name.value in sized[0]:
            count = sized[1]
        elif described.is_list and not child_sized:
            count = size if size is not None else self.model.default_list_size
        else:
            count = 1
        return count * own + argument_cost

    def size(self, described: FieldCost, arguments: Mapping[str, Any]) -> int | None:
        rule = described.list_size
        if rule is None:
            return None
        values = [
            v for name in rule.slicing_arguments or () if (v := self.argument(name, arguments, described)) is not None
        ]
        if values:
            return max(0, max(values))
        return rule.assumed_size

    def argument(self, name: str, arguments: Mapping[str, Any], described: FieldCost) -> int | None:
        node = arguments.get(name)
        value: Any
        if isinstance(node, IntValueNode):
            value = int(node.value)
        elif isinstance(node, VariableNode):
            self.used_variables = True
            value = self.variables.get(node.name.value, described.argument_defaults.get(name))
        elif node is None:
            value = described.argument_defaults.get(name)
        else:
            value = None
        return value if isinstance(value, int) and not isinstance(value, bool) else None


class CostLimit(SchemaExtension):
    """Refuses an operation over its plan's maximum cost; reports the cost of every operation."""

    name = "cost"
    cache_size = 1024
    # one cache for the process, shared by every request's instance
    _cache: ClassVar[dict[tuple[int, str | None], tuple[DocumentNode, int]]] = {}

    def __init__(self, *, model: CostModel, table: Mapping[Plan, OperationLimits] = OPERATION_LIMITS) -> None:
        super().__init__()
        self.model = model
        self.table = table
        self.requested = 0

    def _estimate(self, document: DocumentNode, operation: OperationDefinitionNode) -> int:
        """The cost; kept per document when it read no variable (then it is the same for every request)."""
        ec = self.execution_context
        key = (id(document), ec.operation_name)
        cached = self._cache.get(key)
        if cached is not None and cached[0] is document:
            return cached[1]
        cost, used_variables = self.model.estimate(document, operation, ec.variables)
        if not used_variables:
            if len(self._cache) >= self.cache_size:
                self._cache.pop(next(iter(self._cache)))
            self._cache[key] = (document, cost)
        return cost

    def on_validate(self) -> Iterator[None]:
        ec = self.execution_context
        document = ec.graphql_document
        if document is not None and not ec.pre_execution_errors:
            operation = get_operation_ast(document, ec.operation_name)
            if operation is not None:
                cost = self._estimate(document, operation)
                self.requested = cost
                ec.context.operation_cost = cost
                maximum = limits_for(ec.context.principal, self.table).cost
                if cost > maximum:
                    refuse(ec, OperationTooComplex(self.name, maximum, cost))
        yield

    def get_results(self) -> dict[str, Any]:
        return {"cost": {"requested": self.requested}}
