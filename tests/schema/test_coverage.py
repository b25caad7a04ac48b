"""Default deny: every field carries a rule, is public on purpose, or hangs below a ruled field."""

from __future__ import annotations

import json

from graphql import GraphQLInterfaceType, GraphQLObjectType

from gateway.cli import main
from schema import build_schema
from schema.authorization import PUBLIC_ROOT_FIELDS, field_table


def test_every_root_field_is_ruled_or_public_on_purpose() -> None:
    schema = build_schema()
    authorizer = schema.authorizer
    unruled = []
    for root in (schema._schema.query_type, schema._schema.mutation_type):
        assert root is not None
        for name in root.fields:
            if (root.name, name) not in authorizer.rules and (root.name, name) not in PUBLIC_ROOT_FIELDS:
                unruled.append(f"{root.name}.{name}")
    assert unruled == [], "add a directive (authenticated()/requires_scopes()) or list the field as public"


def test_every_object_type_is_reachable_only_through_ruled_or_public_roots() -> None:
    """A type's fields need no rule of their own only when every way to them starts at a covered root."""
    schema = build_schema()._schema
    reachable: set[str] = set()
    frontier = [schema.query_type, schema.mutation_type]
    while frontier:
        t = frontier.pop()
        if t is None or t.name in reachable:
            continue
        reachable.add(t.name)
        for field in t.fields.values():
            named = field.type
            while hasattr(named, "of_type"):
                named = named.of_type
            if isinstance(named, GraphQLObjectType | GraphQLInterfaceType):
                frontier.append(named)
    declared = {
        name
        for name, t in schema.type_map.items()
        if not name.startswith("__") and isinstance(t, GraphQLObjectType | GraphQLInterfaceType)
    }
    assert declared == reachable, f"types no root reaches: {sorted(declared - reachable)}"


def test_report_lists_every_field(capsys) -> None:
    schema = build_schema()
    expected = sum(
        len(t.fields)
        for n, t in schema._schema.type_map.items()
        if not n.startswith("__") and isinstance(t, GraphQLObjectType | GraphQLInterfaceType)
    )
    assert main(["authz-report", "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == expected
    by_name = {f"{r['type']}.{r['field']}": r for r in rows}
    assert by_name["Organization.billingEmail"] == {
        "type": "Organization",
        "field": "billingEmail",
        "rule": "@requiresScopes(billing:read)",
        "roles": ["admin", "owner"],
    }
    assert by_name["Query.me"]["roles"] == ["viewer", "analyst", "manager", "admin", "owner"]
    assert by_name["Mutation.login"]["rule"] == "public"
    assert not [r for r in rows if r["rule"] == "UNRULED"]


def test_report_table(capsys) -> None:
    assert main(["authz-report"]) == 0
    out = capsys.readouterr().out
    assert "Organization.billingEmail" in out
    assert "@requiresScopes(billing:read)" in out


def test_report_matches_the_rules_in_force() -> None:
    rows = field_table(build_schema().authorizer)
    assert {r["rule"] for r in rows if r["type"] == "Mutation" and r["field"] == "unlockUser"} == {
        "@requiresScopes(members:manage)"
    }
