"""The checked-in SDL is the schema that runs, and it states the contract's authorization rules."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from graphql import GraphQLObjectType, GraphQLSchema, build_schema, print_ast

from schema import export_sdl

CHECKED_IN = Path(__file__).resolve().parents[2] / "schema.graphql"

AUTHENTICATED = "@authenticated"


def scopes(*alternatives: str) -> str:
    """`@requiresScopes` with one scope per alternative, as the contract writes it."""
    inner = ", ".join(f'["{s}"]' for s in alternatives)
    return f"@requiresScopes(scopes: [{inner}])"


# The contract's rules (contract.md, "GraphQL schema"), by type and field. A field the schema does
# not have yet is not checked; a field it has must carry exactly this rule.
CONTRACT: dict[str, dict[str, str | None]] = {
    "Query": {
        "me": AUTHENTICATED,
        "organization": AUTHENTICATED,
        "organizations": scopes("platform:organizations:read"),
        "roles": scopes("roles:read"),
        "permissions": AUTHENTICATED,
        "auditLogs": scopes("audit:read"),
        "verifyAuditChain": scopes("audit:verify"),
        "report": scopes("reports:read"),
        "rateLimit": AUTHENTICATED,
    },
    "Mutation": {
        "login": None,
        "refreshToken": None,
        "logout": AUTHENTICATED,
        "createOrganization": scopes("organizations:create"),
        "updateOrganization": scopes("organization:update"),
        "changePlan": scopes("plan:manage"),
        "addMember": scopes("members:manage"),
        "acceptInvitation": None,
        "resendInvitation": scopes("members:manage"),
        "revokeInvitation": scopes("members:manage"),
        "requestPasswordReset": None,
        "resetPassword": None,
        "changePassword": AUTHENTICATED,
        "updateMemberRole": scopes("members:manage"),
        "removeMember": scopes("members:manage"),
        "createRole": scopes("roles:manage"),
        "updateRole": scopes("roles:manage"),
        "deleteRole": scopes("roles:manage"),
        "createApiKey": scopes("apikeys:manage"),
        "rotateApiKey": scopes("apikeys:manage"),
        "revokeApiKey": scopes("apikeys:manage"),
        "configureOidc": scopes("sso:manage"),
        "configureSaml": scopes("sso:manage"),
        "generateReport": scopes("reports:generate"),
        "unlockUser": scopes("members:manage"),
        "enrollTotp": AUTHENTICATED,
        "confirmTotp": AUTHENTICATED,
        "disableTotp": AUTHENTICATED,
    },
    "Organization": {
        "billingEmail": scopes("billing:read"),
        "members": scopes("members:read"),
        "invitations": scopes("members:read"),
        "quotas": scopes("quotas:read"),
        "apiKeys": scopes("apikeys:read"),
        "ssoConnections": scopes("sso:read"),
        "reports": scopes("reports:read"),
    },
}
PUBLIC_ROOT_FIELDS = {
    "signInOptions",  # beyond the contract: how an organization's members sign in (docs/authentication.md)
    "login",
    "refreshToken",
    "acceptInvitation",
    "requestPasswordReset",
    "resetPassword",
    "verifyEmail",
    "confirmEmailChange",
}
AUTH_DIRECTIVES = {"authenticated", "requiresScopes"}


@pytest.fixture(scope="module")
def sdl() -> str:
    return export_sdl()


@pytest.fixture(scope="module")
def parsed(sdl: str) -> GraphQLSchema:
    return build_schema(sdl)


def rules(field: Any) -> list[str]:
    return [print_ast(d) for d in field.ast_node.directives or () if d.name.value in AUTH_DIRECTIVES]


def test_checked_in_sdl_is_current(sdl: str) -> None:
    assert CHECKED_IN.read_text() == sdl, (
        "schema.graphql is out of date: run `make schema` (portcullis schema > schema.graphql) and commit it"
    )


def test_contract_directives_are_declared(sdl: str, parsed: GraphQLSchema) -> None:
    assert "directive @authenticated on OBJECT | FIELD_DEFINITION | INTERFACE | SCALAR | ENUM" in sdl
    assert (
        "directive @requiresScopes(scopes: [[String!]!]!) on OBJECT | FIELD_DEFINITION | INTERFACE | SCALAR | ENUM"
    ) in sdl
    assert parsed.get_directive("authenticated") is not None
    assert parsed.get_directive("requiresScopes") is not None


def test_contract_rules_on_fields(parsed: GraphQLSchema) -> None:
    """Every contract field the schema has carries exactly the contract's rule (fields still to be
    built are not checked here)."""
    wrong = {}
    for type_name, fields in CONTRACT.items():
        type_ = parsed.get_type(type_name)
        if not isinstance(type_, GraphQLObjectType):
            continue
        for field_name, expected in fields.items():
            if field_name in type_.fields:
                found = rules(type_.fields[field_name])
                if found != ([expected] if expected else []):
                    wrong[f"{type_name}.{field_name}"] = found
    assert wrong == {}


def test_the_implemented_part_of_the_contract_is_checked(parsed: GraphQLSchema) -> None:
    """The rule table above is not vacuous: the core fields exist and carry their rules."""
    query, mutation = parsed.query_type, parsed.mutation_type
    assert query is not None
    assert mutation is not None
    assert rules(query.fields["me"]) == [AUTHENTICATED]
    assert rules(mutation.fields["logout"]) == [AUTHENTICATED]
    assert rules(mutation.fields["login"]) == []


def test_every_root_field_is_guarded_or_deliberately_public(parsed: GraphQLSchema) -> None:
    """Deny by default: a root field without a rule must be one of the contract's public ones."""
    unguarded = []
    for root in (parsed.query_type, parsed.mutation_type):
        assert root is not None
        for name, field in root.fields.items():
            if not rules(field) and name not in PUBLIC_ROOT_FIELDS:
                unguarded.append(f"{root.name}.{name}")
    assert unguarded == []


def test_schema_command_prints_the_sdl(sdl: str, capsys: pytest.CaptureFixture[str]) -> None:
    from gateway import cli

    assert cli.main(["schema"]) == 0
    assert capsys.readouterr().out == sdl
