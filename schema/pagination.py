"""Cursor pagination: `PageInfo` and the generic connection every paginated list answers with.

A list subclasses `Connection[Node]` under its own name (`MembershipConnection(Connection[Membership])`); its
edges are `Edge[Node]`, named `<Node>Edge` in the SDL, unless the list subclasses `Edge` too with its own name
(`AuditLogEdge` of `AuditLogEntry`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Generic, Protocol, Self, TypeVar

import strawberry

T = TypeVar("T")
EdgeT = TypeVar("EdgeT", bound="ServiceEdge")
EdgeT_co = TypeVar("EdgeT_co", covariant=True)


class ServiceEdge(Protocol):
    @property
    def cursor(self) -> str: ...


class ServicePage(Protocol[EdgeT_co]):
    """What a service's page (`resolvers.members.MemberPage`, ...) has in common."""

    @property
    def edges(self) -> Sequence[EdgeT_co]: ...

    @property
    def has_next_page(self) -> bool: ...

    @property
    def end_cursor(self) -> str | None: ...


@strawberry.type
class PageInfo:
    has_next_page: bool
    end_cursor: str | None

    @classmethod
    def of(cls, page: ServicePage[ServiceEdge]) -> PageInfo:
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
    def of(cls, page: ServicePage[EdgeT], node: Callable[[EdgeT], T]) -> Self:
        """The connection of a service's page, each edge's node made by `node` from the service's edge."""
        return cls(edges=[Edge(cursor=e.cursor, node=node(e)) for e in page.edges], page_info=PageInfo.of(page))
