"""Rules written on types and interfaces: every field returning them requires them (Apollo's semantics)."""

from __future__ import annotations

from typing import Any

import strawberry

from authz import Permission, Principal, PrincipalKind, permissions_for_role
from resolvers.deps import RequestContext
from schema import build_schema
from schema.directives import RequiresPlan, RequiresScopes
from schema.enums import Plan

CALLS: list[str] = []


@strawberry.type(directives=[RequiresScopes(scopes=[["billing:read"]])])
class Invoice:
    total: int


@strawberry.interface(directives=[RequiresPlan(plan=Plan.ENTERPRISE)])
class Feature:
    name: str


@strawberry.type
class Sso(Feature):
    issuer: str


@strawberry.type
class Query:
    @strawberry.field
    def invoice(self) -> Invoice | None:
        CALLS.append("invoice")
        return Invoice(total=42)

    @strawberry.field
    def feature(self) -> Feature | None:
        CALLS.append("feature")
        return Sso(name="sso", issuer="https://idp.example")

    @strawberry.field
    def open(self) -> str:
        return "yes"

    @strawberry.field
    def sso(self) -> Sso | None:
        return None


@strawberry.type
class Mutation:
    @strawberry.mutation
    def noop(self) -> bool:
        return True


def principal(role: str, plan: str) -> Principal:
    return Principal(
        kind=PrincipalKind.USER,
        subject_id="u",
        organization_id="o",
        roles=(role,),
        permissions=permissions_for_role(role),
        plan=plan,
    )


async def run(query: str, who: Principal, **options: Any) -> Any:
    schema = build_schema(query=Query, mutation=Mutation, **options)
    CALLS.clear()
    return await schema.execute(query, context_value=RequestContext(None, who))  # type: ignore[arg-type]


async def test_a_type_rule_guards_every_field_returning_it() -> None:
    result = await run("{ open invoice { total } }", principal("viewer", "enterprise"))
    assert result.data == {"open": "yes", "invoice": None}
    [error] = result.errors
    assert error.path == ["invoice"]
    assert error.original_error.code == "FORBIDDEN"
    assert error.original_error.extensions == {"requiredScopes": [["billing:read"]]}
    assert CALLS == []


async def test_a_type_rule_admits_who_satisfies_it() -> None:
    result = await run("{ invoice { total } }", principal("admin", "free"))
    assert result.errors is None
    assert result.data == {"invoice": {"total": 42}}


async def test_an_interface_rule_gates_by_plan() -> None:
    denied = await run("{ feature { name ... on Sso { issuer } } }", principal("owner", "professional"))
    assert denied.data == {"feature": None}
    assert denied.errors[0].original_error.extensions == {"requiredPlan": "ENTERPRISE"}
    assert CALLS == []
    allowed = await run("{ feature { name ... on Sso { issuer } } }", principal("viewer", "enterprise"))
    assert allowed.data == {"feature": {"name": "sso", "issuer": "https://idp.example"}}


async def test_type_rules_in_reject_mode_and_in_the_report() -> None:
    rejected = await run("{ open invoice { total } }", principal("viewer", "enterprise"), reject_unauthorized=True)
    assert rejected.data is None
    assert rejected.errors[0].path == ["invoice"]
    rules = build_schema(query=Query, mutation=Mutation).authorizer.rules
    assert rules[("Query", "invoice")].any_of == ((Permission.BILLING_READ,),)
    assert rules[("Query", "feature")].plan == "enterprise"
    assert ("Query", "open") not in rules
