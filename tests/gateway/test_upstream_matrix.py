"""The role-by-field matrix and the IDOR sweep, extended to upstream fields: generated from the composed schema.

Every field of an upstream type that carries a rule (its own or its root field's), for every built-in role:
the expected outcome comes from `authz.decide`, the actual one from the gateway over HTTP, and what the
upstream received is checked too: a denied field never leaves the gateway (C-135). Every upstream field
taking an id, asked by each role of tenant A with ids of tenant B's objects, answers as an unknown id does
and the upstream always receives A's organization (C-136).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from graphql import (
    GraphQLEnumType,
    GraphQLField,
    GraphQLInputObjectType,
    GraphQLInterfaceType,
    GraphQLList,
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLSchema,
    GraphQLUnionType,
    get_named_type,
    is_leaf_type,
)

from authz import (
    AuthMethod,
    Principal,
    PrincipalKind,
    decide,
    install_team_permissions,
    permissions_for_role,
    team_permissions,
)
from authz.roles import ROLE_ORDER
from gateway.app import create_app
from gateway.upstreams import load_upstreams
from schema import build_schema
from tests.conftest import gql, login, make_settings, make_tenant, running
from tests.upstreams import ORDERS_SDL, GraphQLUpstream, graphql_upstream, orders_file, orders_of

ROLES = tuple(r.value for r in ROLE_ORDER)
PLAN = "professional"


def write_file(directory: Path, url: str) -> Path:
    (directory / "orders.graphql").write_text(ORDERS_SDL)
    path = directory / "upstreams.toml"
    path.write_text(orders_file(url))
    return path


def composed(tmp: Path) -> tuple[GraphQLSchema, dict[tuple[str, str], Any], set[str], set[tuple[str, str]]]:
    """The composed schema as the gateway serves it, its rules, the upstream's types and its root fields."""
    installed = list(team_permissions().values())
    try:
        composition = load_upstreams(write_file(tmp, "http://127.0.0.1:9/graphql")).composition
        schema = build_schema(upstreams=composition)
    finally:
        install_team_permissions(installed)
    upstream = composition.upstreams["orders"]
    owned = {t.name for t in upstream.schema.type_map.values() if not t.name.startswith("__")}
    roots = {("Query" if op == "query" else "Mutation", name) for op, name in composition.roots}
    return schema.authorizer.schema, schema.authorizer.rules, owned, roots


@dataclass(frozen=True)
class Target:
    operation: str
    path: tuple[tuple[str, GraphQLField], ...]  # (field name, definition) from the root
    key: tuple[str, str]


def literal(gtype: Any, schema: GraphQLSchema) -> str:
    """A value of `gtype` the schema accepts, as GraphQL source."""
    if isinstance(gtype, GraphQLNonNull):
        return literal(gtype.of_type, schema)
    if isinstance(gtype, GraphQLList):
        return f"[{literal(gtype.of_type, schema)}]"
    if isinstance(gtype, GraphQLEnumType):
        return next(iter(gtype.values))
    if isinstance(gtype, GraphQLInputObjectType):
        parts = [
            f"{n}: {literal(f.type, schema)}" for n, f in gtype.fields.items() if isinstance(f.type, GraphQLNonNull)
        ]
        return "{" + ", ".join(parts) + "}"
    return {"Int": "1", "Float": "1.5", "Boolean": "true"}.get(gtype.name, '"x"')


def selection(gtype: Any) -> str:
    return "" if is_leaf_type(get_named_type(gtype)) else "__typename"


def call(name: str, definition: GraphQLField, schema: GraphQLSchema, ids: dict[str, str] | None = None) -> str:
    args = [
        f"{n}: {ids[n] if ids and n in ids else literal(a.type, schema)}"
        for n, a in definition.args.items()
        if isinstance(a.type, GraphQLNonNull)
    ]
    return name + (f"({', '.join(args)})" if args else "")


def document(target: Target, schema: GraphQLSchema) -> str:
    text = ""
    for name, definition in reversed(target.path):
        inner = text or selection(definition.type)
        text = call(name, definition, schema) + (f" {{ {inner} }}" if inner else "")
    return ("mutation " if target.operation == "mutation" else "") + "{ " + text + " }"


def targets(
    schema: GraphQLSchema, rules: dict[tuple[str, str], Any], owned: set[str], roots: set[tuple[str, str]]
) -> list[Target]:
    found: list[Target] = []
    for root_name, operation in (("Query", "query"), ("Mutation", "mutation")):
        root = schema.get_type(root_name)
        assert isinstance(root, GraphQLObjectType)
        pending: list[tuple[tuple[tuple[str, GraphQLField], ...], Any]] = [
            (((name, f),), f) for name, f in root.fields.items() if (root_name, name) in roots
        ]
        seen: set[tuple[str, str]] = set()
        found.extend(Target(operation, path, (root_name, path[0][0])) for path, _ in pending)
        while pending:
            path, definition = pending.pop(0)
            named = get_named_type(definition.type)
            types = [named]
            if isinstance(named, GraphQLUnionType):
                types = list(named.types)
            if isinstance(named, GraphQLInterfaceType):
                types = [named]
            for gtype in types:
                if not isinstance(gtype, GraphQLObjectType | GraphQLInterfaceType) or gtype.name not in owned:
                    continue
                for name, child in gtype.fields.items():
                    key = (gtype.name, name)
                    if key in seen or len(types) > 1:
                        continue
                    seen.add(key)
                    step = (*path, (name, child))
                    if key in rules:
                        found.append(Target(operation, step, key))
                    pending.append((step, child))
    return found


def expected(role: str, target: Target, rules: dict[tuple[str, str], Any]) -> dict[str, Any] | None:
    principal = Principal(
        kind=PrincipalKind.USER, permissions=permissions_for_role(role), auth_method=AuthMethod.PASSWORD, plan=PLAN
    )
    parent = "Query" if target.operation == "query" else "Mutation"
    for index, (name, definition) in enumerate(target.path):
        key = (parent, name) if index == 0 else target.key if index == len(target.path) - 1 else None
        if key is not None and key in rules:
            decision = decide(principal, rules[key])
            if not decision:
                out: dict[str, Any] = {"code": "FORBIDDEN", "path": [n for n, _ in target.path[: index + 1]]}
                if decision.required_scopes:
                    out["requiredScopes"] = [list(g) for g in decision.required_scopes]
                if decision.required_plan:
                    out["requiredPlan"] = decision.required_plan.upper()
                return out
        parent = get_named_type(definition.type).name
    return None


@pytest.fixture
def upstream() -> Iterator[GraphQLUpstream]:
    with graphql_upstream() as u:
        yield u


@pytest.fixture
async def client(database_url: str, signing_key: str, upstream: GraphQLUpstream, tmp_path: Path) -> AsyncIterator[Any]:
    app = create_app(make_settings(database_url, signing_key, upstreams_file=write_file(tmp_path, upstream.url)))
    async with running(app) as c:
        yield c


def test_the_matrix_is_generated_from_the_composed_schema(tmp_path: Path) -> None:
    schema, rules, owned, roots = composed(tmp_path)
    keys = {t.key for t in targets(schema, rules, owned, roots)}
    assert {
        ("Query", "orders"),
        ("Query", "orderStats"),
        ("Mutation", "createOrder"),
        ("Order", "internalNote"),
    } <= keys
    assert ("Query", "unruled") not in keys
    assert "unruled" not in schema.query_type.fields


async def test_upstream_fields_by_role(
    client: Any, upstream: GraphQLUpstream, database_url: str, tmp_path: Path
) -> None:
    schema, rules, owned, roots = composed(tmp_path)
    cases = targets(schema, rules, owned, roots)
    problems: list[str] = []
    for role in ROLES:
        tenant = await make_tenant(database_url, slug=f"m-{role}", email=f"{role}@m.test", role=role)
        token = (await login(client, tenant))["accessToken"]
        for target in cases:
            query = document(target, schema)
            sent = len(upstream.received)
            body = (await gql(client, query, token=token)).json()
            denial = expected(role, target, rules)
            errors = [
                {
                    "code": e["extensions"]["code"],
                    "path": [p for p in e.get("path") or () if isinstance(p, str)],
                    **{k: v for k, v in e["extensions"].items() if k in ("requiredScopes", "requiredPlan")},
                }
                for e in body.get("errors", [])
                if e["extensions"]["code"] in ("FORBIDDEN", "UNAUTHENTICATED")
            ]
            label = f"{role} {'.'.join(target.key)}: {query}"
            if denial is None and errors:
                problems.append(f"{label}: refused {errors}")
            if denial is not None and denial not in errors:
                problems.append(f"{label}: expected {denial}, got {body}")
            if denial is not None:
                # a denied field never leaves the gateway, whatever else of the operation does
                denied_field = denial["path"][-1]
                for received in upstream.received[sent:]:
                    if f"{denied_field}" in received.query.split("{", 1)[-1].replace("__typename", ""):
                        problems.append(f"{label}: the upstream received {received.query}")
            for received in upstream.received[sent:]:
                preset = received.variables.get("portcullisPreset_organizationId")
                if preset is not None and preset != tenant.org_id:
                    problems.append(f"{label}: the upstream received organization {preset}")
    assert not problems, "\n".join(problems)


async def test_upstream_ids_of_another_tenant_answer_like_unknown_ones(
    client: Any, upstream: GraphQLUpstream, database_url: str
) -> None:
    a = await make_tenant(database_url, slug="alpha", email="owner@alpha.test")
    b = await make_tenant(database_url, slug="beta", email="owner@beta.test")
    b_ids = [o["id"] for o in orders_of(b.org_id)]
    b_secrets = {o["customer"] for o in orders_of(b.org_id)}
    for role in ROLES:
        member = await make_tenant(database_url, slug=f"alpha-{role}", email=f"{role}@alpha-staff.test", role=role)
        for who in (a, member):
            token = (await login(client, who))["accessToken"]
            for field in ("order", "cancelOrder"):
                operation = "mutation" if field == "cancelOrder" else "query"
                query = f'{operation} {{ {field}(id: "nobody") {{ id customer }} }}'
                unknown = (await gql(client, query, token=token)).json()
                unknown.pop("extensions", None)
                for b_id in b_ids[:3]:
                    r = await gql(client, f'{operation} {{ {field}(id: "{b_id}") {{ id customer }} }}', token=token)
                    body = r.json()
                    body.pop("extensions", None)  # the cost budget left moves with every request
                    assert body == unknown, (role, field, body, unknown)
                    assert not [s for s in b_secrets if s in r.text]
                    assert upstream.last().variables["portcullisPreset_organizationId"] == who.org_id
