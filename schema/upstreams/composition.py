"""Composition: each upstream's SDL turned into types of the gateway's own schema.

An upstream's root query and mutation fields are mounted on the gateway's root types; the types they reach
come along under their own names. The rules written on the SDL with the gateway's directives become the
same directives and guards the gateway's own fields carry, so that authorization, introspection per caller,
the explain header, the authz report, operation limits and cost budgets treat an upstream field exactly as a
local one: there is one schema, and one way through it.

Default deny: a root field without a rule is not mounted at all (nothing reachable only through it can be
selected); the authz report lists it as unruled. A field of a type reached through a ruled root field is
covered by that rule unless it carries its own.

Types are generated as Strawberry types in a module of their own (`portcullis_upstream_types`), so that the
types of one upstream may refer to each other in any order. Their fields resolve by reading the upstream's
answer (a JSON object keyed by response names), which `schema.upstreams.forwarding` fetches once per
upstream and operation.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import strawberry
from graphql import (
    GraphQLField,
    GraphQLInterfaceType,
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLSchema,
    specified_scalar_types,
)

from resolvers.upstream_client import UpstreamConfig
from schema.directives import requirement_from_directives
from schema.upstreams.sdl import (
    PRESET_ATTRIBUTES,
    named_permissions,
    parse_upstream_sdl,
    rule_directives,
)
from schema.upstreams.types import MODULE_NAME, TypeBuilder, python_name

# The gateway's directives, for an SDL that uses them without defining them.


class CompositionError(Exception):
    """Every problem found in the upstreams, at once."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True, slots=True)
class RootField:
    upstream: str
    operation: str  # "query" | "mutation"
    name: str


@dataclass
class MountedUpstream:
    config: UpstreamConfig
    schema: GraphQLSchema  # the upstream's own schema, as its SDL states it (presets included)
    permissions: frozenset[str]  # every permission its SDL names: what its context token may carry
    query_fields: list[str] = field(default_factory=list)
    mutation_fields: list[str] = field(default_factory=list)
    unruled: list[tuple[str, str]] = field(default_factory=list)  # (root type, field) left unmounted
    subscriptions: list[str] = field(default_factory=list)  # subscription fields: not forwarded by this version
    preset_fields: dict[tuple[str, str], dict[str, str]] = field(default_factory=dict)  # (type, field) -> arg: attr


@dataclass
class Composition:
    upstreams: dict[str, MountedUpstream]
    roots: dict[tuple[str, str], RootField]  # ("query"|"mutation", field) -> where it lives
    query: type | None = None  # a Strawberry type holding every mounted root query field
    mutation: type | None = None

    @property
    def empty(self) -> bool:
        return not self.upstreams

    def permissions_of(self, upstream: str) -> frozenset[str]:
        return self.upstreams[upstream].permissions

    def unruled(self) -> Iterable[tuple[str, str, str]]:
        for mounted in self.upstreams.values():
            for type_name, field_name in mounted.unruled:
                yield mounted.config.name, type_name, field_name


def compose(configs: list[UpstreamConfig], local: GraphQLSchema) -> Composition:
    """Every upstream mounted beside the gateway's own schema `local`; `CompositionError` lists every problem."""
    problems: list[str] = []
    local_types = {name for name in local.type_map if not name.startswith("__")} - set(specified_scalar_types)
    local_roots = {
        "query": set(local.query_type.fields) if local.query_type else set(),
        "mutation": set(local.mutation_type.fields) if local.mutation_type else set(),
    }
    builder = TypeBuilder(local_types, problems)
    sys.modules[MODULE_NAME] = builder.module
    roots: dict[tuple[str, str], RootField] = {}
    mounted: dict[str, MountedUpstream] = {}
    root_namespaces: dict[str, tuple[dict[str, str], dict[str, Any]]] = {
        "query": ({}, {"__module__": MODULE_NAME}),
        "mutation": ({}, {"__module__": MODULE_NAME}),
    }
    seen_names: set[str] = set()
    parsed: list[tuple[UpstreamConfig, GraphQLSchema]] = []
    for config in configs:
        if config.name in seen_names:
            problems.append(f"upstream {config.name}: the name is used twice")
            continue
        seen_names.add(config.name)
        schema, found = parse_upstream_sdl(config)
        problems.extend(found)
        if schema is not None:
            parsed.append((config, schema))
    from schema.upstreams.forwarding import UpstreamRoot  # the field extension that forwards

    for config, schema in parsed:
        upstream = MountedUpstream(config=config, schema=schema, permissions=named_permissions(schema))
        mounted[config.name] = upstream
        preset_names = set(config.presets)
        for attribute in sorted(set(config.presets.values()) - PRESET_ATTRIBUTES):
            problems.append(
                f"upstream {config.name}: preset attribute {attribute!r} is unknown "
                f"(one of {', '.join(sorted(PRESET_ATTRIBUTES))})"
            )
        used_presets: set[str] = set()
        if schema.subscription_type is not None:
            upstream.subscriptions.extend(schema.subscription_type.fields)
        ruled: list[tuple[str, str, GraphQLField]] = []
        for operation, root in (("query", schema.query_type), ("mutation", schema.mutation_type)):
            if root is None:
                continue
            for name, gfield in root.fields.items():
                directives = rule_directives(
                    schema, gfield.ast_node, problems, f"upstream {config.name}: {root.name}.{name}"
                )
                if requirement_from_directives(directives) is None:
                    upstream.unruled.append((root.name, name))
                    continue
                if name in local_roots[operation]:
                    problems.append(
                        f"upstream {config.name}: root field {root.name}.{name} collides with the gateway's"
                    )
                    continue
                if (operation, name) in roots:
                    other = roots[(operation, name)].upstream
                    problems.append(
                        f"upstream {config.name}: root field {root.name}.{name} collides with upstream {other}'s"
                    )
                    continue
                roots[(operation, name)] = RootField(config.name, operation, name)
                ruled.append((operation, root.name, gfield))
                (upstream.query_fields if operation == "query" else upstream.mutation_fields).append(name)
        for gtype in schema.type_map.values():
            if gtype.name.startswith("__") or gtype in (schema.query_type, schema.mutation_type):
                continue
            where = f"upstream {config.name}: {gtype.name}"
            rule_directives(schema, gtype.ast_node, problems, where)
            if isinstance(gtype, GraphQLObjectType | GraphQLInterfaceType):
                for field_name, gfield in gtype.fields.items():
                    rule_directives(schema, gfield.ast_node, problems, f"{where}.{field_name}")
        reachable = builder.reachable(schema, [g for _, _, g in ruled])
        builder.claim(config.name, [t.name for t in reachable])
        for gtype in [
            *(t for t in schema.type_map.values() if isinstance(t, GraphQLObjectType | GraphQLInterfaceType))
        ]:
            for field_name, gfield in gtype.fields.items():
                hits = {a: config.presets[a] for a in gfield.args if a in preset_names}
                if hits:
                    upstream.preset_fields[(gtype.name, field_name)] = hits
                    used_presets.update(hits)
        for missing in sorted(preset_names - used_presets):
            problems.append(f"upstream {config.name}: preset {missing!r} names an argument no field has")
        if problems:
            continue
        builder.preset_fields = upstream.preset_fields
        builder.generate(schema, reachable)
        for operation, root_name, gfield in ruled:
            name = next(
                n for n, f in (schema.get_root_type(_op(operation)) or _EMPTY_ROOT).fields.items() if f is gfield
            )
            skip = set(upstream.preset_fields.get((root_name, name), {}))
            ref, definition, _ = builder.output_field(
                schema,
                root_name,
                name,
                gfield,
                UpstreamRoot(config.name, operation, nullable=not isinstance(gfield.type, GraphQLNonNull)),
                skip_args=skip,
            )
            annotations, namespace = root_namespaces[operation]
            attr = f"{config.name.replace('-', '_')}__{python_name(name)}"
            annotations[attr] = ref
            namespace[attr] = definition
    if problems:
        raise CompositionError(list(dict.fromkeys(problems)))
    composition = Composition(upstreams=mounted, roots=roots)
    for operation in ("query", "mutation"):
        annotations, namespace = root_namespaces[operation]
        if annotations:
            namespace["__annotations__"] = annotations
            cls = type(f"Upstream{operation.title()}", (), namespace)
            decorated = strawberry.type(cls, name="Query" if operation == "query" else "Mutation")
            setattr(builder.module, cls.__name__, decorated)
            if operation == "query":
                composition.query = decorated
            else:
                composition.mutation = decorated
    return composition


def _op(operation: str) -> Any:
    from graphql import OperationType

    return OperationType.QUERY if operation == "query" else OperationType.MUTATION


_EMPTY_ROOT = GraphQLObjectType("Empty", {})
