"""The `forward` scenario's own pieces: the orders upstream (a dependency-free Node server answering fixed
JSON, `bench/upstream/orders.mjs`), the upstreams file the gateway reads, and GraphQL Hive Gateway
(`bench/hive/`, installed with `npm ci`) proxying the same upstream.

Every server of the scenario answers `{ orders(first: 10) { id total status customer } }` with the same ten
orders. The upstream does no GraphQL work: it answers any POST with `ANSWER`, or, when the request is an
introspection query (its body mentions `__schema`), with the introspection of the orders schema. That
introspection is computed here with graphql-core from `examples/orders/orders.graphql`, its directives (the
gateway's, which only the gateway knows) left out and its preset `organizationId` arguments made optional:
Hive Gateway proxies the upstream's schema as it is, and with `organizationId: ID!` it would reject the
query every other server answers. The gateway reads the example SDL itself, unchanged, fills
`organizationId` from the caller and forwards it; the upstream ignores it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from graphql import (
    InputValueDefinitionNode,
    NonNullTypeNode,
    Visitor,
    build_ast_schema,
    get_introspection_query,
    graphql_sync,
    parse,
    visit,
)
from graphql.language import DocumentNode

from bench.servers import HOST, REPO, BenchError, RunningServer, ServerSpec, running

ORDERS_SDL = REPO / "examples" / "orders" / "orders.graphql"
UPSTREAM_SCRIPT = Path(__file__).resolve().parent / "upstream" / "orders.mjs"
HIVE_DIR = Path(__file__).resolve().parent / "hive"
HIVE_BIN = HIVE_DIR / "node_modules" / ".bin" / "hive-gateway"
NPM_CI_TIMEOUT_SECONDS = 900
PRESET = "organizationId"

ORDERS: list[dict[str, Any]] = [
    {"id": f"ord-{n:04d}", "total": round(12.5 * n + 0.99, 2), "status": "PAID", "customer": f"Customer {n}"}
    for n in range(1, 11)
]
ANSWER: dict[str, object] = {"data": {"orders": ORDERS}}

# the example's upstreams file, pointed at the bench's upstream
ORDERS_UPSTREAMS = REPO / "examples" / "orders" / "upstreams.toml"
EXAMPLE_URL = "http://127.0.0.1:9100/graphql"


class _Proxied(Visitor):
    """The orders SDL as the upstream itself would serve it: no gateway directives, presets optional."""

    def enter_directive(self, *_: object) -> object:
        return self.REMOVE

    def leave_input_value_definition(self, node: InputValueDefinitionNode, *_: object) -> object:
        if node.name.value == PRESET and isinstance(node.type, NonNullTypeNode):
            return InputValueDefinitionNode(
                name=node.name, type=node.type.type, default_value=node.default_value, directives=()
            )
        return None


def upstream_sdl_document(sdl: str) -> DocumentNode:
    document = visit(parse(sdl), _Proxied())
    assert isinstance(document, DocumentNode)
    return document


def introspection(sdl: str) -> dict[str, object]:
    """The whole response body to an introspection query, every optional introspection field included (a
    client asks for a subset; extra fields are ignored)."""
    schema = build_ast_schema(upstream_sdl_document(sdl))
    query = get_introspection_query(
        descriptions=True,
        specified_by_url=True,
        directive_is_repeatable=True,
        schema_description=True,
        input_value_deprecation=True,
        one_of=True,
    )
    result = graphql_sync(schema, query)
    if result.errors:
        raise BenchError(f"introspecting the orders schema failed: {result.errors}")
    return {"data": result.data}


def node_binary() -> str | None:
    return shutil.which("node")


@contextlib.contextmanager
def orders_upstream(spec: ServerSpec, workdir: Path, *, node: str, cpu: int | None) -> Iterator[RunningServer]:
    """The Node upstream on a free port, pinned to `cpu` (wrk's), answering `ANSWER`; always stopped."""
    sdl = ORDERS_SDL.read_text(encoding="utf-8")
    answer_path = workdir / "orders-answer.json"
    introspection_path = workdir / "orders-introspection.json"
    answer_path.write_text(json.dumps(ANSWER))
    introspection_path.write_text(json.dumps(introspection(sdl)))
    with running(
        spec,
        env=dict(os.environ),
        workdir=workdir,
        cpu=cpu,
        command=lambda port: [node, str(UPSTREAM_SCRIPT), str(port), str(answer_path), str(introspection_path)],
    ) as server:
        yield server


def write_upstreams_file(workdir: Path, upstream_url: str) -> Path:
    """The upstreams file the gateway reads (`PORTCULLIS_UPSTREAMS_FILE`), with a copy of the example SDL."""
    shutil.copyfile(ORDERS_SDL, workdir / "orders.graphql")
    text = ORDERS_UPSTREAMS.read_text()
    if EXAMPLE_URL not in text:
        raise BenchError(f"{ORDERS_UPSTREAMS} no longer names {EXAMPLE_URL}")
    path = workdir / "upstreams.toml"
    path.write_text(text.replace(EXAMPLE_URL, upstream_url))
    return path


def hive_unavailable() -> str | None:
    """Why Hive Gateway cannot run here (None when it can): node or npm missing, or `npm ci` failing.
    Installs it into bench/hive/node_modules from the committed lock file when it is missing."""
    if node_binary() is None:
        return "node not found on PATH (Debian: apt-get install nodejs npm)"
    if HIVE_BIN.exists():
        return None
    npm = shutil.which("npm")
    if npm is None:
        return "npm not found on PATH, and bench/hive/node_modules is not installed (Debian: apt-get install npm)"
    try:
        completed = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=HIVE_DIR,
            capture_output=True,
            text=True,
            check=False,
            timeout=NPM_CI_TIMEOUT_SECONDS,
        )
    except subprocess.TimeoutExpired:
        return f"npm ci in {HIVE_DIR} did not finish within {NPM_CI_TIMEOUT_SECONDS}s"
    if completed.returncode != 0 or not HIVE_BIN.exists():
        tail = "\n".join((completed.stderr or completed.stdout).splitlines()[-10:])
        return f"npm ci in {HIVE_DIR} failed ({completed.returncode}):\n{tail}"
    return None


@contextlib.contextmanager
def hive_gateway(spec: ServerSpec, upstream_url: str, workdir: Path, *, cpu: int | None) -> Iterator[RunningServer]:
    """`hive-gateway proxy <upstream>`: one process (`--fork 1`), no auth, on a free port of 127.0.0.1,
    pinned to `cpu` (the gateway's). The schema is the upstream's, introspected at start and polled every 10 s
    (Hive Gateway's defaults)."""
    node = node_binary()
    if node is None:
        raise BenchError("hive-gateway needs node")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PORTCULLIS_")}
    env["NODE_ENV"] = "production"
    hive = str(HIVE_BIN.resolve())
    with running(
        spec,
        env=env,
        workdir=workdir,
        cpu=cpu,
        command=lambda port: [node, hive, "proxy", upstream_url, "--fork", "1", "--host", HOST, "--port", str(port)],
    ) as server:
        yield server
