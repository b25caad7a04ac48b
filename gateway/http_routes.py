"""HTTP upstreams (`[[http_upstream]]` in the upstreams file): their routes, read and checked at start, and the
matching of a request's path against them.

A route is matched on the path exactly as the client sent it (`raw_path`), never on a normalized or decoded
form: each segment must be made of the characters a URL path allows, its percent-escapes decode to UTF-8, and
no segment may be empty or decode to `.` or `..`, nor hold an escaped `/`, `\\`, `%` or NUL. Anything else is no
route at all (404), so `/api/billing/../admin`, `%2e%2e`, `%252e`, `//` and backslashes never reach an upstream.
A parameter (`{id}`) is always one whole segment; no template matches across segments. The segments forwarded
are the client's own, checked, under the upstream's base path (docs/upstreams.md, "HTTP routes").
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote_to_bytes, urlsplit

from authz import Requirement, is_permission
from authz.plans import PLANS

METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
SAFE_METHODS = frozenset({"GET", "HEAD"})
DEFAULT_MAX_BODY_BYTES = 10 * 1024 * 1024
MAX_BODY_BYTES_CEILING = 64 * 1024 * 1024 * 1024
# paths the gateway answers itself: no prefix may take them or lie under them
RESERVED_PREFIXES = ("/graphql", "/healthz", "/readyz", "/metrics", "/.well-known", "/auth", "/reports", "/exports")

_NAME = re.compile(r"[a-z0-9-]+")
_PREFIX = re.compile(r"(?:/[A-Za-z0-9._~-]+)+")
_PARAMETER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_LITERAL = re.compile(r"[A-Za-z0-9._~!$&'()*+,;=:@-]+")
# one segment as a client may send it: allowed characters and well-formed percent-escapes only
_RAW_SEGMENT = re.compile(rb"(?:[A-Za-z0-9._~!$&'()*+,;=:@-]|%[0-9A-Fa-f]{2})+")
# escapes that smuggle a separator, a second round of decoding or a NUL into one segment
_FORBIDDEN_ESCAPE = re.compile(rb"%(?:2[fF]|5[cC]|25|00)")
_UPSTREAM_KEYS = frozenset({"name", "url", "prefix", "timeout_seconds", "max_connections", "max_body_bytes", "route"})
_ROUTE_KEYS = frozenset({"methods", "path", "rule", "cost", "audit", "max_body_bytes", "allow_set_cookie"})
_RULE_KEYS = frozenset({"public", "authenticated", "requires_scopes", "requires_plan"})


@dataclass(frozen=True, slots=True)
class RouteRule:
    """Who may call a route: anyone (`public`), or a requirement decided by `authz.decide` like a field's."""

    public: bool = False
    requirement: Requirement = field(default_factory=Requirement)

    def describe(self) -> dict[str, Any]:
        if self.public:
            return {"public": True}
        out: dict[str, Any] = {"authenticated": True}
        if self.requirement.any_of:
            out["requiresScopes"] = [list(group) for group in self.requirement.any_of]
        if self.requirement.plan is not None:
            out["requiresPlan"] = self.requirement.plan
        return out


@dataclass(frozen=True, slots=True)
class HttpRoute:
    upstream: str
    methods: tuple[str, ...]
    path: str
    segments: tuple[str | None, ...]  # a literal, or None for a parameter
    parameters: tuple[str, ...]
    rule: RouteRule
    cost: int
    audit: frozenset[str]  # the methods whose requests are audited
    max_body_bytes: int
    allow_set_cookie: bool

    @property
    def specificity(self) -> tuple[int, ...]:
        """Literal segments outrank parameters, from the left: `/invoices/summary` before `/invoices/{id}`."""
        return tuple(0 if s is None else 1 for s in self.segments)


@dataclass(frozen=True, slots=True)
class HttpUpstreamConfig:
    name: str
    url: str
    prefix: str
    timeout_seconds: float
    max_connections: int
    routes: tuple[HttpRoute, ...]

    @property
    def permissions(self) -> frozenset[str]:
        """The permissions the routes name: all a context token to this upstream may carry."""
        return frozenset(p for r in self.routes for group in r.rule.requirement.any_of for p in group)


@dataclass(frozen=True, slots=True)
class Matched:
    upstream: HttpUpstreamConfig
    route: HttpRoute
    parameters: Mapping[str, str]
    forward_path: str  # the upstream's base path and the client's own checked segments


@dataclass(frozen=True, slots=True)
class NotAllowed:
    """The path names a route, the method none of its routes: 405 with `Allow`."""

    allow: tuple[str, ...]


def _rule(raw: Any, where: str, problems: list[str]) -> RouteRule | None:
    if not isinstance(raw, dict) or not raw:
        problems.append(
            f"{where}: rule must be a table: {{ public = true }}, {{ authenticated = true }} or "
            "{ requires_scopes = [[...]] } with an optional requires_plan"
        )
        return None
    count = len(problems)
    for unknown in sorted(set(raw) - _RULE_KEYS):
        problems.append(f"{where}: unknown rule setting {unknown!r}")
    public, authenticated = raw.get("public"), raw.get("authenticated")
    scopes, plan = raw.get("requires_scopes"), raw.get("requires_plan")
    for key, value in (("public", public), ("authenticated", authenticated)):
        if value is not None and value is not True:
            problems.append(f"{where}: rule {key} must be true when given")
    if public is True and (authenticated is not None or scopes is not None or plan is not None):
        problems.append(f"{where}: a public rule cannot also require anything")
    groups: tuple[tuple[str, ...], ...] = ()
    if scopes is not None:
        if (
            not isinstance(scopes, list)
            or not scopes
            or not all(isinstance(g, list) and g and all(isinstance(p, str) for p in g) for g in scopes)
        ):
            problems.append(f"{where}: requires_scopes must be a non-empty list of non-empty lists of permissions")
        else:
            groups = tuple(tuple(g) for g in scopes)
            for name in sorted({p for g in groups for p in g}):
                if not is_permission(name):
                    problems.append(f"{where}: unknown permission {name!r} in requires_scopes")
    if plan is not None and plan not in PLANS:
        problems.append(f"{where}: requires_plan must be one of {', '.join(PLANS)}")
    if public is None and authenticated is None and scopes is None and plan is None and len(problems) == count:
        problems.append(f"{where}: the rule requires nothing; say {{ public = true }} for a public route")
    if len(problems) > count:
        return None
    if public is True:
        return RouteRule(public=True)
    return RouteRule(requirement=Requirement(authenticated=True, any_of=groups, plan=plan))


def _template(path: Any, where: str, problems: list[str]) -> tuple[tuple[str | None, ...], tuple[str, ...]] | None:
    if not isinstance(path, str) or not path.startswith("/"):
        problems.append(f"{where}: path must be a template starting with /")
        return None
    if path == "/":
        return (), ()
    segments: list[str | None] = []
    parameters: list[str] = []
    for segment in path[1:].split("/"):
        parameter = _PARAMETER.fullmatch(segment)
        if parameter is not None:
            if parameter.group(1) in parameters:
                problems.append(f"{where}: the parameter {{{parameter.group(1)}}} appears twice")
                return None
            parameters.append(parameter.group(1))
            segments.append(None)
        elif "{" in segment or "}" in segment or "*" in segment:
            problems.append(
                f"{where}: {segment!r}: a parameter is one whole segment, {{name}}; nothing matches across segments"
            )
            return None
        elif not segment or segment in (".", "..") or not _LITERAL.fullmatch(segment):
            problems.append(f"{where}: {segment!r} is not a path segment (no empty, dot or escaped segments)")
            return None
        else:
            segments.append(segment)
    return tuple(segments), tuple(parameters)


def _number(raw: Any, default: float, low: float, high: float) -> float | None:
    value = raw if raw is not None else default
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        return None
    return float(value)


def _route(raw: Any, upstream: str, index: int, max_body: int, problems: list[str]) -> HttpRoute | None:
    where = f"http_upstream {upstream} route #{index + 1}"
    if not isinstance(raw, dict):
        problems.append(f"{where}: must be a table")
        return None
    count = len(problems)
    for unknown in sorted(set(raw) - _ROUTE_KEYS):
        problems.append(f"{where}: unknown setting {unknown!r}")
    methods = raw.get("methods")
    if not isinstance(methods, list) or not methods or not all(isinstance(m, str) and m in METHODS for m in methods):
        problems.append(f"{where}: methods must be a non-empty list of {', '.join(METHODS)}")
        methods = []
    elif len(set(methods)) != len(methods):
        problems.append(f"{where}: a method is listed twice")
    template = _template(raw.get("path"), where, problems)
    rule = _rule(raw.get("rule"), where, problems)
    cost = raw.get("cost", 1)
    if isinstance(cost, bool) or not isinstance(cost, int) or not 0 <= cost <= 1_000_000:
        problems.append(f"{where}: cost must be an integer between 0 and 1000000")
    audit = raw.get("audit")
    if audit is not None and not isinstance(audit, bool):
        problems.append(f"{where}: audit must be true or false")
    allow_set_cookie = raw.get("allow_set_cookie", False)
    if not isinstance(allow_set_cookie, bool):
        problems.append(f"{where}: allow_set_cookie must be true or false")
    body = _number(raw.get("max_body_bytes"), max_body, 0, MAX_BODY_BYTES_CEILING)
    if body is None or body != int(body):
        problems.append(f"{where}: max_body_bytes must be an integer between 0 and {MAX_BODY_BYTES_CEILING}")
    if len(problems) > count or template is None or rule is None or body is None:
        return None
    audited = frozenset(methods) if audit else frozenset(methods) - SAFE_METHODS if audit is None else frozenset()
    return HttpRoute(
        upstream=upstream,
        methods=tuple(methods),
        path=str(raw["path"]),
        segments=template[0],
        parameters=template[1],
        rule=rule,
        cost=int(cost),
        audit=audited,
        max_body_bytes=int(body),
        allow_set_cookie=bool(allow_set_cookie),
    )


def _overlap(a: HttpRoute, b: HttpRoute) -> bool:
    """Both templates match the same paths and share a method: which one answers would be a guess."""
    return a.segments == b.segments and bool(set(a.methods) & set(b.methods))


def read_http_upstream(raw: Any, index: int, problems: list[str]) -> HttpUpstreamConfig | None:
    """One `[[http_upstream]]` table, its routes checked; its problems are added to `problems`. Permission
    names are checked against the vocabulary as it stands: install the team's permissions first."""
    where = f"http_upstream #{index + 1}"
    if not isinstance(raw, dict):
        problems.append(f"{where}: must be a table")
        return None
    name = raw.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        problems.append(f"{where}: name must match [a-z0-9-]+")
        return None
    where = f"http_upstream {name}"
    count = len(problems)
    for unknown in sorted(set(raw) - _UPSTREAM_KEYS):
        problems.append(f"{where}: unknown setting {unknown!r}")
    url = raw.get("url")
    parts = urlsplit(url) if isinstance(url, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        problems.append(f"{where}: url must be an http:// or https:// address without a query")
    prefix = raw.get("prefix")
    if not isinstance(prefix, str) or not _PREFIX.fullmatch(prefix) or any(s in (".", "..") for s in prefix.split("/")):
        problems.append(f"{where}: prefix must be a path such as /api/{name} (no trailing slash, no dot segments)")
    elif any(prefix == p or prefix.startswith(p + "/") or p.startswith(prefix + "/") for p in RESERVED_PREFIXES):
        reserved = ", ".join(RESERVED_PREFIXES)
        problems.append(f"{where}: prefix {prefix} collides with the gateway's own paths ({reserved})")
    timeout = _number(raw.get("timeout_seconds"), 10, 0.001, 300)
    if timeout is None:
        problems.append(f"{where}: timeout_seconds must be a number of seconds between 0 and 300")
    connections = raw.get("max_connections", 64)
    if isinstance(connections, bool) or not isinstance(connections, int) or not 1 <= connections <= 10_000:
        problems.append(f"{where}: max_connections must be an integer between 1 and 10000")
    max_body = _number(raw.get("max_body_bytes"), DEFAULT_MAX_BODY_BYTES, 0, MAX_BODY_BYTES_CEILING)
    if max_body is None or max_body != int(max_body):
        problems.append(f"{where}: max_body_bytes must be an integer between 0 and {MAX_BODY_BYTES_CEILING}")
        max_body = DEFAULT_MAX_BODY_BYTES
    entries = raw.get("route", [])
    if not isinstance(entries, list) or not entries:
        problems.append(f"{where}: needs at least one [[http_upstream.route]]; nothing else is forwarded")
        entries = []
    routes: list[HttpRoute] = []
    for i, entry in enumerate(entries):
        route = _route(entry, name, i, int(max_body), problems)
        if route is None:
            continue
        for other in routes:
            if _overlap(route, other):
                problems.append(f"{where}: routes {other.path} and {route.path} match the same requests")
        routes.append(route)
    if len(problems) > count or parts is None or timeout is None:
        return None
    return HttpUpstreamConfig(
        name=name,
        url=str(url).rstrip("/"),
        prefix=str(prefix),
        timeout_seconds=timeout,
        max_connections=int(connections),
        routes=tuple(routes),
    )


def check_http_upstreams(upstreams: Sequence[HttpUpstreamConfig], graphql_names: Iterable[str]) -> list[str]:
    """Problems between entries: a name used twice (GraphQL upstreams included: a name is a token's `aud`),
    prefixes that are equal or nested."""
    problems: list[str] = []
    seen = set(graphql_names)
    for upstream in upstreams:
        if upstream.name in seen:
            problems.append(f"http_upstream {upstream.name}: the name is already taken by another upstream")
        seen.add(upstream.name)
    for i, a in enumerate(upstreams):
        for b in upstreams[i + 1 :]:
            if a.prefix == b.prefix or a.prefix.startswith(b.prefix + "/") or b.prefix.startswith(a.prefix + "/"):
                problems.append(f"http_upstream {b.name}: prefix {b.prefix} overlaps {a.name}'s {a.prefix}")
    return problems


class RouteTable:
    """Every HTTP upstream's routes by prefix: what a request path matches, if anything."""

    def __init__(self, upstreams: Sequence[HttpUpstreamConfig]) -> None:
        self.upstreams = tuple(upstreams)
        self._by_prefix = {u.prefix.encode(): u for u in upstreams}
        self._base = {u.name: urlsplit(u.url).path.rstrip("/") for u in upstreams}

    @property
    def prefixes(self) -> tuple[str, ...]:
        return tuple(u.prefix for u in self.upstreams)

    def owner(self, path: str) -> HttpUpstreamConfig | None:
        """The upstream whose prefix the (decoded) path lies under, if any."""
        for upstream in self.upstreams:
            if path == upstream.prefix or path.startswith(upstream.prefix + "/"):
                return upstream
        return None

    def match(self, raw_path: bytes, method: str) -> Matched | NotAllowed | None:
        """The route for this path and method; `NotAllowed` when only the method is wrong; None for no route."""
        upstream = None
        for prefix, candidate in self._by_prefix.items():
            if raw_path == prefix or raw_path.startswith(prefix + b"/"):
                upstream = candidate
                break
        if upstream is None:
            return None
        rest = raw_path[len(upstream.prefix) :]
        raw_segments = [] if rest in (b"", b"/") else rest[1:].split(b"/")
        decoded: list[str] = []
        for raw in raw_segments:
            segment = _segment(raw)
            if segment is None:
                return None
            decoded.append(segment)
        found: list[tuple[HttpRoute, dict[str, str]]] = []
        for route in upstream.routes:
            if len(route.segments) != len(decoded):
                continue
            parameters: dict[str, str] = {}
            names = iter(route.parameters)
            for literal, value in zip(route.segments, decoded, strict=True):
                if literal is None:
                    parameters[next(names)] = value
                elif literal != value:
                    break
            else:
                found.append((route, parameters))
        if not found:
            return None
        allowed = [(route, params) for route, params in found if method in route.methods]
        if not allowed:
            return NotAllowed(tuple(m for m in METHODS if any(m in route.methods for route, _ in found)))
        route, parameters = max(allowed, key=lambda pair: pair[0].specificity)
        forward = self._base[upstream.name] + "/" + "/".join(s.decode("ascii") for s in raw_segments)
        return Matched(upstream, route, parameters, forward)


def _segment(raw: bytes) -> str | None:
    """One segment of the client's path, decoded; None when it is not a plain, single segment."""
    if not _RAW_SEGMENT.fullmatch(raw) or _FORBIDDEN_ESCAPE.search(raw):
        return None
    try:
        value = unquote_to_bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        return None
    if value in (".", "..") or any(c in value for c in "/\\") or any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        return None
    return value


def route_table_rows(upstreams: Iterable[HttpUpstreamConfig]) -> list[dict[str, Any]]:
    """`authz-report`'s rows for the HTTP routes: each route's public path and methods, rule and roles."""
    from authz.roles import ROLE_ORDER
    from schema.authorization import describe, roles_allowed

    rows: list[dict[str, Any]] = []
    for upstream in upstreams:
        for route in upstream.routes:
            if route.rule.public:
                rule, roles = "public", ["anonymous", *(r.value for r in ROLE_ORDER)]
            else:
                rule, roles = describe(route.rule.requirement), roles_allowed(route.rule.requirement)
            name = f"{' '.join(route.methods)} {upstream.prefix}{'' if route.path == '/' else route.path}"
            rows.append({"type": f"http:{upstream.name}", "field": name, "rule": rule, "roles": roles})
    return rows
