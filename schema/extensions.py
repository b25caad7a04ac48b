"""Error shaping, and the schema extensions that wrap every operation: the unit of work, introspection."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

from graphql import GraphQLError
from graphql.validation import NoSchemaIntrospectionCustomRule
from strawberry.extensions import SchemaExtension
from strawberry.types.graphql import OperationType

from authz.errors import ErrorCode, GatewayError
from schema.audit import OperationAudit, add_cross_tenant, operation_events

log = logging.getLogger("portcullis.graphql")

MASKED_MESSAGE = "Unexpected error."


def _request_id(context: Any) -> str | None:
    principal = getattr(context, "principal", None)
    return getattr(principal, "request_id", None)


def shape_error(error: GraphQLError, request_id: str | None) -> GraphQLError:
    """Every error leaves with `extensions.code`; anything unexpected is masked."""
    original = error.original_error
    if isinstance(original, GatewayError):
        return GraphQLError(
            original.message,
            nodes=error.nodes,
            source=error.source,
            positions=error.positions,
            path=error.path,
            extensions={"code": original.code.value, **original.extensions},
        )
    if original is None or isinstance(original, GraphQLError):
        # a document or variable the caller got wrong (an unknown enum value in a variable carries the
        # coercion's own GraphQLError as its original error)
        extensions = dict(error.extensions or {})
        extensions.setdefault("code", ErrorCode.BAD_USER_INPUT.value)
        return GraphQLError(
            error.message,
            nodes=error.nodes,
            source=error.source,
            positions=error.positions,
            path=error.path,
            extensions=extensions,
        )
    return GraphQLError(
        MASKED_MESSAGE,
        nodes=error.nodes,
        source=error.source,
        positions=error.positions,
        path=error.path,
        extensions={"code": ErrorCode.INTERNAL.value, "requestId": request_id},
    )


class UnitOfWork(SchemaExtension):
    """Commits the request's database session once, when the operation ends without error, with the
    operation's audit entries; if they cannot be written, nothing is committed."""

    def audit_entries(self, ctx: Any) -> OperationAudit | None:
        """What the operation leaves in the audit log (schema.audit): a mutation's entries commit with it."""
        return operation_events(ctx, self.execution_context) if hasattr(ctx, "audit_events") else None

    def on_validate(self) -> Iterator[None]:
        # a mutation's unit of work takes the writers' turn when it opens its session (store.db)
        ctx = self.execution_context.context
        if hasattr(ctx, "writes"):
            ctx.writes = self.execution_context.operation_type is OperationType.MUTATION
        yield

    async def on_operation(self) -> AsyncIterator[None]:
        ctx = self.execution_context.context
        try:
            try:
                yield
            except BaseException:
                # Something raised through the operation (another extension, a cancelled request):
                # whatever was written is rolled back and the connection goes back to the pool.
                with contextlib.suppress(Exception):
                    await ctx.finish(commit=False)
                raise
            await self._end(ctx)
        finally:
            if hasattr(ctx, "release_turn"):
                ctx.release_turn()  # whatever happened on the way, the next writer's turn comes

    async def _end(self, ctx: Any) -> None:
        result = self.execution_context.result
        ok = result is not None and not result.errors
        events = self.audit_entries(ctx)
        try:
            # the same end as a unit of work outside GraphQL (RequestContext.unit_of_work)
            await ctx.finish(commit=ok, audit_events=events.with_commit if events is not None else ())
        except Exception as exc:
            log.exception("commit failed", extra={"request_id": _request_id(ctx)})
            with contextlib.suppress(Exception):
                await ctx.finish(commit=False)
            ok = False
            if result is not None:
                result.data = None
                result.errors = [GraphQLError("commit failed", original_error=exc)]
        if events is not None and not ok:
            try:
                await add_cross_tenant(ctx, self.execution_context, events)
                await ctx.services.audit.record(*events.on_their_own)
            except Exception:
                log.exception("audit entries not written", extra={"request_id": _request_id(ctx)})


class IntrospectionGuard(SchemaExtension):
    """Refuses `__schema` and `__type` to anonymous callers (installed when introspection is off for them)."""

    def on_operation(self) -> Iterator[None]:
        principal = self.execution_context.context.principal
        if not principal.is_authenticated:
            rules = self.execution_context.validation_rules
            self.execution_context.validation_rules = (*rules, NoSchemaIntrospectionCustomRule)
        yield
