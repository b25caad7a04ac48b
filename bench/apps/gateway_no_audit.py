"""The gateway built without the audit log's entries for operations, to measure what they cost.

The same settings, services, middleware and extensions as `gateway.app:create_app`; only the audit
entries an operation leaves (its mutation's entry, in the same transaction) are not written
(`create_app(record_audit=False)`). Reachable from code only, never from settings.
"""

from __future__ import annotations

from starlette.applications import Starlette

import gateway.app
from gateway.settings import Settings


def create_app() -> Starlette:
    return gateway.app.create_app(Settings(), record_audit=False)
