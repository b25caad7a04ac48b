"""The gateway built without admission, to measure what admission costs.

The same settings (Redis included), services, middleware and extensions as `gateway.app:create_app`,
composed from the same parts (`gateway.app.gateway_parts`) with the admission step left out: neither the
schema's `AdmissionExtension` nor the edge's `AdmissionMiddleware`, so no limit is counted and no round
trip made for it.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.middleware import Middleware

from gateway.app import assemble, build_gateway_schema, gateway_parts
from gateway.route_admission import AdmissionMiddleware
from gateway.settings import Settings
from schema import ExtensionFactory
from schema.limits.admission import AdmissionExtension


def without_admission(installed: list[ExtensionFactory]) -> list[ExtensionFactory]:
    return [extension for extension in installed if extension is not AdmissionExtension]


def admits(middleware: Middleware) -> bool:
    factory: object = middleware.cls
    return factory is AdmissionMiddleware


def create_app() -> Starlette:
    parts = gateway_parts(Settings())
    parts.schema = build_gateway_schema(parts.settings, extensions=without_admission)
    parts.middleware = [m for m in parts.middleware if not admits(m)]
    return assemble(parts)
