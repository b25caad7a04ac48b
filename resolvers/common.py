"""Helpers every domain's services share."""

from __future__ import annotations

from authz import Principal
from authz.errors import Unauthenticated
from resolvers.deps import RequestContext


def tenant_of(principal: Principal) -> str:
    """The organization every query of the caller is scoped to; a caller without one is unauthenticated."""
    if principal.organization_id is None:
        raise Unauthenticated("Authentication required.")
    return principal.organization_id


def announce_after_commit(ctx: RequestContext, keys: list[str]) -> None:
    """Tell every process, once the request's changes are committed, which cached sessions are stale."""

    async def announce() -> None:
        await ctx.services.revocations.publish(keys)

    ctx.after_commit.append(announce)
