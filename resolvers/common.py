"""Helpers every domain's services share."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

from authz import Principal
from authz.errors import Unauthenticated
from resolvers.deps import RequestContext

NodeT = TypeVar("NodeT")


@dataclass(frozen=True, slots=True)
class PageEdge(Generic[NodeT]):
    """One item of a page and the cursor that resumes the list after it."""

    cursor: str
    node: NodeT


@dataclass(frozen=True, slots=True)
class Page(Generic[NodeT]):
    """A page of a list in keyset order: its items, whether more follow, and the cursor of the last one."""

    edges: list[PageEdge[NodeT]]
    has_next_page: bool
    end_cursor: str | None


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
