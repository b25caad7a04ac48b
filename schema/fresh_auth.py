"""Fresh authentication: a sensitive mutation needs a sign-in within the organization's `freshAuthMinutes`.

Decided once per operation, before anything executes (C-142: nothing is written): when a mutation selects
one of `SENSITIVE_MUTATIONS` at its root (aliases and fragments included) and the caller may run it, the
caller's `auth_time` (the access token's claim, or a cookie session's sign-in) is compared with the policy
(`SecurityPolicy.needs_fresh_auth`); `ALWAYS_FRESH` ones (erasing one's account) need a sign-in
within their own window where the policy sets none. Too old, the whole operation is refused with `FRESH_AUTH_REQUIRED`
(HTTP 403, `extensions.maxAgeMinutes`). API keys carry no `auth_time`: they are not interactive and cannot
sign in again, so under a fresh-authentication rule they are refused these mutations.

The names are matched as they appear on the `Mutation` type, so a mutation added later under one of these
names is covered without touching its resolver.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import replace

from graphql import (
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    InlineFragmentNode,
    OperationType,
    SelectionSetNode,
)
from graphql.utilities import get_operation_ast
from strawberry.extensions import SchemaExtension

from authz.errors import FreshAuthRequired
from identity.security_policies import load_policy
from schema.limits.base import fragments_of

SENSITIVE_MUTATIONS: frozenset[str] = frozenset(
    {
        # API keys
        "createApiKey",
        "rotateApiKey",
        "revokeApiKey",
        # roles, and who holds which
        "createRole",
        "updateRole",
        "deleteRole",
        "updateMemberRole",
        # members and invitations
        "removeMember",
        "addMember",
        "resendInvitation",
        "revokeInvitation",
        # single sign-on
        "configureOidc",
        "configureSaml",
        "deleteSsoConnection",
        # the policy itself
        "updateSecurityPolicy",
        # the caller's own second factor
        "disableTotp",
        # where the audit log is sent
        "createAuditStream",
        "updateAuditStream",
        "disableAuditStream",
        "deleteAuditStream",
        # the caller's whole account
        "eraseAccount",
    }
)

# sensitive mutations that need a recent sign-in even where the policy sets no window: minutes
ALWAYS_FRESH: dict[str, int] = {"eraseAccount": 15}


def sensitive_fields(
    selection_set: SelectionSetNode, fragments: Mapping[str, FragmentDefinitionNode]
) -> list[FieldNode]:
    """The root fields of a mutation that are sensitive, through inline fragments and fragment spreads."""
    found: list[FieldNode] = []

    def walk(selections: SelectionSetNode, visiting: frozenset[str]) -> None:
        for selection in selections.selections:
            if isinstance(selection, FieldNode):
                if selection.name.value in SENSITIVE_MUTATIONS:
                    found.append(selection)
            elif isinstance(selection, InlineFragmentNode):
                walk(selection.selection_set, visiting)
            elif isinstance(selection, FragmentSpreadNode):
                name = selection.name.value
                fragment = fragments.get(name)
                if fragment is not None and name not in visiting:
                    walk(fragment.selection_set, visiting | {name})

    walk(selection_set, frozenset())
    return found


class FreshAuthentication(SchemaExtension):
    """Runs after the field decisions: a field the caller may not run anyway is refused as FORBIDDEN."""

    async def on_validate(self) -> AsyncIterator[None]:
        await self._check()
        yield

    async def _check(self) -> None:
        ec = self.execution_context
        ctx = ec.context
        principal = ctx.principal
        document = ec.graphql_document
        if document is None or ec.pre_execution_errors or not principal.is_authenticated:
            return
        operation = get_operation_ast(document, ec.operation_name)
        if operation is None or operation.operation is not OperationType.MUTATION:
            return
        denied = getattr(ctx, "denied_fields", None) or {}
        fields = [f for f in sensitive_fields(operation.selection_set, fragments_of(document)) if id(f) not in denied]
        if not fields or principal.organization_id is None:
            return
        async with ctx.services.db.session() as db:
            policy = await load_policy(db, principal.organization_id)
        minutes = policy.fresh_auth_minutes
        if minutes is None:
            minutes = min((ALWAYS_FRESH[f.name.value] for f in fields if f.name.value in ALWAYS_FRESH), default=None)
            if minutes is not None:
                policy = replace(policy, fresh_auth_minutes=minutes)
        if not policy.needs_fresh_auth(principal.auth_time, ctx.services.clock()):
            return
        error = FreshAuthRequired(
            f"{fields[0].name.value} needs a sign-in within the last {minutes} minutes: sign in again "
            "(or call reauthenticate) and retry.",
            maxAgeMinutes=minutes,
        )
        ec.pre_execution_errors = [
            GraphQLError(error.message, path=[_key(f) for f in fields[:1]], original_error=error)
        ]
        response = getattr(ctx, "response", None)
        if response is not None:
            response.status_code = 403


def _key(node: FieldNode) -> str:
    return node.alias.value if node.alias is not None else node.name.value
