"""The composition root: every domain's types merged into one schema, with its extensions."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from typing import Any

import strawberry
from graphql import GraphQLError
from strawberry.extensions import ParserCache, SchemaExtension, ValidationCache
from strawberry.schema.config import StrawberryConfig
from strawberry.tools import merge_types
from strawberry.types import ExecutionContext

from authz.errors import GatewayError
from schema.accounts import AccountMutation
from schema.api_keys import ApiKeyMutation
from schema.audit import AuditQuery
from schema.auth import AuthMutation
from schema.authorization import Authorization, Authorizer
from schema.domains import DomainMutation
from schema.enums import Plan
from schema.extensions import IntrospectionGuard, UnitOfWork
from schema.invitations import InvitationMutation
from schema.limits import DEFAULT_LIST_SIZE, PLAN_LIMITS, CostModel, OperationLimits, TokenLimit, document_limits
from schema.limits.admission import Admission, KnownCosts
from schema.limits.once import OncePerOperation
from schema.limits.storable import StorableArguments
from schema.members import MemberMutation
from schema.mfa import MfaMutation
from schema.organizations import OrganizationMutation, OrganizationQuery
from schema.rate_limits import RateLimitQuery
from schema.reports import ReportMutation, ReportQuery
from schema.roles import RoleMutation, RoleQuery
from schema.saml import SamlMutation
from schema.sso import SsoMutation
from schema.users import UserQuery

log = logging.getLogger("portcullis.graphql")

Query = merge_types("Query", (UserQuery, OrganizationQuery, RoleQuery, RateLimitQuery, AuditQuery, ReportQuery))
Mutation = merge_types("Mutation", (AuthMutation, AccountMutation, OrganizationMutation, InvitationMutation,
                                    MemberMutation, RoleMutation, ApiKeyMutation, ReportMutation, MfaMutation,
                                    SsoMutation, SamlMutation, DomainMutation))


class PortcullisSchema(strawberry.Schema):
    authorizer: Authorizer
    cost_model: CostModel
    known_costs: KnownCosts

    def process_errors(
        self, errors: list[GraphQLError], execution_context: ExecutionContext | None = None
    ) -> None:
        # Expected refusals and invalid documents are the caller's business; only the unexpected is
        # logged, with its traceback and the request id (never the variables).
        for error in errors:
            original = error.original_error
            if original is None or isinstance(original, GatewayError | GraphQLError):
                continue
            rid = getattr(getattr(execution_context and execution_context.context, "principal", None),
                          "request_id", None)
            log.error("unexpected error in %s", ".".join(map(str, error.path or [])) or "operation",
                      exc_info=original, extra={"request_id": rid})


class AuthorizationNotEnforced(SchemaExtension):
    """Lets every field through: each operation starts with no denied field, so guards never refuse.

    It exists only to measure what authorization costs (`make bench`, scenario `guarded`), by standing
    in for `Authorization` in an otherwise identical build. Nothing in the settings or the environment
    selects it: only `build_schema(enforce_authorization=False)`, called from code, does.
    """

    def on_operation(self) -> Iterator[None]:
        self.execution_context.context.denied_fields = {}
        yield


def build_schema(
    *, anonymous_introspection: bool = True, field_suggestions: bool = True, reject_unauthorized: bool = False,
    cache_size: int = 1024, enforce_authorization: bool = True, query: Any = None, mutation: Any = None,
    operation_limits: Mapping[Plan, OperationLimits] = PLAN_LIMITS, default_list_size: int = DEFAULT_LIST_SIZE,
    record_audit: bool = True,
) -> PortcullisSchema:
    """The gateway's schema (`query`/`mutation` replace the root types, for tests of the machinery)."""
    # `record_audit=False` only for the benchmark, which measures what the audit log costs
    extensions: list[Any] = [UnitOfWork if record_audit else lambda: UnitOfWork(record_audit=False)]
    if not anonymous_introspection:
        extensions.append(IntrospectionGuard)
    # the token limit decides before the parser cache parses; the other limits after the validation
    # cache has validated (arguments the database cannot store first), and before authorization (hooks
    # enter in list order). The cost model and the authorizer need the built schema, so their factories
    # read it once it exists.
    built: list[PortcullisSchema] = []
    extensions += [
        lambda: TokenLimit(table=operation_limits),
        lambda: ParserCache(maxsize=cache_size),
        lambda: ValidationCache(maxsize=cache_size),
        StorableArguments,
        *document_limits(operation_limits, lambda: built[0].cost_model),
        OncePerOperation,
    ]
    if enforce_authorization:
        extensions.append(
            lambda: Authorization(authorizer=built[0].authorizer, reject_unauthorized=reject_unauthorized)
        )
    else:
        extensions.append(AuthorizationNotEnforced)
    # last before execution: the request, its cost and its login attempts, in one round trip
    extensions.append(Admission)
    schema = PortcullisSchema(
        query=query or Query,
        mutation=mutation or Mutation,
        extensions=extensions,
        config=StrawberryConfig(disable_field_suggestions=not field_suggestions),
    )
    schema.authorizer = Authorizer(schema._schema)
    schema.cost_model = CostModel(schema._schema, default_list_size=default_list_size)
    schema.known_costs = KnownCosts(cache_size)
    built.append(schema)
    return schema


def export_sdl() -> str:
    return build_schema().as_str() + "\n"
