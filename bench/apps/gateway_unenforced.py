"""The gateway built with field authorization switched off, to measure what authorization costs.

The same settings, services, middleware and extensions as `gateway.app:create_app`, composed from the
same parts (`gateway.app.gateway_parts`); only the `Authorization` extension, which decides every field
of the operation before execution, is replaced by one that denies nothing (`NothingDenied`), so every
guard lets its field through.
"""

from __future__ import annotations

from collections.abc import Iterator

from starlette.applications import Starlette
from strawberry.extensions import SchemaExtension

from gateway.app import assemble, build_gateway_schema, gateway_parts
from gateway.settings import Settings
from schema import Authorize, ExtensionFactory


class NothingDenied(SchemaExtension):
    """Each operation starts with no denied field, so guards never refuse."""

    def on_operation(self) -> Iterator[None]:
        self.execution_context.context.denied_fields = {}
        yield


def unenforced(installed: list[ExtensionFactory]) -> list[ExtensionFactory]:
    return [NothingDenied if isinstance(extension, Authorize) else extension for extension in installed]


def create_app() -> Starlette:
    parts = gateway_parts(Settings())
    parts.schema = build_gateway_schema(parts.settings, extensions=unenforced)
    return assemble(parts)
