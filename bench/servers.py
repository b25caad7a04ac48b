"""The servers under test, the scenarios that group them, and the life of one uvicorn process."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from bench.apps.common import (
    AUDITED_MUTATION,
    AUDITED_MUTATION_ALTERNATE,
    BILLING_PATH,
    DATABASE_URL_VARIABLE,
    FORWARD_HTTP_PATH,
    FORWARD_QUERY,
    GUARDED_QUERY,
    QUERY,
)

REPO = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
START_TIMEOUT_SECONDS = 30.0
STOP_TIMEOUT_SECONDS = 10.0


@dataclass(frozen=True)
class ServerSpec:
    name: str
    factory: str
    description: str
    # how each request authenticates: None, "bearer" (an access token) or "apikey" (X-API-Key)
    credential: str | None = None
    # served in shared mode: the harness starts a Redis server and hands its URL in
    redis: bool = False
    # the checkout whose code the server runs (`--before`: another one, side by side with this one's)
    app_dir: Path = REPO
    # how it runs: "uvicorn" (`factory` under uvicorn), "upstream" (one of the bench's Node upstreams itself,
    # loaded directly) or "hive" (GraphQL Hive Gateway proxying the orders upstream); the last two need node
    kind: str = "uvicorn"
    # the bench's Node upstream it stands in front of ("orders", "billing"), or is (kind "upstream"); a uvicorn
    # server reads that upstream's upstreams file (PORTCULLIS_UPSTREAMS_FILE), which points at it
    upstream: str | None = None


SERVERS = (
    ServerSpec("gateway", "gateway.app:create_app", "the Portcullis gateway", credential="bearer"),
    ServerSpec(
        "gateway-unenforced",
        "bench.apps.gateway_unenforced:create_app",
        "the same gateway with field authorization switched off",
        credential="bearer",
    ),
    ServerSpec(
        "gateway-apikey",
        "gateway.app:create_app",
        "the same gateway, every request authenticated by an API key",
        credential="apikey",
    ),
    ServerSpec(
        "gateway-redis",
        "gateway.app:create_app",
        "the gateway in shared mode (Redis): admission takes one EVALSHA per request",
        credential="bearer",
        redis=True,
    ),
    ServerSpec(
        "gateway-redis-noadmission",
        "bench.apps.gateway_no_admission:create_app",
        "the same gateway on the same Redis with admission left out",
        credential="bearer",
        redis=True,
    ),
    ServerSpec(
        "gateway-noaudit",
        "bench.apps.gateway_no_audit:create_app",
        "the same gateway with the operations' audit entries left out",
        credential="bearer",
    ),
    ServerSpec(
        "gateway-forward",
        "gateway.app:create_app",
        "the gateway forwarding to the orders upstream (embedded mode: SQLite, in-process limits)",
        credential="bearer",
        upstream="orders",
    ),
    ServerSpec(
        "gateway-forward-redis",
        "gateway.app:create_app",
        "the same in shared mode (Redis): admission takes one EVALSHA per request",
        credential="bearer",
        redis=True,
        upstream="orders",
    ),
    ServerSpec(
        "python-forward",
        "bench.apps.python_forward:create_app",
        "Starlette + aiohttp passing the query through to the orders upstream: cached parse and validation, no edge",
        upstream="orders",
    ),
    ServerSpec(
        "upstream-direct",
        "bench/upstream/orders.mjs",
        "the orders upstream itself (Node http, fixed JSON), loaded directly, on wrk's CPU",
        kind="upstream",
        upstream="orders",
    ),
    ServerSpec(
        "hive-gateway",
        "@graphql-hive/gateway proxy",
        "GraphQL Hive Gateway (bench/hive/) proxying the orders upstream, no auth",
        kind="hive",
        upstream="orders",
    ),
    ServerSpec(
        "gateway-forward-http",
        "gateway.app:create_app",
        "the gateway forwarding a GET to the billing upstream's HTTP route (embedded mode)",
        credential="bearer",
        upstream="billing",
    ),
    ServerSpec(
        "gateway-forward-http-redis",
        "gateway.app:create_app",
        "the same in shared mode (Redis): admission takes one EVALSHA per request",
        credential="bearer",
        redis=True,
        upstream="billing",
    ),
    ServerSpec(
        "billing-direct",
        "bench/upstream/billing.mjs",
        "the billing upstream itself (Node http, fixed JSON), loaded directly, on wrk's CPU",
        kind="upstream",
        upstream="billing",
    ),
    ServerSpec(
        "gateway-blocklist",
        "bench.apps.gateway_blocklist:create_app",
        "the same gateway holding 1,000 platform-wide blocked ranges and 1,000 blocks of its tenant, none matching",
        credential="bearer",
    ),
    ServerSpec("strawberry-default", "bench.apps.strawberry_app:default_app", "strawberry.asgi.GraphQL, no extensions"),
    ServerSpec(
        "strawberry-cached",
        "bench.apps.strawberry_app:cached_app",
        "strawberry.asgi.GraphQL with ParserCache and ValidationCache",
    ),
    ServerSpec(
        "graphql-core",
        "bench.apps.graphql_core_app:create_app",
        "Starlette + graphql.execute with a validated-document cache",
    ),
)
SERVER_NAMES = tuple(s.name for s in SERVERS)
BEFORE = "@before"


def before(spec: ServerSpec, checkout: Path) -> ServerSpec:
    """The same server run from another checkout (the build before a change), named `<name>@before`."""
    return replace(spec, name=spec.name + BEFORE, description=f"{spec.description}, from {checkout}", app_dir=checkout)


@dataclass(frozen=True)
class Scenario:
    name: str
    query: str
    servers: tuple[str, ...]
    description: str
    # when set, the load alternates `query` with this one, request by request
    alternate: str | None = None
    # the servers sent `GET <path>` (with their credential) instead of the GraphQL POST of `query`: (name, path)
    gets: tuple[tuple[str, str], ...] = ()

    def get_path(self, server: str) -> str | None:
        """The path `server` is sent a GET of (a `@before` twin: as its server), or None: it is sent `query`."""
        return dict(self.gets).get(server.removesuffix(BEFORE))


SCENARIOS = (
    Scenario(
        "basic",
        QUERY,
        ("gateway", "strawberry-default", "strawberry-cached", "graphql-core"),
        "the gateway against three baselines",
    ),
    Scenario(
        "guarded",
        GUARDED_QUERY,
        ("gateway", "gateway-unenforced"),
        "a field that requires billing:read, with and without field authorization",
    ),
    Scenario(
        "apikey",
        QUERY,
        ("gateway", "gateway-apikey"),
        "the same query authenticated by a Bearer token and by an API key",
    ),
    Scenario(
        "admission",
        QUERY,
        ("gateway-redis", "gateway-redis-noadmission"),
        "the full admission path in shared mode (Redis), with and without admission",
    ),
    Scenario(
        "blocks",
        QUERY,
        ("gateway", "gateway-blocklist"),
        "the basic query with an empty block list and with 2,000 blocks that do not match the caller",
    ),
    Scenario(
        "audited",
        AUDITED_MUTATION,
        ("gateway", "gateway-noaudit"),
        "a mutation that renames the organization (back and forth, so every request updates the row) and "
        "commits its audit entry (hash chain, head row locked) in the same transaction, against the same "
        "build writing no audit entry",
        alternate=AUDITED_MUTATION_ALTERNATE,
    ),
    Scenario(
        "forward",
        FORWARD_QUERY,
        ("gateway-forward", "gateway-forward-redis", "python-forward", "upstream-direct", "hive-gateway"),
        "the gateway forwarding to a GraphQL upstream that answers fixed JSON (a Node server pinned with wrk), "
        "against GraphQL Hive Gateway proxying the same upstream, a bare Python pass-through and the upstream "
        "loaded directly",
    ),
    Scenario(
        "forward-http",
        FORWARD_QUERY,
        ("gateway-forward-http", "gateway-forward-http-redis", "billing-direct", "gateway-forward", "hive-gateway"),
        "the gateway forwarding a GET to an HTTP upstream's route (a Node server answering one fixed invoice, "
        "pinned with wrk), against the upstream loaded directly, and, sent the forward scenario's query, the "
        "gateway forwarding it to the orders upstream and GraphQL Hive Gateway proxying that upstream",
        gets=(
            ("gateway-forward-http", FORWARD_HTTP_PATH),
            ("gateway-forward-http-redis", FORWARD_HTTP_PATH),
            ("billing-direct", BILLING_PATH),
        ),
    ),
)
SCENARIO_NAMES = tuple(s.name for s in SCENARIOS)


class BenchError(RuntimeError):
    """Something broke: a server did not start, answered wrongly, or the load generator failed."""


@dataclass
class RunningServer:
    spec: ServerSpec
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def origin(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.origin}/graphql"

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def pin_to(cpu: int | None) -> Callable[[], None] | None:
    """A `preexec_fn` that pins the child to one CPU, or None when pinning is off or unsupported."""
    if cpu is None or not hasattr(os, "sched_setaffinity"):
        return None
    return lambda: os.sched_setaffinity(0, {cpu})


def uvicorn_command(spec: ServerSpec, port: int) -> list[str]:
    """Every Python server as `portcullis serve` runs the gateway (gateway/cli/server.py): uvloop and httptools,
    no access log of uvicorn's, no `Server` header, and no proxy headers (the gateway reads `X-Forwarded-For`
    itself, from its trusted proxies only)."""
    return [
        sys.executable,
        "-m",
        "uvicorn",
        spec.factory,
        "--factory",
        "--app-dir",
        str(spec.app_dir),
        "--host",
        HOST,
        "--port",
        str(port),
        "--workers",
        "1",
        "--loop",
        "uvloop",
        "--http",
        "httptools",
        "--no-access-log",
        "--no-proxy-headers",
        "--no-server-header",
        "--log-level",
        "warning",
    ]


def server_environment(database_url: str, signing_key: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PORTCULLIS_")}
    env.update(
        {
            # not "test": the test environment skips the gc.freeze() the gateway does at start-up in service
            "PORTCULLIS_ENV": "dev",
            "PORTCULLIS_DATABASE_URL": database_url,
            "PORTCULLIS_SIGNING_KEY": signing_key,
            DATABASE_URL_VARIABLE: database_url,
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


Credential = tuple[str, str]  # one request header: name, value


def post_json(
    url: str, body: dict[str, object], credential: Credential | None = None, timeout: float = 10.0
) -> tuple[int, dict[str, object]]:
    headers = {"content-type": "application/json"}
    if credential is not None:
        headers[credential[0]] = credential[1]
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def get_json(url: str, credential: Credential | None = None, timeout: float = 10.0) -> tuple[int, object]:
    headers = {credential[0]: credential[1]} if credential is not None else {}
    request = urllib.request.Request(url, headers=headers, method="GET")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def wait_until_listening(server: RunningServer) -> None:
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise BenchError(f"{server.spec.name} exited with {server.process.returncode}:\n{server.log_tail()}")
        with contextlib.suppress(OSError), socket.create_connection((HOST, server.port), timeout=0.5):
            return
        time.sleep(0.05)
    raise BenchError(f"{server.spec.name} did not listen within {START_TIMEOUT_SECONDS:.0f}s:\n{server.log_tail()}")


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=STOP_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextlib.contextmanager
def running(
    spec: ServerSpec,
    *,
    env: dict[str, str],
    workdir: Path,
    cpu: int | None,
    command: Callable[[int], list[str]] | None = None,
) -> Iterator[RunningServer]:
    """Start one server (`command(port)`; by default the spec's app under uvicorn), yield it once it listens,
    and always stop it."""
    port = free_port()
    log_path = workdir / f"{spec.name}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command(port) if command is not None else uvicorn_command(spec, port),
            cwd=workdir,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=pin_to(cpu),
        )
    server = RunningServer(spec, port, process, log_path)
    try:
        wait_until_listening(server)
        yield server
    finally:
        stop(process)


LOGIN = (
    "mutation Login($email: String!, $password: String!, $organization: String) "
    "{ login(email: $email, password: $password, organization: $organization) { accessToken } }"
)


def login(server: RunningServer, email: str, password: str, organization: str) -> str:
    """An access token for the gateway, from its own `login` mutation."""
    variables = {"email": email, "password": password, "organization": organization}
    status, body = post_json(server.url, {"query": LOGIN, "variables": variables}, timeout=30.0)
    data = body.get("data")
    if status != 200 or not isinstance(data, dict) or not data.get("login"):
        raise BenchError(f"login failed with {status}: {body}\n{server.log_tail()}")
    return str(data["login"]["accessToken"])


CREATE_KEY = 'mutation { createApiKey(input: {name: "bench", scopes: ["organization:read"]}) { secret } }'


def create_api_key(server: RunningServer, token: str) -> str:
    """An API key of the demo tenant, created through the gateway's own `createApiKey`."""
    status, body = post_json(server.url, {"query": CREATE_KEY}, ("authorization", f"Bearer {token}"), timeout=30.0)
    data = body.get("data")
    if status != 200 or not isinstance(data, dict) or not data.get("createApiKey"):
        raise BenchError(f"createApiKey failed with {status}: {body}\n{server.log_tail()}")
    return str(data["createApiKey"]["secret"])


def check_answer(server: RunningServer, credential: Credential | None, query: str, expected: dict[str, object]) -> None:
    """The expected `data`, no `errors`, status 200 (the gateway also reports the cost in `extensions`)."""
    status, body = post_json(server.url, {"query": query}, credential)
    if status != 200 or body.get("data") != expected.get("data") or "errors" in body:
        raise BenchError(f"{server.spec.name} answered {status} {body}, expected 200 {expected}\n{server.log_tail()}")


def check_get(server: RunningServer, credential: Credential | None, path: str, expected: object) -> None:
    """Status 200 and exactly the expected JSON for `GET <path>`."""
    status, body = get_json(server.origin + path, credential)
    if status != 200 or body != expected:
        raise BenchError(
            f"{server.spec.name} answered GET {path} with {status} {body}, expected 200 {expected}\n{server.log_tail()}"
        )
