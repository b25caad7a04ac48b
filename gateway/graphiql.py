"""GraphiQL in development, entirely from this package: the page at `GET /graphql` (a browser's `Accept:
text/html`, no query) and its scripts and styles under `/graphiql/`, copied from the npm registry's
packages into gateway/static/graphiql (their versions, digests and licenses: SOURCES.md there). Nothing is
fetched from another host, so GraphiQL works offline and behind a proxy that allows only the gateway, and
its page's policy allows only the gateway's own origin. Prod serves neither the page nor the files.
"""

from __future__ import annotations

from pathlib import Path

from starlette.responses import HTMLResponse, Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

ASSETS = Path(__file__).resolve().parent / "static" / "graphiql"
PREFIX = "/graphiql"
VERSIONS = {"graphiql": "3.8.3", "react": "18.3.1", "react-dom": "18.3.1"}
# the files change only with a release of the gateway: a day in the browser's cache, revalidated by ETag
ASSET_CACHE_CONTROL = "public, max-age=86400"

# only the gateway's own origin; GraphiQL's stylesheet carries its fonts and icons as data: URLs
GRAPHIQL_CSP = (
    b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; font-src 'self' data:; "
    b"connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)

PAGE = f"""<!doctype html>
<html lang="en">
  <head>
    <meta charset="utf-8">
    <title>Portcullis GraphiQL</title>
    <link rel="icon" href="data:,">
    <link rel="stylesheet" href="{PREFIX}/graphiql.min.css">
    <link rel="stylesheet" href="{PREFIX}/portcullis-graphiql.css">
  </head>
  <body>
    <div id="graphiql">Loading…</div>
    <script src="{PREFIX}/react.production.min.js"></script>
    <script src="{PREFIX}/react-dom.production.min.js"></script>
    <script src="{PREFIX}/graphiql.min.js"></script>
    <script src="{PREFIX}/portcullis-graphiql.js"></script>
  </body>
</html>
"""


def graphiql_page() -> Response:
    return HTMLResponse(PAGE)


class GraphiQLAssets(StaticFiles):
    """The files of gateway/static/graphiql, with a cache lifetime."""

    def __init__(self) -> None:
        super().__init__(directory=ASSETS)

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        if response.status_code in (200, 304):
            response.headers["cache-control"] = ASSET_CACHE_CONTROL
        return response
