"""Strawberry's ASGI view, adapted to the edge: the principal from the middleware, the contract's
error shapes for HTTP-level refusals, 400 for documents that never executed, orjson encoding."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request
from starlette.types import Receive, Scope, Send
from strawberry.asgi import GraphQL
from strawberry.http import GraphQLHTTPResponse, process_result
from cross_web import HTTPException
from strawberry.types import ExecutionResult

from authz import anonymous
from gateway.middleware import graphql_error, send_json
from resolvers.deps import RequestContext, Services


class GraphQLView(GraphQL):
    def __init__(self, schema: Any, services: Services, *, graphiql: bool) -> None:
        super().__init__(schema, graphql_ide="graphiql" if graphiql else None, allow_queries_via_get=True,
                         multipart_uploads_enabled=False)
        self.services = services

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await send_json(send, 400, graphql_error("Unsupported protocol.", "BAD_USER_INPUT"))
            return
        request = Request(scope=scope, receive=receive)
        try:
            response = await self.run(request)
        except HTTPException as exc:
            await send_json(send, exc.status_code, graphql_error(exc.reason, "BAD_USER_INPUT"))
            return
        await response(scope, receive, send)

    async def get_context(self, request: Any, response: Any) -> RequestContext:  # type: ignore[override]
        state = request.scope.get("state", {})
        principal = state.get("principal") or anonymous(state.get("client_ip"), state.get("request_id"))
        ua = request.headers.get("user-agent")
        ctx = RequestContext(self.services, principal, request=request, response=response,
                             user_agent=ua[:256] if ua else None)
        state["graphql_context"] = ctx
        return ctx

    async def process_result(self, request: Request, result: ExecutionResult) -> GraphQLHTTPResponse:  # type: ignore[override]
        data = process_result(result)
        if result.data is None and result.errors and all(e.path is None for e in result.errors):
            ctx = request.scope.get("state", {}).get("graphql_context")
            if ctx is not None and ctx.response is not None:
                ctx.response.status_code = 400
        return data

    def encode_json(self, data: object) -> bytes:  # type: ignore[override]
        return orjson.dumps(data)
