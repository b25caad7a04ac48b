"""Strawberry's ASGI view, adapted to the edge: the principal from the middleware, the contract's
error shapes for HTTP-level refusals, the response's media type and request-error status negotiated
from `Accept` (gateway/graphql_http.py), 405 with `Allow` for other methods and for a mutation over GET,
orjson encoding."""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import orjson
from cross_web import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send
from strawberry.asgi import GraphQL
from strawberry.http import GraphQLHTTPResponse, process_result
from strawberry.schema.exceptions import InvalidOperationTypeError
from strawberry.types import ExecutionResult

from authz import anonymous
from authz.errors import ErrorCode
from gateway.graphiql import graphiql_page
from gateway.graphql_http import GRAPHQL_RESPONSE_JSON, LEGACY, Negotiated, negotiate
from gateway.middleware import BodyTooLarge, graphql_error, send_encoded, send_json
from resolvers.deps import RequestContext, Services
from schema.extensions import MASKED_MESSAGE, shape_error

log = logging.getLogger("portcullis.graphql")

ALLOW_GET_POST = [(b"allow", b"GET, POST")]
ALLOW_POST = [(b"allow", b"POST")]
# the parameters of a GET request, each at most once: which of two values counts is not for the server to guess
_GET_PARAMETERS = ("query", "variables", "operationName", "extensions")


class GraphQLView(GraphQL):
    def __init__(self, schema: Any, services: Services, *, graphiql: bool) -> None:
        super().__init__(
            schema,
            graphql_ide="graphiql" if graphiql else None,
            allow_queries_via_get=True,
            multipart_uploads_enabled=False,
        )
        self.services = services

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await send_json(send, 400, graphql_error("Unsupported protocol.", "BAD_USER_INPUT"))
            return
        method = scope["method"]
        if method not in ("GET", "POST"):
            error = graphql_error("GraphQL is served over GET (queries) and POST.", "BAD_USER_INPUT")
            await send_json(send, 405, error, ALLOW_GET_POST)
            return
        request = Request(scope=scope, receive=receive)
        accept = next((v for k, v in scope["headers"] if k == b"accept"), None)
        negotiated = negotiate(accept)
        if negotiated.media_type is None and not self.should_render_graphql_ide(self.request_adapter_class(request)):
            error = graphql_error(
                "Nothing acceptable: GraphQL responses are application/graphql-response+json or application/json.",
                "BAD_USER_INPUT",
            )
            await send_json(send, 406, error)
            return
        if method == "GET" and any(len(request.query_params.getlist(p)) > 1 for p in _GET_PARAMETERS):
            error = graphql_error("Each GraphQL parameter is given at most once in the query string.", "BAD_USER_INPUT")
            await send_json(send, 400, error)
            return
        scope.setdefault("state", {})["graphql_media"] = negotiated
        started = False
        rewrite = negotiated.media_type == GRAPHQL_RESPONSE_JSON

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                if rewrite:
                    message["headers"] = _with_content_type(message.get("headers", ()), negotiated)
            await send(message)

        try:
            direct = getattr(self.services.upstreams, "direct", None)
            if direct is not None and method == "POST":
                state = scope.get("state", {})
                principal = state.get("principal")
                answered = await direct.answer(request, principal, self.services) if principal is not None else None
                if answered is not None:
                    started = True
                    await send_encoded(
                        send, answered.status, answered.body, answered.headers, media_type=negotiated.content_type
                    )
                    return
            try:
                response = await self.run(request)
            except HTTPException as exc:
                if method == "GET" and isinstance(exc.__cause__, InvalidOperationTypeError):
                    # GraphQL over HTTP: a mutation over GET is 405, with the method that would do
                    error = graphql_error("Only queries are sent with GET: send mutations with POST.", "BAD_USER_INPUT")
                    await send_json(tracking_send, 405, error, ALLOW_POST)
                else:
                    await send_json(tracking_send, exc.status_code, graphql_error(exc.reason, "BAD_USER_INPUT"))
                return
            finally:
                await self._release(scope)
            await response(scope, receive, tracking_send)
        except BodyTooLarge:
            raise  # the body limit answers this one
        except Exception as exc:
            # Anything that escapes the schema still leaves as the contract's INTERNAL error, through
            # the edge (request id, security headers), never as a bare 500 page.
            if started:
                raise
            rid = scope.get("state", {}).get("request_id")
            log.error("unexpected error in the GraphQL view", exc_info=exc, extra={"request_id": rid})
            await send_json(send, 500, graphql_error(MASKED_MESSAGE, ErrorCode.INTERNAL.value, requestId=rid))

    @staticmethod
    async def _release(scope: Scope) -> None:
        """The request's database session never outlives the request. The unit of work closes it;
        when something bypassed that (a schema extension failing on its way in, which strawberry
        does not unwind), whatever it holds is rolled back here, before the response leaves."""
        ctx = scope.get("state", {}).get("graphql_context")
        if ctx is not None and ctx.db_opened:
            log.warning(
                "request session left open; rolled back", extra={"request_id": scope.get("state", {}).get("request_id")}
            )
            with contextlib.suppress(Exception):
                await ctx.finish(commit=False)

    async def render_graphql_ide(self, request: Request) -> Response:
        return graphiql_page()

    async def get_context(self, request: Any, response: Any) -> RequestContext:  # type: ignore[override]
        state = request.scope.get("state", {})
        principal = state.get("principal") or anonymous(state.get("client_ip"), state.get("request_id"))
        ua = request.headers.get("user-agent")
        ctx = RequestContext(
            self.services, principal, request=request, response=response, user_agent=ua[:256] if ua else None
        )
        state["graphql_context"] = ctx
        return ctx

    async def process_result(self, request: Request, result: ExecutionResult) -> GraphQLHTTPResponse:
        state = request.scope.get("state", {})
        if result.errors:
            # Shaped here, at the boundary, so that errors raised around the operation (a syntax
            # error from the parser cache, an extension failing) get their code like the others.
            result.errors = [shape_error(e, state.get("request_id")) for e in result.errors]
        data = process_result(result)
        if result.data is None and result.errors and all(e.path is None for e in result.errors):
            # Nothing executed (or the whole operation failed): no `data` entry, and an HTTP status
            # that says so, unless an extension already chose one.
            data.pop("data", None)
            ctx = state.get("graphql_context")
            if ctx is not None and ctx.response is not None and ctx.response.status_code in (None, 200):
                internal = any((e.extensions or {}).get("code") == ErrorCode.INTERNAL.value for e in result.errors)
                if internal:
                    ctx.response.status_code = 500
                elif not state.get("graphql_media", LEGACY).request_errors_ok:
                    ctx.response.status_code = 400
        return data

    def parse_query_params(self, params: Any) -> dict[str, Any]:
        try:
            return super().parse_query_params(params)
        except HTTPException as exc:
            raise HTTPException(400, "The `variables` or `extensions` parameter is not JSON.") from exc

    def decode_json(self, data: str | bytes) -> object:
        try:
            value = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise HTTPException(400, "Unable to parse request body as JSON") from exc
        if not isinstance(value, dict | list):
            raise HTTPException(400, "The request body must be a JSON object.")
        return value

    def encode_json(self, data: object) -> bytes:
        return orjson.dumps(data)


def _with_content_type(headers: Any, negotiated: Negotiated) -> list[tuple[bytes, bytes]]:
    """The response's headers with the negotiated media type where the view wrote `application/json`."""
    media = negotiated.content_type
    return [(k, media if k == b"content-type" and v == b"application/json" else v) for k, v in headers]
