"""graphql-core baseline: a Starlette endpoint calling `graphql.execute` on a cached, validated document."""

from __future__ import annotations

from typing import Any

from graphql import (
    DocumentNode,
    ExecutionResult,
    GraphQLEnumType,
    GraphQLError,
    GraphQLField,
    GraphQLID,
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLSchema,
    GraphQLString,
    execute,
    parse,
    validate,
)
from graphql.pyutils import is_awaitable
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from authz.plans import Plan
from bench.apps.common import read_organization

CACHE_SIZE = 1024


def build_schema() -> GraphQLSchema:
    plan = GraphQLEnumType("Plan", {p.name: p.value for p in Plan})
    organization = GraphQLObjectType(
        "Organization",
        {
            "id": GraphQLField(GraphQLNonNull(GraphQLID)),
            "slug": GraphQLField(GraphQLNonNull(GraphQLString)),
            "name": GraphQLField(GraphQLNonNull(GraphQLString)),
            "plan": GraphQLField(GraphQLNonNull(plan)),
        },
    )

    async def resolve_organization(_root: Any, _info: Any) -> Any:
        return await read_organization()

    query = GraphQLObjectType(
        "Query",
        {
            "organization": GraphQLField(GraphQLNonNull(organization), resolve=resolve_organization),
        },
    )
    return GraphQLSchema(query=query)


class DocumentCache:
    """Parsed and validated documents by query text; an invalid document is remembered with its errors."""

    def __init__(self, schema: GraphQLSchema, maxsize: int = CACHE_SIZE) -> None:
        self.schema = schema
        self.maxsize = maxsize
        self._entries: dict[str, tuple[DocumentNode | None, list[GraphQLError]]] = {}

    def get(self, query: str) -> tuple[DocumentNode | None, list[GraphQLError]]:
        entry = self._entries.get(query)
        if entry is None:
            entry = self._load(query)
            if len(self._entries) >= self.maxsize:
                self._entries.clear()
            self._entries[query] = entry
        return entry

    def _load(self, query: str) -> tuple[DocumentNode | None, list[GraphQLError]]:
        try:
            document = parse(query)
        except GraphQLError as error:
            return None, [error]
        errors = validate(self.schema, document)
        return (None, errors) if errors else (document, [])


def _errors(errors: list[GraphQLError], status: int = 400) -> JSONResponse:
    return JSONResponse({"errors": [e.formatted for e in errors]}, status_code=status)


def create_app() -> Starlette:
    schema = build_schema()
    documents = DocumentCache(schema)

    async def graphql_endpoint(request: Request) -> JSONResponse:
        body = await request.json()
        document, errors = documents.get(body.get("query") or "")
        if document is None:
            return _errors(errors)
        result = execute(
            schema, document, variable_values=body.get("variables"), operation_name=body.get("operationName")
        )
        if is_awaitable(result):
            result = await result
        assert isinstance(result, ExecutionResult)
        return JSONResponse(result.formatted)

    return Starlette(routes=[Route("/graphql", graphql_endpoint, methods=["POST"])])
