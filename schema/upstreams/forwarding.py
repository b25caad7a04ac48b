"""Forwarding: what each upstream receives for an operation, and how its answer joins the response.

For an operation, every upstream receives one request (for a mutation, one per run of consecutive root fields
of the same upstream, so that root mutations still run in the order written) holding exactly the selections
the caller may see: the fields authorization denied are cut out (C-135), the fragments and variables the
selections use are carried along, and preset arguments are added as variables the gateway fills from the
caller (C-136). The forwarded document depends only on the document, the operation and the denied fields, so
it is printed once and cached; per request, only the variables and the headers are new.

Query batches start together when execution starts; local fields resolve meanwhile. The upstream's answer is
read field by field through the generated types, so that what leaves is exactly what the caller asked, typed
as the schema says (C-139). Upstream errors are re-pathed into the response, masked unless the upstream's
`expose_errors` is set.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from graphql import (
    DocumentNode,
    GraphQLError,
    OperationType,
)
from graphql.utilities import get_operation_ast
from opentelemetry.trace import SpanKind
from strawberry.extensions import SchemaExtension

from authz import Principal
from authz.errors import ErrorCode, GatewayError, UpstreamError
from identity.context_tokens import ContextTokens
from resolvers.upstream_client import NEVER_FORWARDED, UpstreamClient, sendable_header_value
from schema.upstreams.composition import Composition
from schema.upstreams.planning import Batch, OperationPlan, Planner
from schema.upstreams.types import UpstreamRead
from store.audit import AuditAction
from store.telemetry import propagation_headers, span

log = logging.getLogger("portcullis.upstreams")


class Forwarder:
    """The upstreams at run time: their clients, the context tokens, and the forwarding plans."""

    def __init__(
        self,
        composition: Composition,
        tokens: ContextTokens,
        clients: Mapping[str, UpstreamClient] | None = None,
        cache_size: int = 1024,
    ) -> None:
        self.composition = composition
        self.tokens = tokens
        self.clients = (
            dict(clients)
            if clients is not None
            else {name: UpstreamClient(m.config) for name, m in composition.upstreams.items()}
        )
        self._plans: OrderedDict[tuple[Any, ...], OperationPlan] = OrderedDict()
        self._cache_size = cache_size
        # the direct way for queries that only forward (schema.upstreams.direct), once the schema is built
        self.direct: Any = None

    async def close(self) -> None:
        for client in self.clients.values():
            await client.close()

    def status(self) -> dict[str, dict[str, Any]]:
        return {
            name: {
                "circuit": client.breaker.state,
                "requests": client.requests,
                "failures": client.failures,
                "circuitOpened": client.breaker.times_opened,
            }
            for name, client in self.clients.items()
        }

    def plan(
        self, document: DocumentNode, operation_name: str | None, denied: Mapping[int, Any]
    ) -> OperationPlan | None:
        key = (id(document), operation_name, frozenset(denied))
        cached = self._plans.get(key)
        if cached is not None and cached.document is document:
            self._plans.move_to_end(key)
            return cached
        operation = get_operation_ast(document, operation_name)
        if operation is None or operation.operation not in (OperationType.QUERY, OperationType.MUTATION):
            return None
        plan = Planner(self.composition, document, operation, denied).plan()
        self._plans[key] = plan
        if len(self._plans) > self._cache_size:
            self._plans.popitem(last=False)
        return plan


def _attribute(principal: Principal, attribute: str) -> Any:
    if attribute == "organization.id":
        return principal.organization_id
    if attribute == "organization.plan":
        return principal.plan
    if attribute == "subject.id":
        return principal.subject_id
    if attribute == "subject.kind":
        return principal.kind.value
    if attribute == "request.id":
        return principal.request_id
    if attribute == "client.ip":
        return principal.client_ip
    raise KeyError(attribute)


@dataclass
class _Answer:
    response: dict[str, Any] | None = None
    failure: GatewayError | None = None
    latency_ms: float = 0.0


@dataclass
class ForwardState:
    """One operation's forwarding: the batches in flight and what they answered."""

    forwarder: Forwarder
    plan: OperationPlan
    variables: Mapping[str, Any]
    ctx: Any
    tasks: dict[int, asyncio.Task[_Answer]] = field(default_factory=dict)
    answers: dict[int, _Answer] = field(default_factory=dict)  # what each batch answered, once it has
    raised: set[str] = field(default_factory=set)  # root keys whose error was raised at the field

    def start(self, index: int) -> asyncio.Task[_Answer]:
        task = self.tasks.get(index)
        if task is None:
            task = asyncio.ensure_future(self._send(index))
            self.tasks[index] = task
        return task

    def start_queries(self) -> None:
        for index, batch in enumerate(self.plan.batches):
            if not batch.mutation:
                self.start(index)

    async def answer_all(self) -> None:
        """Every batch of the operation answered: one alone is awaited in place, several concurrently."""
        if len(self.plan.batches) == 1:
            await self._send(0)
            return
        self.start_queries()
        await asyncio.gather(*self.tasks.values())

    def _headers(self, batch: Batch) -> dict[str, str]:
        principal: Principal = self.ctx.principal
        forwarder = self.forwarder
        mounted = forwarder.composition.upstreams[batch.upstream]
        token = forwarder.tokens.token_for(principal, batch.upstream, mounted.permissions)
        headers = {
            "content-type": "application/json",
            "accept": "application/graphql-response+json, application/json",
            "authorization": f"Bearer {token}",
        }
        if principal.request_id:
            headers["x-request-id"] = principal.request_id
        if principal.client_ip:
            headers["x-forwarded-for"] = principal.client_ip  # rebuilt from the trusted address, never copied
        headers.update(propagation_headers())  # the call's own span when traces are recorded
        request = getattr(self.ctx, "request", None)
        if request is not None:
            for name in mounted.config.forward_headers:
                value = request.headers.get(name)
                if value is not None and name.lower() not in NEVER_FORWARDED and sendable_header_value(value):
                    headers[name.lower()] = value
        return headers

    async def _send(self, index: int) -> _Answer:
        batch = self.plan.batches[index]
        variables = {name: self.variables[name] for name in batch.variables if name in self.variables}
        for name, attribute in batch.presets.items():
            variables[name] = _attribute(self.ctx.principal, attribute)
        body = batch.body_prefix + b',"variables":' + orjson.dumps(variables) + b"}"
        client = self.forwarder.clients[batch.upstream]
        started = time.perf_counter()
        with span(
            f"upstream {batch.upstream}", kind=SpanKind.CLIENT, attributes={"portcullis.upstream": batch.upstream}
        ):
            try:
                response = await client.post(body, {**self._headers(batch), **propagation_headers()})
                answer = _Answer(response=response)
            except GatewayError as exc:
                answer = _Answer(failure=exc)
        answer.latency_ms = (time.perf_counter() - started) * 1000
        self.answers[index] = answer
        return answer

    async def audit_mutations(self, errors: list[GraphQLError]) -> None:
        """An entry for every forwarded root mutation field: its upstream, the outcome the caller saw (an
        error at the field or below it, the upstream's or the gateway's, is an error), the latency."""
        failed = {error.path[0] for error in errors if error.path}
        for index, answer in self.answers.items():
            batch = self.plan.batches[index]
            if not batch.mutation:
                continue
            unavailable = answer.failure is not None and answer.failure.code is ErrorCode.UPSTREAM_UNAVAILABLE
            for key, field_name in zip(batch.keys, batch.fields, strict=True):
                outcome = "unavailable" if unavailable else "error" if key in failed else "success"
                await self._audit(batch, field_name, outcome, answer.latency_ms)

    async def _audit(self, batch: Batch, field_name: str, outcome: str, latency_ms: float) -> None:
        try:
            await self.ctx.audit_durably(
                AuditAction.UPSTREAM_MUTATION,
                result="success" if outcome == "success" else "error",
                resource_type="upstream",
                resource_id=batch.upstream,
                details={
                    "upstream": batch.upstream,
                    "field": field_name,
                    "outcome": outcome,
                    "latencyMs": round(latency_ms, 1),
                },
            )
        except Exception:
            log.exception(
                "audit entry of an upstream mutation not written", extra={"request_id": self.ctx.principal.request_id}
            )

    def error_for(self, upstream: str, message: str | None) -> UpstreamError:
        config = self.forwarder.composition.upstreams[upstream].config
        shown = message if config.expose_errors and message else f"The upstream {upstream} answered with an error."
        return UpstreamError(shown, upstream=upstream, requestId=self.ctx.principal.request_id)

    async def root_value(self, key: str, nullable: bool) -> Any:
        index = self.plan.by_key.get(key)
        if index is None:
            return None
        batch = self.plan.batches[index]
        answer = await self.start(index)
        if answer.failure is not None:
            self.raised.add(key)
            failure = answer.failure
            failure.extensions.setdefault("requestId", self.ctx.principal.request_id)
            raise failure
        assert answer.response is not None
        data = answer.response.get("data")
        value = data.get(key) if isinstance(data, dict) else None
        if value is None:
            message = next(
                (
                    e.get("message")
                    for e in _errors(answer.response)
                    if isinstance(e.get("path"), list) and e["path"][:1] == [key]
                ),
                None,
            )
            if message is not None or not nullable or not isinstance(data, dict) or key not in data:
                self.raised.add(key)
                if message is None and isinstance(data, dict) and key in data and nullable:
                    return None
                raise self.error_for(batch.upstream, message if isinstance(message, str) else None)
        return value

    def finish(self, errors: list[GraphQLError]) -> list[GraphQLError]:
        """The operation's errors with those under upstream fields told as upstream errors (with the upstream's
        own message at that path, if it sent one), and the upstreams' other errors below their root fields added
        at their paths."""
        told: dict[tuple[Any, ...], tuple[str, str | None]] = {}  # path -> (upstream, its message)
        for index, answer in self.answers.items():
            if answer.response is None:
                continue
            batch = self.plan.batches[index]
            for entry in _errors(answer.response):
                path = entry.get("path")
                if not isinstance(path, list) or not path or path[0] not in batch.keys or path[0] in self.raised:
                    continue
                if all(isinstance(p, str | int) for p in path):
                    message = entry.get("message")
                    told.setdefault(tuple(path), (batch.upstream, message if isinstance(message, str) else None))
        out: list[GraphQLError] = []
        for error in errors:
            path = tuple(error.path or ())
            if path and path[0] in self.plan.by_key and not isinstance(error.original_error, GatewayError):
                upstream, message = told.pop(path, (self.plan.batches[self.plan.by_key[path[0]]].upstream, None))
                error = GraphQLError(
                    error.message, nodes=error.nodes, path=list(path), original_error=self.error_for(upstream, message)
                )
            else:
                told.pop(path, None)
            out.append(error)
        for path, (upstream, message) in told.items():
            out.append(GraphQLError("", path=list(path), original_error=self.error_for(upstream, message)))
        return out


def _errors(response: Mapping[str, Any]) -> list[dict[str, Any]]:
    errors = response.get("errors")
    if not isinstance(errors, list):
        return []
    return [e for e in errors if isinstance(e, dict)]


class UpstreamRoot(UpstreamRead):
    """A mounted root field: its value comes from its upstream's answer to the operation's batch."""

    def __init__(self, upstream: str, operation: str, *, nullable: bool) -> None:
        super().__init__()
        self.upstream = upstream
        self.operation = operation
        self.nullable = nullable

    def resolve(self, next_: Any, source: Any, info: Any, **kwargs: Any) -> Any:
        state: ForwardState | None = getattr(info.context, "forwarding", None)
        if state is None:
            raise UpstreamError(f"The upstream {self.upstream} cannot be reached.", upstream=self.upstream)
        return state.root_value(info.path.key, self.nullable)


class Forwarding(SchemaExtension):
    """Plans the operation's upstream requests once its fields are decided, starts the query batches as
    execution starts, and tells the upstreams' errors at their paths when it ends."""

    async def on_execute(self) -> AsyncIterator[None]:
        ec = self.execution_context
        ctx = ec.context
        forwarder: Forwarder | None = getattr(ctx.services, "upstreams", None)
        state = None
        if (
            forwarder is not None
            and ec.graphql_document is not None
            and not ec.pre_execution_errors
            and ec.result is None
        ):
            plan = forwarder.plan(ec.graphql_document, ec.operation_name, ctx.denied_fields or {})
            if plan is not None and plan.batches:
                state = ForwardState(forwarder, plan, ec.variables or {}, ctx)
                ctx.forwarding = state
                state.start_queries()
                direct = forwarder.direct
                if direct is not None and not ctx.denied_fields and ec.query is not None:
                    operation = get_operation_ast(ec.graphql_document, ec.operation_name)
                    if operation is not None:
                        direct.remember(
                            ec.query,
                            ec.operation_name,
                            ctx.principal,
                            ec.graphql_document,
                            operation,
                            plan,
                            ec.variables or {},
                        )
        yield
        if state is None:
            return
        for task in state.tasks.values():
            if not task.done():
                task.cancel()
        result = ec.result
        errors = state.finish(list(result.errors or ())) if result is not None else []
        if result is not None:
            result.errors = errors or None
        await state.audit_mutations(errors)
