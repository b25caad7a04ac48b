"""The gateway built without the audit log's entries for operations, to measure what they cost.

The same settings, services, middleware and extensions as `gateway.app:create_app`, composed from the
same parts (`gateway.app.gateway_parts`); only the unit of work is one that commits the operation's work
and writes none of the audit entries it leaves (its mutation's entry, in the same transaction).
"""

from __future__ import annotations

from typing import Any

from starlette.applications import Starlette

from gateway.app import assemble, build_gateway_schema, gateway_parts
from gateway.settings import Settings
from schema import ExtensionFactory
from schema.extensions import UnitOfWork


class UnitOfWorkWithoutAudit(UnitOfWork):
    def audit_entries(self, ctx: Any) -> None:
        return None


def without_audit(installed: list[ExtensionFactory]) -> list[ExtensionFactory]:
    return [UnitOfWorkWithoutAudit if extension is UnitOfWork else extension for extension in installed]


def create_app() -> Starlette:
    parts = gateway_parts(Settings())
    parts.schema = build_gateway_schema(parts.settings, extensions=without_audit)
    return assemble(parts)
