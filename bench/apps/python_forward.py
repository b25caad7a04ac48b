"""The `forward` scenario's Python floor: the least a Python GraphQL proxy on this stack does per request.

A Starlette endpoint under uvicorn that reads the POSTed JSON, parses and validates the document against the
orders schema (both cached by query text, as the gateway caches them), posts the request to the orders
upstream through one pooled client (pyreqwest's, as the gateway's) and answers the upstream's body as it
came. No authentication, admission, authorization, context token, request id, access log or metrics: what
the gateway spends beyond this server is the edge, and what this server spends beyond GraphQL Hive Gateway is
Python and its libraries. The upstream's URL comes from the upstreams file the harness writes
(`PORTCULLIS_UPSTREAMS_FILE`).
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import orjson
from graphql import GraphQLError, build_ast_schema, parse, validate
from pyreqwest.client import Client, ClientBuilder
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bench.forward import ORDERS_SDL, upstream_sdl_document

CACHE_SIZE = 1024


def _upstream_url() -> str:
    config = tomllib.loads(Path(os.environ["PORTCULLIS_UPSTREAMS_FILE"]).read_text(encoding="utf-8"))
    return str(config["upstream"][0]["url"])


def create_app() -> Starlette:
    schema = build_ast_schema(upstream_sdl_document(ORDERS_SDL.read_text(encoding="utf-8")))
    url = _upstream_url()
    checked: dict[str, list[GraphQLError]] = {}
    session: Client | None = None

    def errors_of(query: str) -> list[GraphQLError]:
        errors = checked.get(query)
        if errors is None:
            try:
                errors = validate(schema, parse(query))
            except GraphQLError as error:
                errors = [error]
            if len(checked) >= CACHE_SIZE:
                checked.clear()
            checked[query] = errors
        return errors

    async def graphql(request: Request) -> Response:
        payload = orjson.loads(await request.body())
        errors = errors_of(payload["query"])
        if errors:
            body = orjson.dumps({"errors": [e.formatted for e in errors]})
            return Response(body, status_code=400, media_type="application/json")
        assert session is not None
        forwarded = orjson.dumps({"query": payload["query"], "variables": payload.get("variables") or {}})
        outgoing = session.post(url).body_bytes(forwarded).header("content-type", "application/json").build()
        answer = await outgoing.send()
        return Response(bytes(await answer.bytes()), status_code=answer.status, media_type="application/json")

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        nonlocal session
        session = ClientBuilder().max_connections(64).follow_redirects(False).no_proxy().build()
        try:
            yield
        finally:
            await session.close()

    return Starlette(routes=[Route("/graphql", graphql, methods=["POST"])], lifespan=lifespan)
