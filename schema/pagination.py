"""Cursor pagination: `PageInfo` and the generic connection every paginated list answers with.

A list subclasses `Connection[Node]` under its own name (`MembershipConnection(Connection[Membership])`); its
edges are `Edge[Node]`, named `<Node>Edge` in the SDL, unless the list subclasses `Edge` too with its own name
(`AuditLogEdge` of `AuditLogEntry`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Generic, Self, TypeVar

import strawberry

from resolvers.common import Page

T = TypeVar("T")
S = TypeVar("S")


@strawberry.type
class PageInfo:
    has_next_page: bool
    end_cursor: str | None

    @classmethod
    def of(cls, page: Page[Any]) -> PageInfo:
        return cls(has_next_page=page.has_next_page, end_cursor=page.end_cursor)


@strawberry.type
class Edge(Generic[T]):
    cursor: str
    node: T


@strawberry.type
class Connection(Generic[T]):
    edges: Sequence[Edge[T]]
    page_info: PageInfo

    @classmethod
    def of(cls, page: Page[S], node: Callable[[S], T]) -> Self:
        """The connection of a service's page (`resolvers.common.Page`), each node made by `node` from the
        service's item."""
        return cls(edges=[Edge(cursor=e.cursor, node=node(e.node)) for e in page.edges], page_info=PageInfo.of(page))
