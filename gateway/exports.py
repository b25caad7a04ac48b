"""`GET /exports/{id}.json`: a person's data export (docs/privacy.md), for that person only.

The caller's own credential is needed (401 without one); an export of someone else, an expired one, or an
id that does not exist all answer 404 NOT_FOUND alike, so the route tells nothing about other people's
exports. The download is audited (`data_export_downloaded`).
"""

from __future__ import annotations

import orjson
from starlette.requests import Request
from starlette.responses import Response

from authz import Principal, anonymous
from authz.errors import NotFound
from gateway.middleware import graphql_error
from resolvers.data_export import read_export
from resolvers.deps import RequestContext, Services


def _error(status: int, message: str, code: str) -> Response:
    headers = {"www-authenticate": 'Bearer realm="portcullis"'} if status == 401 else None
    return Response(
        orjson.dumps(graphql_error(message, code)), status_code=status, media_type="application/json", headers=headers
    )


class ExportDownloads:
    def __init__(self, services: Services) -> None:
        self.services = services

    async def download(self, request: Request) -> Response:
        name: str = request.path_params["name"]
        export_id, _, fmt = name.rpartition(".")
        if fmt != "json" or not export_id:
            return _error(404, "Not found.", "NOT_FOUND")
        state = request.scope.get("state", {})
        principal: Principal = state.get("principal") or anonymous(state.get("client_ip"), state.get("request_id"))
        if not principal.is_authenticated:
            return _error(401, "Invalid or missing credentials.", "UNAUTHENTICATED")
        ua = request.headers.get("user-agent")
        ctx = RequestContext.for_route(self.services, principal, user_agent=ua[:256] if ua else None)
        try:
            async with ctx.unit_of_work():
                row, document = await read_export(ctx, export_id)
        except NotFound as exc:
            return _error(404, exc.message, "NOT_FOUND")
        return Response(
            document,
            media_type="application/json",
            headers={
                "content-disposition": f'attachment; filename="data-export-{row.id}.json"',
                "cache-control": "no-store",
            },
        )
