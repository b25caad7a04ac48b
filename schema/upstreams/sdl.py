"""The upstream SDL: parsed with the gateway's directives, and the rules it states."""

from __future__ import annotations

from typing import Any

from graphql import (
    DirectiveDefinitionNode,
    DocumentNode,
    EnumTypeDefinitionNode,
    GraphQLError,
    GraphQLInterfaceType,
    GraphQLObjectType,
    GraphQLSchema,
    build_ast_schema,
    get_directive_values,
    parse,
)

from authz import is_permission
from resolvers.upstream_client import UpstreamConfig
from schema.directives import Authenticated, Cost, ListSize, RequiresPlan, RequiresScopes
from schema.enums import Plan

# The gateway's directives, for an SDL that uses them without defining them.

PRELUDE = {
    "authenticated": "directive @authenticated on OBJECT | FIELD_DEFINITION | INTERFACE | SCALAR | ENUM",
    "requiresScopes": "directive @requiresScopes(scopes: [[String!]!]!) on OBJECT | FIELD_DEFINITION | INTERFACE "
    "| SCALAR | ENUM",
    "requiresPlan": "directive @requiresPlan(plan: Plan!) on OBJECT | FIELD_DEFINITION",
    "cost": "directive @cost(weight: Int!) on FIELD_DEFINITION | OBJECT | ARGUMENT_DEFINITION | SCALAR | ENUM "
    "| INPUT_FIELD_DEFINITION",
    "listSize": "directive @listSize(assumedSize: Int, slicingArguments: [String!], sizedFields: [String!], "
    "requireOneSlicingArgument: Boolean = true) on FIELD_DEFINITION",
}
PLAN_ENUM = "enum Plan { FREE STARTER PROFESSIONAL ENTERPRISE }"

# What a preset may fill an argument with: an attribute of the caller, never anything the caller sends.
PRESET_ATTRIBUTES: frozenset[str] = frozenset(
    {"organization.id", "organization.plan", "subject.id", "subject.kind", "request.id", "client.ip"}
)


def parse_upstream_sdl(config: UpstreamConfig) -> tuple[GraphQLSchema | None, list[str]]:
    """The upstream's schema from its SDL, with the gateway's directives defined where the SDL omits them."""
    where = f"upstream {config.name}"
    try:
        document = parse(config.sdl)
    except GraphQLError as exc:
        return None, [f"{where}: the schema is not valid SDL: {exc.message} {_location(exc)}".rstrip()]
    defined = {d.name.value for d in document.definitions if isinstance(d, DirectiveDefinitionNode)}
    has_plan = any(isinstance(d, EnumTypeDefinitionNode) and d.name.value == "Plan" for d in document.definitions)
    extra = [text for name, text in PRELUDE.items() if name not in defined]
    if extra and not has_plan and "requiresPlan" not in defined:
        extra.append(PLAN_ENUM)
    try:
        full: DocumentNode = parse("\n".join([config.sdl, *extra])) if extra else document
        schema = build_ast_schema(full)
    except (GraphQLError, TypeError) as exc:
        message = exc.message if isinstance(exc, GraphQLError) else str(exc)
        return None, [f"{where}: the schema is not valid: {message}"]
    return schema, []


def _location(exc: GraphQLError) -> str:
    if exc.locations:
        loc = exc.locations[0]
        return f"(line {loc.line}, column {loc.column})"
    return ""


def rule_directives(schema: GraphQLSchema, node: Any, problems: list[str], where: str) -> list[Any]:
    """The gateway directive instances written on an SDL element (a field, a type or an argument)."""
    if node is None:
        return []
    found: list[Any] = []
    directive = schema.get_directive("authenticated")
    if directive is not None and get_directive_values(directive, node) is not None:
        found.append(Authenticated())
    directive = schema.get_directive("requiresScopes")
    values = get_directive_values(directive, node) if directive is not None else None
    if values is not None:
        groups = [list(g) for g in values["scopes"]]
        unknown = sorted({p for g in groups for p in g if not is_permission(p)})
        if unknown:
            problems.append(f"{where}: @requiresScopes names unknown permission(s): {', '.join(unknown)}")
        elif not groups or any(not g for g in groups):
            problems.append(f"{where}: @requiresScopes needs at least one permission in every group")
        else:
            found.append(RequiresScopes(scopes=groups))
    directive = schema.get_directive("requiresPlan")
    values = get_directive_values(directive, node) if directive is not None else None
    if values is not None:
        try:
            found.append(RequiresPlan(plan=Plan(str(values["plan"]).lower())))
        except ValueError:
            problems.append(f"{where}: @requiresPlan names an unknown plan {values['plan']!r}")
    directive = schema.get_directive("cost")
    values = get_directive_values(directive, node) if directive is not None else None
    if values is not None:
        found.append(Cost(weight=int(values["weight"])))
    directive = schema.get_directive("listSize")
    values = get_directive_values(directive, node) if directive is not None else None
    if values is not None:
        found.append(
            ListSize(
                assumed_size=values.get("assumedSize"),
                slicing_arguments=values.get("slicingArguments"),
                sized_fields=values.get("sizedFields"),
                require_one_slicing_argument=values.get("requireOneSlicingArgument", True),
            )
        )
    return found


def named_permissions(schema: GraphQLSchema) -> frozenset[str]:
    """Every permission the SDL's @requiresScopes name, anywhere."""
    directive = schema.get_directive("requiresScopes")
    if directive is None:
        return frozenset()
    names: set[str] = set()
    nodes: list[Any] = []
    for gtype in schema.type_map.values():
        if gtype.name.startswith("__"):
            continue
        nodes.append(gtype.ast_node)
        if isinstance(gtype, GraphQLObjectType | GraphQLInterfaceType):
            nodes.extend(f.ast_node for f in gtype.fields.values())
    for node in nodes:
        if node is None:
            continue
        values = get_directive_values(directive, node)
        if values is not None:
            names.update(p for group in values["scopes"] for p in group)
    return frozenset(names)
