"""The composition root: every domain's types merged into one schema, with its extensions."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import strawberry
from graphql import GraphQLError
from strawberry.extensions import ParserCache, SchemaExtension, ValidationCache
from strawberry.schema.config import StrawberryConfig
from strawberry.tools import merge_types
from strawberry.types import ExecutionContext

from authz.errors import GatewayError
from schema.accounts import AccountMutation
from schema.address_blocks import AddressBlockMutation
from schema.api_keys import ApiKeyMutation
from schema.audit import AuditQuery
from schema.audit_streams import AuditStreamMutation
from schema.auth import AuthMutation, AuthQuery
from schema.authorization import Authorization, Authorizer
from schema.domains import DomainMutation
from schema.enums import Plan
from schema.extensions import IntrospectionGuard, UnitOfWork
from schema.fresh_auth import FreshAuthentication
from schema.invitations import InvitationMutation
from schema.limits import DEFAULT_LIST_SIZE, OPERATION_LIMITS, CostModel, OperationLimits, TokenLimit, document_limits
from schema.limits.admission import AdmissionExtension
from schema.limits.once import OncePerOperation
from schema.limits.storable import StorableArguments
from schema.members import MemberMutation
from schema.mfa import MfaMutation
from schema.organizations import OrganizationMutation, OrganizationQuery
from schema.privacy import PrivacyMutation
from schema.rate_limits import RateLimitQuery
from schema.report_schedules import ReportScheduleMutation
from schema.reports import ReportMutation, ReportQuery
from schema.retention import RetentionMutation
from schema.roles import RoleMutation, RoleQuery
from schema.saml import SamlMutation
from schema.security_events import SecurityEventMutation, SecurityEventQuery
from schema.security_policy import SecurityPolicyMutation
from schema.sessions import SessionMutation
from schema.sso import SsoMutation
from schema.users import UserQuery

if TYPE_CHECKING:
    from schema.upstreams import Composition

log = logging.getLogger("portcullis.graphql")

Query = merge_types(
    "Query",
    (
        UserQuery,
        AuthQuery,
        OrganizationQuery,
        RoleQuery,
        RateLimitQuery,
        AuditQuery,
        ReportQuery,
        SecurityEventQuery,
    ),
)
Mutation = merge_types(
    "Mutation",
    (
        AuthMutation,
        AccountMutation,
        OrganizationMutation,
        InvitationMutation,
        MemberMutation,
        RoleMutation,
        ApiKeyMutation,
        ReportMutation,
        ReportScheduleMutation,
        MfaMutation,
        SsoMutation,
        SamlMutation,
        DomainMutation,
        AddressBlockMutation,
        SecurityPolicyMutation,
        RetentionMutation,
        SecurityEventMutation,
        AuditStreamMutation,
        SessionMutation,
        PrivacyMutation,
    ),
)


class PortcullisSchema(strawberry.Schema):
    authorizer: Authorizer
    cost_model: CostModel

    def process_errors(self, errors: list[GraphQLError], execution_context: ExecutionContext | None = None) -> None:
        # Expected refusals and invalid documents are the caller's business; only the unexpected is
        # logged, with its traceback and the request id (never the variables).
        ctx = execution_context.context if execution_context is not None else None
        forwarding = getattr(ctx, "forwarding", None)
        forwarded = forwarding.plan.keys if forwarding is not None else frozenset()
        for error in errors:
            original = error.original_error
            if original is None or isinstance(original, GatewayError | GraphQLError):
                continue
            rid = getattr(getattr(ctx, "principal", None), "request_id", None)
            if error.path and error.path[0] in forwarded:
                # an upstream's answer that does not fit its schema: the upstream's fault, told as UPSTREAM_ERROR
                log.warning(
                    "upstream answer refused at %s: %s",
                    ".".join(map(str, error.path)),
                    error.message,
                    extra={"request_id": rid},
                )
                continue
            log.error(
                "unexpected error in %s",
                ".".join(map(str, error.path or [])) or "operation",
                exc_info=original,
                extra={"request_id": rid},
            )


ExtensionFactory = Callable[[], SchemaExtension]


@dataclass(frozen=True, slots=True)
class Authorize:
    """Makes each operation's `Authorization`, with the authorizer of the schema once it is built."""

    schema: Callable[[], PortcullisSchema]
    reject_unauthorized: bool = False

    def __call__(self) -> Authorization:
        return Authorization(authorizer=self.schema().authorizer, reject_unauthorized=self.reject_unauthorized)


def default_extensions(
    schema: Callable[[], PortcullisSchema],
    *,
    anonymous_introspection: bool = True,
    reject_unauthorized: bool = False,
    cache_size: int = 1024,
    operation_limits: Mapping[Plan, OperationLimits] = OPERATION_LIMITS,
    forwarding: bool = False,
) -> list[ExtensionFactory]:
    """Every operation's extensions, in the order their hooks enter. `schema` gives the schema once it is
    built: the cost model and the authorizer are made from it.

    The unit of work wraps everything. The token limit decides before the parser cache parses; the other
    limits after the validation cache has validated (arguments the database cannot store first), and
    before authorization. Admission comes last before execution: the request, its cost and its login
    attempts, in one round trip.
    """
    extensions: list[ExtensionFactory] = [UnitOfWork]
    if not anonymous_introspection:
        extensions.append(IntrospectionGuard)
    extensions += [
        lambda: TokenLimit(table=operation_limits),
        lambda: ParserCache(maxsize=cache_size),
        lambda: ValidationCache(maxsize=cache_size),
        StorableArguments,
        *document_limits(operation_limits, lambda: schema().cost_model),
        OncePerOperation,
        Authorize(schema, reject_unauthorized),
        FreshAuthentication,
        AdmissionExtension,
    ]
    if forwarding:
        from schema.upstreams import Forwarding

        extensions.append(Forwarding)
    return extensions


def build_schema(
    *,
    anonymous_introspection: bool = True,
    field_suggestions: bool = True,
    reject_unauthorized: bool = False,
    cache_size: int = 1024,
    query: Any = None,
    mutation: Any = None,
    operation_limits: Mapping[Plan, OperationLimits] = OPERATION_LIMITS,
    default_list_size: int = DEFAULT_LIST_SIZE,
    extensions: Callable[[list[ExtensionFactory]], list[ExtensionFactory]] | None = None,
    upstreams: Composition | None = None,
) -> PortcullisSchema:
    """The gateway's schema (`query`/`mutation` replace the root types, for tests of the machinery).

    `extensions` receives `default_extensions` and returns the list to install: how another build is
    composed from the same parts (`bench/apps/`)."""
    built: list[PortcullisSchema] = []
    installed = default_extensions(
        lambda: built[0],
        anonymous_introspection=anonymous_introspection,
        reject_unauthorized=reject_unauthorized,
        cache_size=cache_size,
        operation_limits=operation_limits,
        forwarding=upstreams is not None and not upstreams.empty,
    )
    if extensions is not None:
        installed = extensions(installed)
    query = query or Query
    mutation = mutation or Mutation
    if upstreams is not None and upstreams.query is not None:
        query = merge_types("Query", (query, upstreams.query))
    if upstreams is not None and upstreams.mutation is not None:
        mutation = merge_types("Mutation", (mutation, upstreams.mutation))
    schema = PortcullisSchema(
        query=query,
        mutation=mutation,
        extensions=installed,
        config=StrawberryConfig(disable_field_suggestions=not field_suggestions),
    )
    schema.authorizer = Authorizer(schema._schema)
    schema.cost_model = CostModel(schema._schema, default_list_size=default_list_size)
    built.append(schema)
    return schema


def export_sdl() -> str:
    return build_schema().as_str() + "\n"
