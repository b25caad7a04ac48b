from __future__ import annotations

from typing import TypeAlias

from strawberry.types import Info as _Info

from resolvers.deps import RequestContext

Info: TypeAlias = _Info[RequestContext, None]
