"""HTTP routes read from the upstreams file and matched against request paths exactly as sent (C-140)."""

from __future__ import annotations

from typing import Any

import pytest

from authz import Requirement, install_team_permissions
from authz.vocabulary import TeamPermission
from gateway.http_routes import (
    HttpUpstreamConfig,
    Matched,
    NotAllowed,
    RouteTable,
    check_http_upstreams,
    read_http_upstream,
)


@pytest.fixture(autouse=True)
def team_permissions() -> Any:
    install_team_permissions([TeamPermission("invoices:read", "", ("viewer",)), TeamPermission("invoices:write", "")])
    yield
    install_team_permissions(())


def billing(**changes: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "name": "billing",
        "url": "http://127.0.0.1:9200/v1",
        "prefix": "/api/billing",
        "route": [
            {"methods": ["GET"], "path": "/invoices", "rule": {"requires_scopes": [["invoices:read"]]}},
            {"methods": ["GET", "PUT"], "path": "/invoices/{id}", "rule": {"requires_scopes": [["invoices:read"]]}},
            {"methods": ["GET"], "path": "/invoices/summary", "rule": {"authenticated": True}, "cost": 3},
            {
                "methods": ["POST"],
                "path": "/invoices",
                "rule": {"requires_scopes": [["invoices:write"]], "requires_plan": "professional"},
            },
            {"methods": ["GET"], "path": "/status", "rule": {"public": True}, "cost": 0},
            {"methods": ["GET"], "path": "/customers/{customer}/invoices/{id}", "rule": {"authenticated": True}},
        ],
    }
    entry.update(changes)
    return entry


def table(**changes: Any) -> RouteTable:
    problems: list[str] = []
    config = read_http_upstream(billing(**changes), 0, problems)
    assert problems == []
    assert config is not None
    return RouteTable([config])


def test_a_route_is_read_with_its_rule_cost_and_audit() -> None:
    config = table().upstreams[0]
    assert config.url == "http://127.0.0.1:9200/v1"
    assert config.timeout_seconds == 10
    by_path = {(r.path, r.methods): r for r in config.routes}
    write = by_path[("/invoices", ("POST",))]
    assert write.rule.requirement == Requirement(any_of=(("invoices:write",),), plan="professional")
    assert write.audit == frozenset({"POST"})  # audited by default: every method but GET and HEAD
    assert write.cost == 1
    assert by_path[("/invoices/{id}", ("GET", "PUT"))].audit == frozenset({"PUT"})
    assert by_path[("/status", ("GET",))].rule.public
    assert config.permissions == frozenset({"invoices:read", "invoices:write"})


def test_paths_match_whole_segments_and_literals_outrank_parameters() -> None:
    routes = table()
    found = routes.match(b"/api/billing/invoices/inv-1", "GET")
    assert isinstance(found, Matched)
    assert found.route.path == "/invoices/{id}"
    assert found.parameters == {"id": "inv-1"}
    assert found.forward_path == "/v1/invoices/inv-1"
    summary = routes.match(b"/api/billing/invoices/summary", "GET")
    assert isinstance(summary, Matched)
    assert summary.route.path == "/invoices/summary"
    nested = routes.match(b"/api/billing/customers/c%C3%A9/invoices/7", "GET")
    assert isinstance(nested, Matched)
    assert nested.parameters == {"customer": "cé", "id": "7"}
    assert nested.forward_path == "/v1/customers/c%C3%A9/invoices/7"  # the client's own checked segments
    # a parameter never spans two segments, and nothing else lies under a route
    for path in (b"/api/billing/invoices/a/b", b"/api/billing/invoices/1/", b"/api/billing/other", b"/api/billing"):
        assert routes.match(path, "GET") is None, path


@pytest.mark.parametrize(
    "path",
    [
        b"/api/billing/../admin",
        b"/api/billing/invoices/..",
        b"/api/billing/invoices/.",
        b"/api/billing/%2e%2e/admin",
        b"/api/billing/invoices/%2E%2E",
        b"/api/billing/invoices/%2e",
        b"/api/billing/invoices/%252e%252e",
        b"/api/billing/invoices/%25",
        b"/api/billing//invoices",
        b"/api/billing/invoices//1",
        b"/api/billing/invoices/a\\..\\b",
        b"/api/billing/invoices/a%5c..%5cb",
        b"/api/billing/invoices/a%2fb",
        b"/api/billing/invoices/a%2Fb",
        b"/api/billing/invoices/%00",
        b"/api/billing/invoices/a%0ab",
        b"/api/billing/invoices/%ff",
        b"/api/billing/invoices/%zz",
        b"/api/billing/invoices/a b",
        b"/api/billingx/invoices/1",
    ],
)
def test_c140_traversal_and_smuggled_separators_match_nothing(path: bytes) -> None:
    assert table().match(path, "GET") is None


def test_c140_an_escaped_question_mark_stays_inside_its_segment() -> None:
    found = table().match(b"/api/billing/invoices/1%3Fx=1", "GET")
    assert isinstance(found, Matched)
    assert found.parameters == {"id": "1?x=1"}
    assert found.forward_path == "/v1/invoices/1%3Fx=1"


def test_a_method_not_listed_is_not_allowed_with_the_methods_that_are() -> None:
    routes = table()
    found = routes.match(b"/api/billing/invoices/1", "DELETE")
    assert found == NotAllowed(("GET", "PUT"))
    assert routes.match(b"/api/billing/invoices", "PATCH") == NotAllowed(("GET", "POST"))
    # HEAD is a method like the others: a route lists it to answer it
    assert routes.match(b"/api/billing/status", "HEAD") == NotAllowed(("GET",))


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"path": "/files/{path*}"}, "a parameter is one whole segment"),
        ({"path": "/files/{name}.json"}, "a parameter is one whole segment"),
        ({"path": "/files/*"}, "a parameter is one whole segment"),
        ({"path": "/files/{id}/{id}"}, "appears twice"),
        ({"path": "/files/../x"}, "is not a path segment"),
        ({"path": "/files//x"}, "is not a path segment"),
        ({"path": "/files/%2e"}, "is not a path segment"),
        ({"path": "files"}, "path must be a template"),
        ({"methods": ["GET", "CONNECT"]}, "methods must be"),
        ({"methods": []}, "methods must be"),
        ({"methods": ["GET", "GET"]}, "listed twice"),
        ({"rule": {}}, "rule must be a table"),
        ({"rule": {"authenticated": False}}, "must be true"),
        ({"rule": {"public": True, "requires_plan": "starter"}}, "a public rule cannot also"),
        ({"rule": {"requires_scopes": [["nope:read"]]}}, "unknown permission 'nope:read'"),
        ({"rule": {"requires_scopes": []}}, "non-empty list"),
        ({"rule": {"requires_plan": "gold"}}, "requires_plan must be one of"),
        ({"rule": {"scopes": ["x"]}}, "unknown rule setting 'scopes'"),
        ({"cost": -1}, "cost must be an integer"),
        ({"audit": "yes"}, "audit must be true or false"),
        ({"max_body_bytes": 1.5}, "max_body_bytes must be an integer"),
        ({"allow_set_cookie": 1}, "allow_set_cookie must be true or false"),
        ({"color": "blue"}, "unknown setting 'color'"),
    ],
)
def test_every_route_problem_is_reported(change: dict[str, Any], problem: str) -> None:
    route = {"methods": ["GET"], "path": "/files/{id}", "rule": {"authenticated": True}, **change}
    problems: list[str] = []
    assert read_http_upstream(billing(route=[route]), 0, problems) is None
    assert any(problem in p for p in problems), problems


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"name": "Billing"}, "name must match"),
        ({"url": "ftp://127.0.0.1/x"}, "url must be an http"),
        ({"url": "http://127.0.0.1:9200/?a=1"}, "without a query"),
        ({"prefix": "/api/billing/"}, "prefix must be a path"),
        ({"prefix": "api"}, "prefix must be a path"),
        ({"prefix": "/api/../graphql"}, "prefix must be a path"),
        ({"prefix": "/graphql"}, "collides with the gateway's own paths"),
        ({"prefix": "/auth/billing"}, "collides with the gateway's own paths"),
        ({"prefix": "/"}, "prefix must be a path"),
        ({"timeout_seconds": 0}, "timeout_seconds"),
        ({"max_connections": 0}, "max_connections"),
        ({"route": []}, "needs at least one"),
        ({"routes": []}, "unknown setting 'routes'"),
    ],
)
def test_every_upstream_problem_is_reported(change: dict[str, Any], problem: str) -> None:
    problems: list[str] = []
    read_http_upstream(billing(**change), 0, problems)
    assert any(problem in p for p in problems), problems


def test_two_routes_answering_the_same_requests_are_refused() -> None:
    problems: list[str] = []
    routes = [
        {"methods": ["GET", "PUT"], "path": "/invoices/{id}", "rule": {"authenticated": True}},
        {"methods": ["PUT"], "path": "/invoices/{number}", "rule": {"public": True}},
    ]
    assert read_http_upstream(billing(route=routes), 0, problems) is None
    assert any("match the same requests" in p for p in problems), problems


def test_names_and_prefixes_are_unique_across_upstreams() -> None:
    def config(name: str, prefix: str) -> HttpUpstreamConfig:
        problems: list[str] = []
        found = read_http_upstream(billing(name=name, prefix=prefix), 0, problems)
        assert found is not None, problems
        return found

    problems = check_http_upstreams(
        [config("billing", "/api/billing"), config("ledger", "/api/billing/ledger"), config("orders", "/api/o")],
        ["orders"],
    )
    assert any("ledger" in p and "overlaps" in p for p in problems), problems
    assert any("orders" in p and "already taken" in p for p in problems), problems
