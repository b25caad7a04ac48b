"""The upstreams file (`PORTCULLIS_UPSTREAMS_FILE`): the team's permissions, GraphQL upstreams and HTTP
upstreams (`gateway.http_routes`), read and checked once at start. Every problem is found and reported at
once; `serve` refuses to start on any of them, `portcullis upstreams check` prints them (docs/upstreams.md)."""

from __future__ import annotations

import re
import tomllib
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from graphql import build_client_schema, get_introspection_query, print_schema
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from pyreqwest.http import Url

from authz import TeamPermission, TeamPermissionError, install_team_permissions
from gateway.http_routes import HttpUpstreamConfig, check_http_upstreams, read_http_upstream
from resolvers.upstream_client import NEVER_FORWARDED, UpstreamConfig
from schema.upstreams import Composition, CompositionError, Forwarder, compose_upstreams
from schema.upstreams.sdl import PRESET_ATTRIBUTES

_NAME = re.compile(r"[a-z0-9-]+")
_ARGUMENT = re.compile(r"[_A-Za-z][_0-9A-Za-z]*")
_HEADER = re.compile(r"[A-Za-z0-9-]+")
_UPSTREAM_KEYS = frozenset(
    {"name", "url", "schema", "timeout_seconds", "max_connections", "forward_headers", "expose_errors", "presets"}
)
_PERMISSION_KEYS = frozenset({"name", "description", "roles"})


class UpstreamsFileError(Exception):
    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass
class UpstreamsFile:
    path: Path
    permissions: list[TeamPermission] = field(default_factory=list)
    upstreams: list[UpstreamConfig] = field(default_factory=list)
    http_upstreams: list[Any] = field(default_factory=list)  # the raw tables, read once permissions are installed


@dataclass(frozen=True)
class LoadedUpstreams:
    """What `serve` runs with: the GraphQL upstreams composed, the HTTP upstreams' routes checked."""

    composition: Composition
    http: tuple[HttpUpstreamConfig, ...] = ()


def _client_accepts(url: str) -> bool:
    """Whether the upstreams' HTTP client parses the address (a port out of range, a host with a space: no)."""
    try:
        Url(url)
    except ValueError:
        return False
    return True


def _introspect(url: str, timeout: float) -> str:
    body = orjson.dumps({"query": get_introspection_query(descriptions=True)})
    request = urllib.request.Request(  # noqa: S310 (an http(s) address, checked above)
        url, data=body, headers={"content-type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 (the operator's own URL)
        result = orjson.loads(response.read(10 * 1024 * 1024))
    if not isinstance(result, dict) or not isinstance(result.get("data"), dict):
        raise ValueError("the introspection answer is not a GraphQL result")
    return print_schema(build_client_schema(result["data"]))


def _upstream(entry: Any, index: int, base: Path, problems: list[str]) -> UpstreamConfig | None:
    where = f"upstream #{index + 1}"
    if not isinstance(entry, dict):
        problems.append(f"{where}: must be a table")
        return None
    name = entry.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        problems.append(f"{where}: name must match [a-z0-9-]+")
        return None
    where = f"upstream {name}"
    count = len(problems)
    for unknown in sorted(set(entry) - _UPSTREAM_KEYS):
        problems.append(f"{where}: unknown setting {unknown!r}")
    url = entry.get("url")
    if not isinstance(url, str) or not re.match(r"https?://[^/\s]+", url) or not _client_accepts(url):
        problems.append(f"{where}: url must be an http:// or https:// address")
    timeout = entry.get("timeout_seconds", 5)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout <= 300:
        problems.append(f"{where}: timeout_seconds must be a number of seconds between 0 and 300")
    max_connections = entry.get("max_connections", 64)
    if isinstance(max_connections, bool) or not isinstance(max_connections, int) or not 1 <= max_connections <= 10_000:
        problems.append(f"{where}: max_connections must be an integer between 1 and 10000")
    headers = entry.get("forward_headers", [])
    if not isinstance(headers, list) or not all(isinstance(h, str) and _HEADER.fullmatch(h) for h in headers):
        problems.append(f"{where}: forward_headers must be a list of header names")
        headers = []
    for header in headers:
        if header.lower() in NEVER_FORWARDED:
            problems.append(f"{where}: the header {header} is never forwarded (credentials and hop-by-hop headers)")
    expose = entry.get("expose_errors", False)
    if not isinstance(expose, bool):
        problems.append(f"{where}: expose_errors must be true or false")
    presets = entry.get("presets", {})
    if not isinstance(presets, dict):
        problems.append(f"{where}: presets must be a table of argument = caller attribute")
        presets = {}
    for argument, attribute in presets.items():
        if not _ARGUMENT.fullmatch(argument):
            problems.append(f"{where}: preset {argument!r} is not an argument name")
        if attribute not in PRESET_ATTRIBUTES:
            problems.append(
                f"{where}: preset {argument} = {attribute!r}: the attribute must be one of "
                + ", ".join(sorted(PRESET_ATTRIBUTES))
            )
    sdl: str | None = None
    schema = entry.get("schema")
    if schema is not None:
        if not isinstance(schema, str):
            problems.append(f"{where}: schema must be the path of an SDL file")
        else:
            path = (base / schema).resolve()
            try:
                sdl = path.read_text(encoding="utf-8")
            except OSError as exc:
                problems.append(f"{where}: cannot read the schema file {path}: {exc.strerror or exc}")
            except UnicodeDecodeError:
                problems.append(f"{where}: the schema file {path} is not UTF-8 text")
    elif isinstance(url, str) and len(problems) == count:
        try:
            sdl = _introspect(url, float(timeout))
        except (OSError, urllib.error.URLError, ValueError, orjson.JSONDecodeError) as exc:
            problems.append(f"{where}: unreachable: introspecting {url} failed ({exc})")
    if len(problems) > count or sdl is None:
        return None
    return UpstreamConfig(
        name=name,
        url=str(url),
        sdl=sdl,
        timeout_seconds=float(timeout),
        max_connections=int(max_connections),
        forward_headers=tuple(h.lower() for h in headers),
        expose_errors=bool(expose),
        presets=dict(presets),
    )


def _permission(entry: Any, index: int, problems: list[str]) -> TeamPermission | None:
    where = f"permission #{index + 1}"
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
        problems.append(f"{where}: must be a table with a name")
        return None
    for unknown in sorted(set(entry) - _PERMISSION_KEYS):
        problems.append(f"permission {entry['name']}: unknown setting {unknown!r}")
    roles = entry.get("roles", [])
    description = entry.get("description", "")
    if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
        problems.append(f"permission {entry['name']}: roles must be a list of built-in role names")
        roles = []
    if not isinstance(description, str):
        problems.append(f"permission {entry['name']}: description must be text")
        description = ""
    return TeamPermission(name=entry["name"], description=description, roles=tuple(roles))


def read_upstreams_file(path: Path, problems: list[str]) -> UpstreamsFile:
    """The file's permissions and upstreams, schemas loaded; the problems of its entries are added to `problems`
    (an entry with a problem is left out). `UpstreamsFileError` when the file cannot be read at all."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UpstreamsFileError([f"{path}: cannot read: {exc.strerror or exc}"]) from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UpstreamsFileError([f"{path}: not a valid TOML file: {exc}"]) from exc
    for unknown in sorted(set(raw) - {"permission", "upstream", "http_upstream"}):
        problems.append(f"{path}: unknown section {unknown!r}")
    permissions = raw.get("permission", [])
    upstreams = raw.get("upstream", [])
    http_upstreams = raw.get("http_upstream", [])
    if not all(isinstance(v, list) for v in (permissions, upstreams, http_upstreams)):
        raise UpstreamsFileError(
            [f"{path}: [[permission]], [[upstream]] and [[http_upstream]] must be arrays of tables"]
        )
    result = UpstreamsFile(path, http_upstreams=http_upstreams)
    for index, entry in enumerate(permissions):
        found = _permission(entry, index, problems)
        if found is not None:
            result.permissions.append(found)
    for index, entry in enumerate(upstreams):
        config = _upstream(entry, index, path.parent, problems)
        if config is not None:
            result.upstreams.append(config)
    return result


def load_upstreams(path: Path) -> LoadedUpstreams:
    """The file read, its permissions installed in the vocabulary, its GraphQL upstreams composed and its HTTP
    routes checked: what `serve` runs with. Raises `UpstreamsFileError` with every problem of the file."""
    problems: list[str] = []
    found = read_upstreams_file(path, problems)
    try:
        install_team_permissions(found.permissions)
    except TeamPermissionError as exc:
        problems.extend(exc.problems)
    http: list[HttpUpstreamConfig] = []
    for index, entry in enumerate(found.http_upstreams):
        config = read_http_upstream(entry, index, problems)
        if config is not None:
            http.append(config)
    problems.extend(check_http_upstreams(http, (u.name for u in found.upstreams)))
    try:
        composition = compose_upstreams(found.upstreams)
    except CompositionError as exc:
        problems.extend(exc.problems)
    if problems:
        raise UpstreamsFileError(problems)
    return LoadedUpstreams(composition, tuple(http))


def describe_status(status: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    return {name: dict(values) for name, values in status.items()}


class UpstreamCollector(Collector):
    """The upstreams' state at `/metrics`, GraphQL and HTTP alike, read from the forwarder and the HTTP routes
    (`gateway.http_proxy.HttpUpstreams`) when it is scraped."""

    def __init__(self, forwarder: Forwarder | None, http: Any = None) -> None:
        self.forwarder = forwarder
        self.http = http

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "portcullis_upstream_requests", "Requests sent to each upstream", labels=["upstream"]
        )
        failures = CounterMetricFamily(
            "portcullis_upstream_failures",
            "Upstream requests that failed: no answer in time, refused, or a 5xx",
            labels=["upstream"],
        )
        opened = CounterMetricFamily(
            "portcullis_upstream_circuit_opened", "Times each upstream's circuit opened", labels=["upstream"]
        )
        circuit = GaugeMetricFamily(
            "portcullis_upstream_circuit_open",
            "1 while an upstream's circuit is open (its fields fail fast with UPSTREAM_UNAVAILABLE)",
            labels=["upstream"],
        )
        in_flight = GaugeMetricFamily(
            "portcullis_upstream_in_flight", "Calls to each upstream waiting for their answer", labels=["upstream"]
        )
        statuses: dict[str, Mapping[str, Any]] = {}
        if self.forwarder is not None:
            for name, client in self.forwarder.clients.items():
                in_flight.add_metric([name], client.in_flight)
            statuses.update(self.forwarder.status())
        if self.http is not None:
            for name, count in self.http.in_flight.items():
                in_flight.add_metric([name], count)
            statuses.update(self.http.status())
        for name, status in statuses.items():
            requests.add_metric([name], status["requests"])
            failures.add_metric([name], status["failures"])
            opened.add_metric([name], status["circuitOpened"])
            circuit.add_metric([name], 0 if status["circuit"] == "closed" else 1)
        yield from (requests, failures, opened, circuit, in_flight)
