"""Admission of a GraphQL operation, at the one point where its cost is known.

The last step before execution (after the operation limits, the cost and the field decisions): the
request, its cost and its login attempts are taken from the caller's budgets in one call to the
gateway's admission object (`ctx.services.admission`, one round trip), which answers admitted, 429
(`RATE_LIMITED` with `extensions.retryAfter`, `Retry-After` and the `RateLimit` headers) or 503.
An operation refused before validation (a syntax error, the token limit) is counted as it fails, at
no cost.

`X-Portcullis-Explain: 1` turns the operation into a dry run: nothing executes and no cost is spent
(the request itself counts); `extensions.explain` reports the cost, the fields the caller would be
denied and why, the operation limits of the plan and the state of each rate limit.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any

from graphql import (
    FieldNode,
    FragmentSpreadNode,
    GraphQLError,
    InlineFragmentNode,
    OperationDefinitionNode,
    OperationType,
    SelectionSetNode,
    StringValueNode,
    VariableNode,
)
from graphql.utilities import get_operation_ast
from strawberry.extensions import SchemaExtension
from strawberry.types import ExecutionResult

from authz.errors import ErrorCode, GatewayError
from schema.limits.base import fragments_of
from schema.limits.plans import OPERATION_LIMITS, limits_for

EXPLAIN_HEADER = "x-portcullis-explain"
LOGIN_FIELDS = frozenset({"login"})


class RateLimited(GatewayError):
    code = ErrorCode.RATE_LIMITED


def login_accounts(
    operation: OperationDefinitionNode, fragments: Mapping[str, Any], variables: Mapping[str, Any] | None
) -> list[str]:
    """The account named by each root `login` field of the operation, aliases and fragments included:
    every one is an attempt."""
    found: list[str] = []

    def walk(selection_set: SelectionSetNode, visiting: frozenset[str]) -> None:
        for selection in selection_set.selections:
            if isinstance(selection, FieldNode):
                if selection.name.value in LOGIN_FIELDS:
                    found.append(_email(selection, variables or {}))
            elif isinstance(selection, InlineFragmentNode):
                walk(selection.selection_set, visiting)
            elif isinstance(selection, FragmentSpreadNode):
                name = selection.name.value
                fragment = fragments.get(name)
                if fragment is not None and name not in visiting:
                    walk(fragment.selection_set, visiting | {name})

    walk(operation.selection_set, frozenset())
    return found


def _email(node: FieldNode, variables: Mapping[str, Any]) -> str:
    for arg in node.arguments or ():
        if arg.name.value != "email":
            continue
        if isinstance(arg.value, StringValueNode):
            return arg.value.value
        if isinstance(arg.value, VariableNode):
            value = variables.get(arg.value.name.value)
            return value if isinstance(value, str) else ""
    return ""


def refusal(decision: Any) -> GatewayError:
    """The error of a request admission refused: 429 `RATE_LIMITED`, or the limiter unavailable."""
    if decision.status == 429:
        return RateLimited(
            f"Rate limit exceeded ({decision.refused_by.name if decision.refused_by else 'limit'}); "
            f"retry in {decision.retry_after} s.",
            retryAfter=decision.retry_after,
        )
    return GatewayError(
        "The rate limiter is unavailable; retry shortly.", code=ErrorCode.INTERNAL, retryAfter=decision.retry_after
    )


class AdmissionExtension(SchemaExtension):
    def __init__(self) -> None:
        super().__init__()
        self.decision: Any = None
        self.explain = False
        self.explained: dict[str, Any] | None = None

    def _admission(self) -> Any:
        return getattr(self.execution_context.context.services, "admission", None)

    def _state(self) -> dict[str, Any]:
        request = getattr(self.execution_context.context, "request", None)
        return request.scope.get("state", {}) if request is not None else {}

    async def _admit(self, *, cost: int, accounts: list[str]) -> None:
        admission = self._admission()
        if admission is None:
            return
        ctx = self.execution_context.context
        self.decision = decision = await admission.admit(
            ctx.principal,
            key_rate_limit=self._state().get("api_key_rate_limit"),
            cost=cost,
            login_accounts=accounts,
            spend_cost=not self.explain,
        )
        ctx.admission = decision
        self._state()["admission"] = decision  # its RateLimit headers join the answer (gateway/tracing.py)
        if decision.admitted:
            return
        ec = self.execution_context
        error = refusal(decision)
        ec.pre_execution_errors = [GraphQLError(error.message, original_error=error)]
        response = getattr(ctx, "response", None)
        if response is not None:
            response.status_code = decision.status
            for name, value in decision.headers():
                response.headers[name.decode()] = value.decode()

    async def on_validate(self) -> AsyncIterator[None]:
        ec = self.execution_context
        ctx = ec.context
        request = getattr(ctx, "request", None)
        self.explain = request is not None and request.headers.get(EXPLAIN_HEADER) == "1"
        document = ec.graphql_document
        accounts: list[str] = []
        valid = document is not None and not ec.pre_execution_errors
        operation = get_operation_ast(document, ec.operation_name) if document is not None else None
        if request is not None and operation is not None and operation.name is not None:
            request.scope.setdefault("state", {})["operation"] = operation.name.value  # the metrics' name
        if valid and operation is not None and operation.operation is OperationType.MUTATION:
            accounts = login_accounts(operation, fragments_of(document), ec.variables)  # type: ignore[arg-type]
        cost = (ctx.operation_cost or 0) if valid else 0
        await self._admit(cost=cost, accounts=accounts)
        if self.explain:
            self.explained = self._explanation(cost, operation)
        yield

    def on_execute(self) -> Iterator[None]:
        if self.explain:
            # a dry run: the result is set, so nothing resolves
            self.execution_context.result = ExecutionResult(data=None, errors=None)
        yield

    async def on_operation(self) -> AsyncIterator[None]:
        try:
            yield
        except Exception as exc:
            # refused before validation (a syntax error, the token limit), which strawberry raises
            # through the operation: still a request, counted at no cost
            if self.decision is None:
                await self._admit(cost=0, accounts=[])
                decision = self.decision
                if decision is not None and not decision.admitted:
                    errors = self.execution_context.pre_execution_errors or []
                    original = errors[0].original_error if errors else None
                    if isinstance(original, GatewayError):
                        raise original from exc
            raise

    def _explanation(self, cost: int, operation: OperationDefinitionNode | None) -> dict[str, Any]:
        from schema.directives import denial_error

        ctx = self.execution_context.context
        denied = []
        paths = getattr(ctx, "denied_paths", None) or ()
        for reason, path in zip((ctx.denied_fields or {}).values(), paths, strict=False):
            exc = denial_error(ctx.principal, reason)
            if not isinstance(exc, GatewayError):
                continue
            denied.append({"path": list(path), "code": exc.code.value, "message": exc.message, **exc.extensions})
        decision = self.decision
        limits = []
        for s in getattr(decision, "states", ()):
            limits.append(
                {
                    "name": s.limit.name,
                    "limit": s.limit.amount,
                    "window": s.limit.window,
                    "used": s.used,
                    "remaining": s.remaining,
                }
            )
        row = limits_for(ctx.principal, OPERATION_LIMITS)
        return {
            "operation": operation.operation.value if operation is not None else None,
            "cost": cost,
            "denied": denied,
            "operationLimits": {
                "depth": row.depth,
                "aliases": row.aliases,
                "tokens": row.tokens,
                "rootFields": row.root_fields,
                "directives": row.directives,
                "cost": row.cost,
            },
            "rateLimits": limits,
        }

    def get_results(self) -> dict[str, Any]:
        ctx = self.execution_context.context
        # with what the resolvers charged for work priced by the data, and the budget left after it
        requested = (ctx.operation_cost or 0) + getattr(ctx, "work_cost", 0)
        decision = getattr(ctx, "work_charge", None) or self.decision
        if decision is not None:
            cost = decision.cost_extension(requested)
        else:
            cost = {"requested": requested, "remaining": None, "resetAt": None}
        results: dict[str, Any] = {"cost": cost}
        if self.explained is not None:
            results["explain"] = self.explained
        return results
