"""The audit log in the schema: `auditLogs`, `verifyAuditChain`, and what every operation records.

Every executed mutation root field leaves an entry: the unit of work (`schema.extensions.UnitOfWork`)
asks `operation_events` what to write. Each mutation's service records its own action (`ctx.audit(...)`,
with the resource and the changed values), which covers the field. A service that forgot to is the one
case of a plain entry naming the field, written as a safety net and logged as `audit_entry_missing`
(the test suite fails on that log line). A field that fails is recorded as `denied` or `error` in a
transaction of its own, after the request's work has been rolled back; FORBIDDEN errors anywhere in an
operation add one `authz_fail` entry listing the refused paths.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

import strawberry
from graphql import FieldNode, OperationType, VariableNode, get_operation_ast
from strawberry.scalars import JSON
from strawberry.types import ExecutionContext

from authz import Permission
from authz.errors import BadUserInput, ErrorCode, GatewayError
from resolvers import audit as service
from resolvers.audit import AuditFilter
from schema.context import Info
from schema.directives import list_size, requires_scopes
from schema.pagination import Connection, Edge, PageInfo
from store.audit import AuditAction as A
from store.audit import AuditEvent, AuditResult, ReadableEntry
from store.audit.view import entry_view

log = logging.getLogger("portcullis.audit")

# root mutation field -> (its action, the resource type it acts on, actions that also cover it)
FIELD_ACTIONS: dict[str, tuple[str, str | None, tuple[str, ...]]] = {
    "login": (A.AUTHN_LOGIN_SUCCESS, "user", (A.AUTHN_LOGIN_FAIL, A.AUTHN_LOGIN_LOCK, A.AUTHN_MFA_FAIL)),
    "refreshToken": (A.AUTHN_TOKEN_REFRESH, "session", (A.AUTHN_TOKEN_REUSE,)),
    "logout": (A.AUTHN_LOGOUT, "session", ()),
    "acceptInvitation": (A.AUTHN_INVITATION_ACCEPTED, "user", (A.AUTHN_LOGIN_FAIL,)),
    "changePassword": (A.AUTHN_PASSWORD_CHANGE, "user", (A.AUTHN_LOGIN_FAIL, A.AUTHN_LOGIN_LOCK)),
    "unlockUser": (A.AUTHN_LOGIN_UNLOCK, "user", ()),
    "createOrganization": (A.ORG_CREATED, "organization", ()),
    "updateOrganization": (A.ORG_UPDATED, "organization", ()),
    "updateSecurityPolicy": (A.SECURITY_POLICY_UPDATE, "organization", ()),
    "updateRetention": (A.RETENTION_UPDATED, "organization", ()),
    "changePlan": (A.PLAN_CHANGED, "organization", ()),
    "exportMyData": (A.DATA_EXPORTED, "user", ()),
    "eraseAccount": (A.ACCOUNT_ERASURE_REFUSED, "user", (A.ACCOUNT_ERASED,)),
    "addMember": (A.MEMBER_INVITED, "invitation", ()),
    "resendInvitation": (A.INVITATION_RESENT, "invitation", ()),
    "revokeInvitation": (A.INVITATION_REVOKED, "invitation", ()),
    "requestPasswordReset": (A.AUTHN_PASSWORD_RESET_REQUESTED, "user", ()),
    "resetPassword": (A.AUTHN_PASSWORD_RESET, "user", ()),
    "sendEmailVerification": (A.AUTHN_EMAIL_VERIFICATION_SENT, "user", ()),
    "verifyEmail": (A.AUTHN_EMAIL_VERIFIED, "user", ()),
    "changeEmail": (A.AUTHN_EMAIL_CHANGE_REQUESTED, "user", (A.AUTHN_LOGIN_FAIL,)),
    "confirmEmailChange": (A.AUTHN_EMAIL_CHANGED, "user", ()),
    "claimDomain": (A.DOMAIN_CLAIMED, "email_domain", ()),
    "releaseDomain": (A.DOMAIN_RELEASED, "email_domain", ()),
    "blockAddress": (A.ADDRESS_BLOCKED, "address_block", ()),
    "unblockAddress": (A.ADDRESS_UNBLOCKED, "address_block", ()),
    "startSsoLink": (A.AUTHN_SSO_LINK_STARTED, "sso_connection", ()),
    "updateMemberRole": (A.AUTHZ_CHANGE, "membership", ()),
    "removeMember": (A.MEMBER_REMOVED, "membership", ()),
    "createRole": (A.PRIVILEGE_ROLE_CREATED, "role", ()),
    "updateRole": (A.PRIVILEGE_PERMISSIONS_CHANGED, "role", ()),
    "deleteRole": (A.PRIVILEGE_ROLE_DELETED, "role", ()),
    "createApiKey": (A.APIKEY_CREATED, "api_key", ()),
    "rotateApiKey": (A.APIKEY_ROTATED, "api_key", ()),
    "revokeApiKey": (A.APIKEY_REVOKED, "api_key", ()),
    "configureOidc": (A.SSO_CONFIGURED, "sso_connection", ()),
    "configureSaml": (A.SSO_CONFIGURED, "sso_connection", ()),
    "generateReport": (A.REPORT_GENERATED, "report", ()),
    "scheduleReport": (A.REPORT_SCHEDULED, "report_schedule", ()),
    "deleteReportSchedule": (A.REPORT_SCHEDULE_DELETED, "report_schedule", ()),
    "enrollTotp": (A.AUTHN_MFA_ENROLL_STARTED, "user", ()),
    "confirmTotp": (A.AUTHN_MFA_ENROLL, "user", (A.AUTHN_MFA_FAIL,)),
    "disableTotp": (A.AUTHN_MFA_DISABLE, "user", (A.AUTHN_MFA_FAIL,)),
    "acknowledgeSecurityEvent": (A.SECURITY_EVENT_ACKNOWLEDGED, "security_event", ()),
    "resolveSecurityEvent": (A.SECURITY_EVENT_RESOLVED, "security_event", ()),
    "createWebhook": (A.WEBHOOK_CREATED, "webhook", ()),
    "deleteWebhook": (A.WEBHOOK_DELETED, "webhook", ()),
    "createAuditStream": (A.AUDIT_STREAM_CREATED, "audit_stream", ()),
    "updateAuditStream": (A.AUDIT_STREAM_UPDATED, "audit_stream", ()),
    "enableAuditStream": (A.AUDIT_STREAM_ENABLED, "audit_stream", ()),
    "disableAuditStream": (A.AUDIT_STREAM_DISABLED, "audit_stream", ()),
    "deleteAuditStream": (A.AUDIT_STREAM_DELETED, "audit_stream", ()),
    "revokeSession": (A.AUTHN_SESSION_REVOKED, "session", ()),
    "revokeOtherSessions": (A.AUTHN_SESSION_REVOKED, "user", ()),
    "revokeMemberSessions": (A.MEMBER_SESSIONS_REVOKED, "membership", ()),
    "reauthenticate": (A.AUTHN_REAUTHENTICATED, "session", (A.AUTHN_MFA_FAIL,)),
}

# mutations that anonymous callers may call: their failures are recorded
PUBLIC_FIELDS = frozenset(
    {
        "login",
        "refreshToken",
        "acceptInvitation",
        "requestPasswordReset",
        "resetPassword",
        "verifyEmail",
        "confirmEmailChange",
    }
)

# a refusal of the caller (denied) rather than a failure (error)
_DENIED_CODES = frozenset(
    {
        ErrorCode.UNAUTHENTICATED,
        ErrorCode.FORBIDDEN,
        ErrorCode.NOT_FOUND,
        ErrorCode.QUOTA_EXCEEDED,
        ErrorCode.RATE_LIMITED,
    }
)


def _root_fields(ec: ExecutionContext, *, mutation_only: bool = False) -> list[FieldNode]:
    """The root fields of the operation that ran (none when the document names no single operation)."""
    document = ec.graphql_document
    operation = get_operation_ast(document, ec.operation_name) if document is not None else None
    if operation is None or (mutation_only and operation.operation is not OperationType.MUTATION):
        return []
    return [
        s for s in operation.selection_set.selections if isinstance(s, FieldNode) and not s.name.value.startswith("__")
    ]


@dataclass
class OperationAudit:
    with_commit: list[AuditEvent]  # written in the request's transaction, just before it commits
    on_their_own: list[AuditEvent]  # written after a rollback, or whatever the outcome


def _covered(recorded: set[str], field_name: str) -> bool:
    action, _, also = FIELD_ACTIONS.get(field_name, (A.MUTATION, None, ()))
    return action in recorded or not recorded.isdisjoint(also)


# root field -> (the argument naming the object, its resource type): a NOT_FOUND there may be an id of
# another tenant, recorded as `authz_cross_tenant` (the answer stays NOT_FOUND)
LOOKUP_ARGUMENTS: dict[str, tuple[str, str]] = {
    "rotateApiKey": ("id", "api_key"),
    "revokeApiKey": ("id", "api_key"),
    "updateMemberRole": ("membershipId", "membership"),
    "removeMember": ("membershipId", "membership"),
    "unlockUser": ("userId", "user"),
    "report": ("id", "report"),
    "deleteReportSchedule": ("id", "report_schedule"),
    "organization": ("slug", "organization"),
    "resendInvitation": ("id", "invitation"),
    "revokeInvitation": ("id", "invitation"),
    "unblockAddress": ("id", "address_block"),
    "revokeMemberSessions": ("memberId", "membership"),
}


def _argument(node: FieldNode, name: str, variables: dict[str, Any] | None) -> str | None:
    for arg in node.arguments or ():
        if arg.name.value == name:
            value = arg.value
            if isinstance(value, VariableNode):
                found = (variables or {}).get(value.name.value)
                return found if isinstance(found, str) else None
            return getattr(value, "value", None) if isinstance(getattr(value, "value", None), str) else None
    return None


async def _cross_tenant(ctx: Any, ec: ExecutionContext, errors: list[Any], out: OperationAudit) -> None:
    not_found = {
        str(e.path[0])
        for e in errors
        if e.path and isinstance(e.original_error, GatewayError) and e.original_error.code is ErrorCode.NOT_FOUND
    }
    own = ctx.principal.organization_id
    if not not_found or own is None:
        return
    probes = []
    for node in _root_fields(ec):
        key = node.alias.value if node.alias else node.name.value
        lookup = LOOKUP_ARGUMENTS.get(node.name.value)
        if key in not_found and lookup is not None:
            value = _argument(node, lookup[0], ec.variables)
            if value:
                probes.append((node.name.value, lookup[1], value))
    for field_name, resource_type, value in probes:
        owners = await service.owning_tenants(ctx, resource_type, value)
        if owners and own not in owners:
            # this replaces the field's plain failure entry: one row for the attempt
            out.on_their_own = [e for e in out.on_their_own if (e.details or {}).get("field") != field_name]
            out.on_their_own.append(
                ctx.audit_event(
                    A.AUTHZ_CROSS_TENANT,
                    result=AuditResult.DENIED,
                    resource_type=resource_type,
                    resource_id=value[:64],
                    details={"field": field_name},
                )
            )


async def add_cross_tenant(ctx: Any, ec: ExecutionContext, out: OperationAudit) -> None:
    """Once the request's work is over: which NOT_FOUND answers were ids of another tenant."""
    result = ec.result
    if result is not None and result.errors and ctx.principal.is_authenticated:
        await _cross_tenant(ctx, ec, list(result.errors), out)


def operation_events(ctx: Any, ec: ExecutionContext) -> OperationAudit:
    result = ec.result
    errors = list(result.errors or []) if result is not None else []
    out = OperationAudit([], [])
    forbidden = [
        e for e in errors if isinstance(e.original_error, GatewayError) and e.original_error.code is ErrorCode.FORBIDDEN
    ]
    if forbidden and ctx.principal.is_authenticated and A.AUTHZ_FAIL not in ctx.audited_now:
        required = sorted(
            {
                str(e.original_error.extensions.get("requiredScopes"))  # type: ignore[union-attr]
                for e in forbidden
            }
            - {"None"}
        )
        out.on_their_own.append(
            ctx.audit_event(
                A.AUTHZ_FAIL,
                result=AuditResult.DENIED,
                details={
                    "paths": [".".join(map(str, e.path or ["operation"])) for e in forbidden][:20],
                    "requiredScopes": required[:10],
                },
            )
        )
    executed = result is not None and (result.data is not None or any(e.path for e in errors))
    fields = _root_fields(ec, mutation_only=True) if executed else []
    if not errors:
        out.with_commit = list(ctx.audit_events)
        recorded = ctx.audited_actions | ctx.audited_now
        forwarded = ctx.forwarding.plan.keys if getattr(ctx, "forwarding", None) is not None else frozenset()
        for node in fields:
            name = node.name.value
            if (node.alias or node.name).value in forwarded:
                continue  # an upstream's mutation, audited as it is forwarded (schema.upstreams.forwarding)
            if not _covered(recorded, name):
                log.error("audit_entry_missing", extra={"field": name, "request_id": ctx.principal.request_id})
                action, resource_type, _ = FIELD_ACTIONS.get(name, (A.MUTATION, None, ()))
                out.with_commit.append(ctx.audit_event(action, resource_type=resource_type, details={"field": name}))
        return out
    by_key: dict[str, Any] = {}
    for e in errors:
        if e.path:
            by_key.setdefault(str(e.path[0]), e)
    for node in fields:
        name = node.name.value
        if not ctx.principal.is_authenticated and name not in PUBLIC_FIELDS:
            continue  # refused before it could act; anonymous callers do not get to fill the log
        error = by_key.get(node.alias.value if node.alias else name)
        if error is None or _covered(ctx.audited_now, name):
            continue  # succeeded and rolled back with a failing sibling, or its failure is recorded
        original = error.original_error
        code = original.code if isinstance(original, GatewayError) else ErrorCode.INTERNAL
        if code is ErrorCode.FORBIDDEN:
            continue  # the authz_fail entry names it
        action, resource_type, _ = FIELD_ACTIONS.get(name, (A.MUTATION, None, ()))
        out.on_their_own.append(
            ctx.audit_event(
                action,
                resource_type=resource_type,
                result=AuditResult.DENIED if code in _DENIED_CODES else AuditResult.ERROR,
                details={"field": name, "errorCode": code.value},
            )
        )
    return out


# --- types -------------------------------------------------------------------------------------


@strawberry.type(name="AuditLogEntry")
class AuditLogEntry:
    id: strawberry.ID
    sequence: int
    at: datetime
    actor_type: str
    actor_id: str | None
    action: str
    resource_type: str | None
    resource_id: str | None
    result: str
    request_id: str
    ip: str | None
    details: JSON | None
    hash: str
    previous_hash: str

    @classmethod
    def from_row(cls, e: ReadableEntry) -> AuditLogEntry:
        # the same view audit streams send (store/audit/view.py): a change to what readers see shows in both
        view = entry_view(e)
        return cls(**{**view, "id": strawberry.ID(view["id"])})


@strawberry.type(name="AuditLogEdge")
class AuditLogEdge(Edge[AuditLogEntry]):
    pass


@strawberry.type(name="AuditLogConnection")
class AuditLogConnection(Connection[AuditLogEntry]):
    edges: Sequence[AuditLogEdge]


@strawberry.type(name="AuditChainVerification")
class AuditChainVerification:
    ok: bool
    checked: int
    first_broken_sequence: int | None


@strawberry.input(name="AuditLogFilter")
class AuditLogFilter:
    actor_id: str | None = None
    action: str | None = None
    resource_type: str | None = None
    resource_id: str | None = None
    result: str | None = None
    request_id: str | None = None
    from_: datetime | None = strawberry.field(default=None, name="from")
    to: datetime | None = None
    upstream: str | None = strawberry.field(
        default=None,
        description="Entries about one upstream service, by its name: its forwarded mutations and audited HTTP routes.",
    )


@strawberry.type
class AuditQuery:
    @strawberry.field(
        description="The audit log of the caller's organization (every organization's for the platform "
        "operator), newest first; `first` is 1 to 200.",
        **list_size(
            requires_scopes(Permission.AUDIT_READ), slicing_arguments=["first"], assumed_size=50, sized_fields=["edges"]
        ),
    )
    async def audit_logs(
        self, info: Info, filter: AuditLogFilter | None = None, first: int | None = 50, after: str | None = None
    ) -> AuditLogConnection:
        ctx = info.context
        f = None
        if filter is not None:
            resource_type, resource_id = filter.resource_type, filter.resource_id
            if filter.upstream is not None:
                if resource_type not in (None, "upstream") or resource_id not in (None, filter.upstream):
                    raise BadUserInput("`upstream` names the resource already: leave resourceType and resourceId out.")
                resource_type, resource_id = "upstream", filter.upstream
            f = AuditFilter(
                actor_id=filter.actor_id,
                action=filter.action,
                resource_type=resource_type,
                resource_id=resource_id,
                result=filter.result,
                request_id=filter.request_id,
                start=filter.from_,
                end=filter.to,
            )
        page = await service.list_entries(ctx, f, first, after)
        return AuditLogConnection(
            edges=[AuditLogEdge(cursor=e.cursor, node=AuditLogEntry.from_row(e.node)) for e in page.edges],
            page_info=PageInfo.of(page),
        )

    @strawberry.field(
        description="Recompute the hash chain of the caller's organization (every chain for the platform "
        "operator), within the time range if one is given.",
        **requires_scopes(Permission.AUDIT_VERIFY),
    )
    async def verify_audit_chain(
        self,
        info: Info,
        from_: Annotated[datetime | None, strawberry.argument(name="from")] = None,
        to: datetime | None = None,
    ) -> AuditChainVerification:
        report = await service.verify_chains(info.context, from_, to)
        return AuditChainVerification(
            ok=report.ok, checked=report.checked, first_broken_sequence=report.first_broken_sequence
        )
