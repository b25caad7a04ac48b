"""The gateway built with field authorization switched off, to measure what authorization costs.

The same settings, services, middleware and extensions as `gateway.app:create_app`; only the
`Authorization` extension is replaced by one that denies nothing (`schema.AuthorizationNotEnforced`),
so every guard lets its field through. Reachable from code only, never from settings.
"""

from __future__ import annotations

from starlette.applications import Starlette

import gateway.app
from gateway.settings import Settings


def create_app() -> Starlette:
    return gateway.app.create_app(Settings(), enforce_authorization=False)
