"""The Strawberry types generated from an upstream's SDL, in a module namespace of their own, and the field
extension that reads their values from the upstream's answer."""

from __future__ import annotations

import enum
import keyword
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any, NewType

import strawberry
from graphql import (
    GraphQLArgument,
    GraphQLEnumType,
    GraphQLField,
    GraphQLInputObjectType,
    GraphQLInterfaceType,
    GraphQLList,
    GraphQLNamedType,
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLScalarType,
    GraphQLSchema,
    GraphQLUnionType,
    Undefined,
    get_named_type,
    value_from_ast,
    value_from_ast_untyped,
)
from strawberry.annotation import StrawberryAnnotation
from strawberry.extensions import FieldExtension
from strawberry.types.arguments import StrawberryArgument

from schema.directives import Cost, Guard, requirement_from_directives
from schema.upstreams.sdl import rule_directives

# The gateway's directives, for an SDL that uses them without defining them.

MODULE_NAME = "portcullis_upstream_types"
_BUILTIN_SCALARS = {"String": "str", "Int": "int", "Float": "float", "Boolean": "bool", "ID": "strawberry.ID"}


class UpstreamRead(FieldExtension):
    """A field of an upstream type: its value is the upstream's answer under the field's response name."""

    def __init__(self, arguments: list[StrawberryArgument] | None = None) -> None:
        super().__init__()
        self.arguments = arguments

    def apply(self, field: Any) -> None:
        if self.arguments is not None:
            field.arguments = self.arguments

    def resolve(self, next_: Any, source: Any, info: Any, **kwargs: Any) -> Any:
        if type(source) is dict:
            return source.get(info.path.key)
        return None


def _identity(value: Any) -> Any:
    return value


def _literal(node: Any, variables: Any = None) -> Any:
    return value_from_ast_untyped(node, variables)


class TypeBuilder:
    """Generates the Strawberry types of every upstream in one module namespace."""

    def __init__(self, local_types: set[str], problems: list[str]) -> None:
        # (type, field) -> preset argument -> caller attribute, of the upstream being generated
        self.preset_fields: Mapping[tuple[str, str], Mapping[str, str]] = {}
        self.module = types.ModuleType(MODULE_NAME)
        self.module.__dict__.update({"typing": typing, "strawberry": strawberry})
        self.local_types = local_types
        self.problems = problems
        self.owner: dict[str, str] = {}  # type name -> upstream that brought it
        self.generated: dict[str, Any] = {}

    # -- type references ------------------------------------------------------------------------------
    def ref(self, gtype: Any) -> str:
        if isinstance(gtype, GraphQLNonNull):
            return self._ref_nullable(gtype.of_type)
        return f"typing.Optional[{self._ref_nullable(gtype)}]"

    def _ref_nullable(self, gtype: Any) -> str:
        if isinstance(gtype, GraphQLList):
            return f"typing.List[{self.ref(gtype.of_type)}]"
        name = gtype.name
        if name in _BUILTIN_SCALARS:
            return _BUILTIN_SCALARS[name]
        if isinstance(gtype, GraphQLUnionType):
            members = ", ".join(self.py(m.name) for m in gtype.types)
            return f"typing.Annotated[typing.Union[{members}], strawberry.union({name!r})]"
        return self.py(name)

    @staticmethod
    def py(name: str) -> str:
        return f"T_{name}"

    # -- types ----------------------------------------------------------------------------------------
    def reachable(self, schema: GraphQLSchema, roots: list[GraphQLField]) -> list[GraphQLNamedType]:
        seen: dict[str, GraphQLNamedType] = {}
        pending: list[Any] = []
        for f in roots:
            pending.append(f.type)
            pending.extend(a.type for a in f.args.values())
        while pending:
            named = get_named_type(pending.pop())
            if named.name in seen or named.name in _BUILTIN_SCALARS:
                continue
            seen[named.name] = named
            if isinstance(named, GraphQLObjectType | GraphQLInterfaceType):
                for f in named.fields.values():
                    pending.append(f.type)
                    pending.extend(a.type for a in f.args.values())
                pending.extend(named.interfaces)
                if isinstance(named, GraphQLInterfaceType):
                    pending.extend(schema.get_implementations(named).objects)
            elif isinstance(named, GraphQLUnionType):
                pending.extend(named.types)
            elif isinstance(named, GraphQLInputObjectType):
                pending.extend(f.type for f in named.fields.values())
        return list(seen.values())

    def claim(self, upstream: str, names: Iterable[str]) -> None:
        for name in names:
            if name in ("Query", "Mutation", "Subscription", "Plan"):
                continue
            if name in self.local_types:
                self.problems.append(f"upstream {upstream}: type {name} collides with a type of the gateway")
            elif name in self.owner and self.owner[name] != upstream:
                self.problems.append(
                    f"upstream {upstream}: type {name} collides with a type of upstream {self.owner[name]}"
                )
            else:
                self.owner[name] = upstream

    def arguments(
        self, schema: GraphQLSchema, args: Mapping[str, GraphQLArgument], skip: Iterable[str], where: str
    ) -> list[StrawberryArgument]:
        result = []
        for arg_name, arg in args.items():
            if arg_name in skip:
                continue
            directives = rule_directives(schema, arg.ast_node, self.problems, f"{where}({arg_name}:)")
            default = _default(arg.ast_node, arg.type, self.generated)
            result.append(
                StrawberryArgument(
                    python_name=python_name(arg_name),
                    graphql_name=arg_name,
                    type_annotation=StrawberryAnnotation(self.ref(arg.type), namespace=self.module.__dict__),
                    default=default,
                    description=arg.description,
                    directives=[d for d in directives if isinstance(d, Cost)],
                    deprecation_reason=arg.deprecation_reason,
                )
            )
        return result

    def output_field(
        self,
        schema: GraphQLSchema,
        type_name: str,
        name: str,
        gfield: GraphQLField,
        reader: UpstreamRead | None = None,
        skip_args: Iterable[str] = (),
    ) -> tuple[str, Any, list[Any]]:
        where = f"{type_name}.{name}"
        directives = rule_directives(schema, gfield.ast_node, self.problems, where)
        requirement = requirement_from_directives(directives)
        reader = reader if reader is not None else UpstreamRead()
        reader.arguments = self.arguments(schema, gfield.args, skip_args, where)
        # the last extension is the outermost: the guard refuses before the reader runs
        field_extensions: list[FieldExtension] = [reader]
        if requirement is not None:
            field_extensions.append(Guard(requirement))
        definition = strawberry.field(
            name=name,
            description=gfield.description,
            deprecation_reason=gfield.deprecation_reason,
            directives=directives,
            extensions=field_extensions,
        )
        return self.ref(gfield.type), definition, directives

    def object_like(self, schema: GraphQLSchema, gtype: GraphQLObjectType | GraphQLInterfaceType) -> None:
        annotations: dict[str, str] = {}
        namespace: dict[str, Any] = {"__module__": MODULE_NAME, "__annotations__": annotations}
        for name, gfield in gtype.fields.items():
            # a preset argument is the gateway's to fill, on every field that has one (C-136)
            presets = self.preset_fields.get((gtype.name, name), {})
            ref, definition, _ = self.output_field(schema, gtype.name, name, gfield, skip_args=presets)
            annotations[python_name(name)] = ref
            namespace[python_name(name)] = definition
        directives = rule_directives(schema, gtype.ast_node, self.problems, gtype.name)
        bases = tuple(self.generated[i.name] for i in gtype.interfaces if i.name in self.generated)
        if isinstance(gtype, GraphQLObjectType):
            type_name = gtype.name

            def is_type_of(cls: Any, obj: Any, info: Any) -> bool:
                # an abstract type's selections always ask `__typename`; a concrete one's need not
                return type(obj) is dict and obj.get("__typename", type_name) == type_name

            namespace["is_type_of"] = classmethod(is_type_of)
            cls = type(self.py(gtype.name), bases, namespace)
            decorated = strawberry.type(cls, name=gtype.name, description=gtype.description, directives=directives)
        else:
            cls = type(self.py(gtype.name), bases, namespace)
            decorated = strawberry.interface(cls, name=gtype.name, description=gtype.description, directives=directives)
        self.generated[gtype.name] = decorated
        setattr(self.module, self.py(gtype.name), decorated)

    def input_object(self, schema: GraphQLSchema, gtype: GraphQLInputObjectType) -> None:
        annotations: dict[str, str] = {}
        namespace: dict[str, Any] = {"__module__": MODULE_NAME, "__annotations__": annotations}
        for name, gfield in gtype.fields.items():
            annotations[python_name(name)] = self.ref(gfield.type)
            namespace[python_name(name)] = strawberry.field(
                name=name,
                description=gfield.description,
                default=_default(gfield.ast_node, gfield.type, self.generated),
            )
        cls = type(self.py(gtype.name), (), namespace)
        decorated = strawberry.input(cls, name=gtype.name, description=gtype.description)
        self.generated[gtype.name] = decorated
        setattr(self.module, self.py(gtype.name), decorated)

    def enum(self, schema: GraphQLSchema, gtype: GraphQLEnumType) -> None:
        members = enum.Enum(self.py(gtype.name), {v: v for v in gtype.values})  # type: ignore[misc]
        decorated = strawberry.enum(members, name=gtype.name, description=gtype.description)
        self.generated[gtype.name] = decorated
        setattr(self.module, self.py(gtype.name), decorated)

    def scalar(self, gtype: GraphQLScalarType) -> None:
        # an upstream's own scalar travels as the upstream wrote it, both ways
        new_type = NewType(self.py(gtype.name), object)  # type: ignore[misc]
        decorated = strawberry.scalar(
            new_type,
            name=gtype.name,
            description=gtype.description,
            serialize=_identity,
            parse_value=_identity,
            parse_literal=_literal,
        )
        self.generated[gtype.name] = decorated
        setattr(self.module, self.py(gtype.name), decorated)

    def generate(self, schema: GraphQLSchema, named: list[GraphQLNamedType]) -> None:
        order = {GraphQLScalarType: 0, GraphQLEnumType: 1, GraphQLInputObjectType: 2, GraphQLInterfaceType: 3}
        for gtype in sorted(named, key=lambda t: (order.get(type(t), 4), _depth(t))):
            if gtype.name in self.generated:
                continue
            if isinstance(gtype, GraphQLScalarType):
                self.scalar(gtype)
            elif isinstance(gtype, GraphQLEnumType):
                self.enum(schema, gtype)
            elif isinstance(gtype, GraphQLInputObjectType):
                self.input_object(schema, gtype)
            elif isinstance(gtype, GraphQLObjectType | GraphQLInterfaceType):
                self.object_like(schema, gtype)


def _depth(gtype: Any) -> int:
    """Interfaces implementing interfaces come after the ones they implement."""
    seen = 0
    pending = list(getattr(gtype, "interfaces", ()))
    while pending:
        seen += 1
        pending.extend(pending.pop().interfaces)
    return seen


def python_name(name: str) -> str:
    return f"{name}_" if keyword.iskeyword(name) or name.startswith("_") else name


def _default(node: Any, gtype: Any, generated: Mapping[str, Any]) -> Any:
    """The Python default of an argument or input field, from its SDL; an enum's default as its member. A list or
    input-object default is left to the upstream: the gateway sends the argument only when the caller does."""
    default = getattr(node, "default_value", None) if node is not None else None
    if default is None:
        return strawberry.UNSET
    named = get_named_type(gtype)
    if (
        isinstance(named, GraphQLInputObjectType)
        or isinstance(gtype, GraphQLList)
        or (isinstance(gtype, GraphQLNonNull) and isinstance(gtype.of_type, GraphQLList))
    ):
        return strawberry.UNSET
    value = value_from_ast(default, gtype)
    if value is Undefined or value is None:
        return strawberry.UNSET if value is Undefined else None
    if isinstance(named, GraphQLEnumType):
        return generated[named.name][str(value)] if named.name in generated else strawberry.UNSET
    return value
