"""The team's GraphQL upstreams, mounted into the gateway's schema (docs/upstreams.md)."""

from __future__ import annotations

from collections.abc import Sequence

import strawberry
from graphql import build_schema as build_graphql_schema

from resolvers.upstream_client import UpstreamConfig
from schema.upstreams.composition import Composition, CompositionError, MountedUpstream, RootField, compose
from schema.upstreams.forwarding import Forwarder, Forwarding, ForwardState

__all__ = [
    "Composition",
    "CompositionError",
    "ForwardState",
    "Forwarder",
    "Forwarding",
    "MountedUpstream",
    "RootField",
    "compose_upstreams",
]


def compose_upstreams(configs: Sequence[UpstreamConfig]) -> Composition:
    """Every upstream of `configs` composed beside the gateway's own schema; `CompositionError` lists every
    problem found."""
    from schema import Mutation, Query

    local = build_graphql_schema(strawberry.Schema(query=Query, mutation=Mutation).as_str())
    return compose(list(configs), local)
