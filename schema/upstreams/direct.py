"""The direct way for a query that only forwards: what the schema's path decided for a document and a kind of
caller, remembered and applied again without running that path.

Forwarding is the gateway's hot path, and almost everything the schema's path does for an operation depends
only on the document and on what the caller holds: the operation limits, the cost when no variable sets it, the
field decisions, the upstream requests to send. The first request of a document, for each kind of caller
(principal kind, permissions, plan), goes through the schema as any other; when the schema finds the operation
to be a query made only of upstream fields, with nothing denied, no fragment or directive and no abstract type
below it, the `Forwarding` extension leaves a *ticket* here. Later requests with the same document and the same
kind of caller use the ticket: what still depends on the request is done again (the variables checked and
coerced as the schema's path does, admission with the ticket's cost, the context token, the upstream calls),
and the upstreams' answers are read through the same types as the schema's path reads them (each value
serialized by its field's own GraphQL type, nulls propagated as GraphQL prescribes). Anything a ticket does
not cover (a variable that does not coerce, an unstorable value, the explain header) goes the schema's way.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import orjson
from graphql import (
    DocumentNode,
    FieldNode,
    GraphQLBoolean,
    GraphQLEnumType,
    GraphQLError,
    GraphQLFloat,
    GraphQLID,
    GraphQLInt,
    GraphQLList,
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLSchema,
    GraphQLString,
    OperationDefinitionNode,
    OperationType,
    get_named_type,
    is_leaf_type,
)
from graphql.execution import get_variable_values
from starlette.requests import Request

from authz import Principal
from schema.extensions import shape_error
from schema.limits.admission import EXPLAIN_HEADER, refusal
from schema.limits.storable import unstorable_variable
from schema.upstreams.forwarding import Forwarder, ForwardState
from schema.upstreams.planning import OperationPlan

log = logging.getLogger("portcullis.upstreams")

_FAILED: Any = object()  # a value that could not be completed; its error is recorded


@dataclass(frozen=True, slots=True)
class _Selection:
    key: str
    node: FieldNode
    parent: str
    field_type: Any
    children: tuple[_Selection, ...] | None
    # reads the upstream's value for this field, compiled once per ticket (see `_reader`)
    read: Any = None


@dataclass(frozen=True, slots=True)
class DirectAnswer:
    """A JSON answer: the view sends it with the media type it negotiated (gateway/graphql.py)."""

    status: int
    body: bytes
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Ticket:
    document: DocumentNode
    operation: OperationDefinitionNode
    plan: OperationPlan
    cost: int
    roots: tuple[_Selection, ...]


def _caller(principal: Principal) -> tuple[Any, ...]:
    return (
        principal.kind,
        principal.effective_permissions,
        principal.plan,
        principal.mfa_enrollment_required,
        principal.password_change_required,
    )


class DirectForward:
    def __init__(self, schema: GraphQLSchema, forwarder: Forwarder, cost_model: Any, cache_size: int = 2048) -> None:
        self.schema = schema
        self.forwarder = forwarder
        self.cost_model = cost_model
        self._tickets: OrderedDict[tuple[Any, ...], Ticket] = OrderedDict()
        self._cache_size = cache_size
        self.answered = 0  # requests answered the direct way

    # -- tickets, left by the schema's path ------------------------------------------------------------
    def remember(
        self,
        query: str,
        operation_name: str | None,
        principal: Principal,
        document: DocumentNode,
        operation: OperationDefinitionNode,
        plan: OperationPlan,
        variables: Mapping[str, Any],
    ) -> None:
        caller = _caller(principal)
        key = (query, operation_name, caller)
        if key in self._tickets:
            return
        roots = self._selections(operation, plan)
        if roots is None:
            return
        cost, used_variables = self.cost_model.estimate(document, operation, variables)
        if used_variables:
            return  # a cost set by a variable is the schema's path's to take, request by request
        ticket = Ticket(document, operation, plan, cost, roots)
        keys = [key]
        if sum(isinstance(d, OperationDefinitionNode) for d in document.definitions) == 1:
            keys.append((query, None, caller))  # the request may name its only operation or not
        for k in dict.fromkeys(keys):
            self._tickets[k] = ticket
            self._tickets.move_to_end(k)
        while len(self._tickets) > self._cache_size:
            self._tickets.popitem(last=False)

    def _selections(self, operation: OperationDefinitionNode, plan: OperationPlan) -> tuple[_Selection, ...] | None:
        """The operation as a tree of plain fields, or None when it holds anything else (a fragment, a
        directive, a field of an abstract type, a local root field)."""
        if operation.operation is not OperationType.QUERY or operation.directives:
            return None
        root = self.schema.query_type
        assert root is not None
        roots = []
        for selection in operation.selection_set.selections:
            if not isinstance(selection, FieldNode) or (selection.alias or selection.name).value not in plan.by_key:
                return None
            found = self._selection(selection, root)
            if found is None:
                return None
            roots.append(found)
        return tuple(roots)

    def _selection(self, node: FieldNode, parent: GraphQLObjectType) -> _Selection | None:
        if node.directives:
            return None
        key = (node.alias or node.name).value
        if node.name.value == "__typename":
            return _Selection(key, node, parent.name, None, None)
        definition = parent.fields.get(node.name.value)
        if definition is None:
            return None
        named = get_named_type(definition.type)
        if node.selection_set is None:
            if not is_leaf_type(named):
                return None
            leaf = _Selection(key, node, parent.name, definition.type, None)
            return replace(leaf, read=_reader(definition.type, leaf))
        if not isinstance(named, GraphQLObjectType):
            return None  # an interface or a union: the schema's path tells the types apart
        children = []
        for child in node.selection_set.selections:
            if not isinstance(child, FieldNode):
                return None
            found = self._selection(child, named)
            if found is None:
                return None
            children.append(found)
        selection = _Selection(key, node, parent.name, definition.type, tuple(children))
        return replace(selection, read=_reader(definition.type, selection))

    # -- requests ----------------------------------------------------------------------------------------
    async def answer(self, request: Request, principal: Principal, services: Any) -> DirectAnswer | None:
        """The answer to a request a ticket covers, or None: the schema's path answers it."""
        if not principal.is_authenticated or request.headers.get(EXPLAIN_HEADER) is not None:
            return None
        if not request.headers.get("content-type", "").startswith("application/json"):
            return None
        body = await request.body()  # kept by the request: the schema's path reads it again if it answers
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(payload, dict) or not payload.keys() <= {"query", "variables", "operationName"}:
            return None
        query, variables, operation_name = payload.get("query"), payload.get("variables"), payload.get("operationName")
        if (
            not isinstance(query, str)
            or not isinstance(variables, dict | None)
            or not isinstance(operation_name, str | None)
        ):
            return None
        ticket = self._tickets.get((query, operation_name, _caller(principal)))
        if ticket is None:
            return None
        variables = variables or {}
        if variables and unstorable_variable(variables) is not None:
            return None
        if ticket.operation.variable_definitions or variables:
            coerced = get_variable_values(self.schema, ticket.operation.variable_definitions or (), variables)
            if isinstance(coerced, list):
                return None
        self.answered += 1
        state = request.scope.get("state", {})
        if ticket.operation.name is not None:
            state["operation"] = ticket.operation.name.value
        decision = None
        if services.admission is not None:
            decision = await services.admission.admit(
                principal,
                key_rate_limit=state.get("api_key_rate_limit"),
                cost=ticket.cost,
                login_accounts=[],
                spend_cost=True,
            )
            state["admission"] = decision  # its RateLimit headers join the answer (gateway/tracing.py)
            if not decision.admitted:
                error = refusal(decision)
                shaped = shape_error(GraphQLError(error.message, original_error=error), principal.request_id)
                refused = {"errors": [shaped.formatted], "extensions": {"cost": decision.cost_extension(ticket.cost)}}
                return DirectAnswer(decision.status, orjson.dumps(refused), decision.headers())
        forwarding = ForwardState(self.forwarder, ticket.plan, variables, _Caller(principal, request))
        try:
            await forwarding.answer_all()
        finally:
            for task in forwarding.tasks.values():
                task.cancel()
        data, errors = self._complete(ticket, forwarding)
        errors = [shape_error(e, principal.request_id) for e in forwarding.finish(errors)]
        out: dict[str, Any] = {"data": data}
        if errors:
            out["errors"] = [e.formatted for e in errors]
        cost = decision.cost_extension(ticket.cost) if decision is not None else None
        out["extensions"] = {"cost": cost or {"requested": ticket.cost, "remaining": None, "resetAt": None}}
        return DirectAnswer(200, orjson.dumps(out))

    def _complete(self, ticket: Ticket, forwarding: ForwardState) -> tuple[dict[str, Any] | None, list[GraphQLError]]:
        errors: list[GraphQLError] = []
        data: dict[str, Any] = {}
        for root in ticket.roots:
            index = ticket.plan.by_key[root.key]
            answer = forwarding.answers[index]
            if answer.failure is not None:
                forwarding.raised.add(root.key)
                answer.failure.extensions.setdefault("requestId", forwarding.ctx.principal.request_id)
                errors.append(
                    GraphQLError(
                        answer.failure.message, nodes=[root.node], path=[root.key], original_error=answer.failure
                    )
                )
                value: Any = _FAILED
            else:
                assert answer.response is not None
                raw = answer.response.get("data")
                raw_value = raw.get(root.key) if isinstance(raw, dict) else None
                told = [
                    e.get("message")
                    for e in _errors(answer.response)
                    if isinstance(e.get("path"), list) and e["path"][:1] == [root.key]
                ]
                if raw_value is None and (told or not isinstance(raw, dict) or root.key not in raw):
                    forwarding.raised.add(root.key)
                    message = told[0] if told and isinstance(told[0], str) else None
                    failure = forwarding.error_for(ticket.plan.batches[index].upstream, message)
                    errors.append(
                        GraphQLError(failure.message, nodes=[root.node], path=[root.key], original_error=failure)
                    )
                    value = _FAILED
                else:
                    value = root.read(raw_value, (None, root.key), errors)
            if value is _FAILED:
                if isinstance(root.field_type, GraphQLNonNull):
                    return None, errors
                value = None
            data[root.key] = value
        return data, errors


ResponsePath = tuple[Any, Any] | None  # (parent path, key): a response path, made a list only for an error


def _path(path: ResponsePath) -> list[Any]:
    keys = []
    while path is not None:
        path, key = path
        keys.append(key)
    return keys[::-1]


def _refuse(message: str, selection: _Selection, path: ResponsePath, errors: list[GraphQLError]) -> None:
    where = _path(path)
    log.warning("upstream answer refused at %s: %s", ".".join(map(str, where)), message)
    errors.append(GraphQLError(message, nodes=[selection.node], path=where))


Reader = Callable[[Any, ResponsePath, list[GraphQLError]], Any]


def _reader(gtype: Any, selection: _Selection) -> Reader:
    """How to read the upstream's value of a field of type `gtype`, as graphql-core completes a value: each leaf
    serialized by its own type, a null in a non-null position an error that makes the nearest nullable parent
    null, anything of the wrong shape an error (its message is the gateway's, masked as UPSTREAM_ERROR)."""
    if isinstance(gtype, GraphQLNonNull):
        inner = _reader(gtype.of_type, selection)
        message = f"Cannot return null for non-nullable field {selection.parent}.{selection.node.name.value}."

        def non_null(value: Any, path: ResponsePath, errors: list[GraphQLError]) -> Any:
            completed = inner(value, path, errors)
            if completed is None:
                _refuse(message, selection, path, errors)
                return _FAILED
            return completed

        return non_null
    if isinstance(gtype, GraphQLList):
        item = _reader(gtype.of_type, selection)
        required = isinstance(gtype.of_type, GraphQLNonNull)

        def listed(value: Any, path: ResponsePath, errors: list[GraphQLError]) -> Any:
            if value is None:
                return None
            if type(value) is not list:
                _refuse("Expected an iterable.", selection, path, errors)
                return _FAILED
            items = []
            for index, each in enumerate(value):
                completed = item(each, (path, index), errors)
                if completed is _FAILED:
                    if required:
                        return _FAILED
                    completed = None
                items.append(completed)
            return items

        return listed
    if selection.children is None:
        serialize = gtype.serialize

        def leaf(value: Any, path: ResponsePath, errors: list[GraphQLError]) -> Any:
            if value is None:
                return None
            try:
                return serialize(value)
            except Exception as exc:
                _refuse(str(exc), selection, path, errors)
                return _FAILED

        return leaf
    name = gtype.name
    fields = tuple(
        (c.key, c.read, isinstance(c.field_type, GraphQLNonNull), c.field_type is None, _passes(c.field_type))
        for c in selection.children
    )

    def obj(value: Any, path: ResponsePath, errors: list[GraphQLError]) -> Any:
        if value is None:
            return None
        if type(value) is not dict or value.get("__typename", name) != name:
            _refuse(f"Expected a value of type {name}.", selection, path, errors)
            return _FAILED
        out: dict[str, Any] = {}
        for key, read, required, typename, passes in fields:
            if typename:
                out[key] = name
                continue
            raw = value.get(key)
            if passes is not None and passes(raw):
                out[key] = raw  # a built-in scalar's value as its type serializes it: unchanged
                continue
            completed = read(raw, (path, key), errors)
            if completed is _FAILED:
                if required:
                    return _FAILED
                completed = None
            out[key] = completed
        return out

    return obj


_INT_MIN, _INT_MAX = -(2**31), 2**31 - 1


def _passes(gtype: Any) -> Callable[[Any], bool] | None:
    """For a field of a built-in scalar or an enum type, a test of the values that its type serializes to
    themselves (a `str` for String and ID, a `bool` for Boolean, a JSON number with a fraction for Float, an
    `int` within 32 bits for Int, a value's name for an enum); anything else, null included, goes the reader's
    way, which serializes it or records its error. None for every other type."""
    named = gtype.of_type if isinstance(gtype, GraphQLNonNull) else gtype
    if named is GraphQLString or named is GraphQLID:
        return _is_str
    if named is GraphQLBoolean:
        return _is_bool
    if named is GraphQLFloat:
        return _is_float  # orjson reads no NaN or infinity: every float it gives is finite
    if named is GraphQLInt:
        return _is_int32
    if isinstance(named, GraphQLEnumType):
        # the names its type serializes to themselves (an upstream's enum values are sent by name)
        names = frozenset(n for n in named.values if _serializes_to_itself(named, n))
        return lambda value: type(value) is str and value in names
    return None


def _serializes_to_itself(gtype: GraphQLEnumType, name: str) -> bool:
    try:
        return bool(gtype.serialize(name) == name)
    except Exception:
        return False


def _is_str(value: Any) -> bool:
    return type(value) is str


def _is_bool(value: Any) -> bool:
    return type(value) is bool


def _is_float(value: Any) -> bool:
    return type(value) is float


def _is_int32(value: Any) -> bool:
    return type(value) is int and _INT_MIN <= value <= _INT_MAX


@dataclass(frozen=True, slots=True)
class _Caller:
    """What a forward needs of the request: who calls, and the headers it may pass on."""

    principal: Principal
    request: Request


def _errors(response: Mapping[str, Any]) -> list[dict[str, Any]]:
    errors = response.get("errors")
    return [e for e in errors if isinstance(e, dict)] if isinstance(errors, list) else []
