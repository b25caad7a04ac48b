"""The gateway built without admission, to measure what admission costs.

The same settings (Redis included), services, middleware and extensions as `gateway.app:create_app`;
only the admission step is left out (`create_app(admission=False)`), so no limit is counted and no
round trip made for it. Reachable from code only, never from settings.
"""

from __future__ import annotations

from starlette.applications import Starlette

import gateway.app
from gateway.settings import Settings


def create_app() -> Starlette:
    return gateway.app.create_app(Settings(), admission=False)
