"""The upstreams file: `portcullis upstreams check`, every problem at once, and `serve` refusing to start."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.upstreams import UpstreamsFileError, load_upstreams
from tests.upstreams import ORDERS_PERMISSIONS, ORDERS_SDL, orders_file


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    import os

    for name in list(os.environ):
        if name.startswith("PORTCULLIS_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PORTCULLIS_ENV", "dev")
    monkeypatch.setenv("PORTCULLIS_DATABASE_URL", f"sqlite+aiosqlite:///{tmp_path}/db.sqlite")
    return monkeypatch


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_check_prints_the_composed_schema(
    env: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "orders.graphql").write_text(ORDERS_SDL)
    (tmp_path / "upstreams.toml").write_text(orders_file("http://127.0.0.1:9/graphql"))
    env.setenv("PORTCULLIS_UPSTREAMS_FILE", str(tmp_path / "upstreams.toml"))
    assert main(["upstreams", "check"]) == 0
    out, err = capsys.readouterr()
    assert 'orders(first: Int = 10): [Order!]! @requiresScopes(scopes: [["orders:read"]])' in out
    assert "organizationId" not in out  # a preset is hidden from the public schema
    assert "unruled" not in out
    assert "Query.unruled has no rule: not mounted" in err
    assert "type Order" in out
    assert "union SearchResult = Order | Customer" in out
    assert main(["schema"]) == 0
    assert "type Order" in capsys.readouterr().out
    assert main(["authz-report"]) == 0
    report = capsys.readouterr().out
    assert "Query.unruled" in report
    assert "unreachable: upstream orders gives it no rule" in report
    assert "Order.internalNote" in report


BAD_SDL = """
type Query {
  organization: Order @authenticated
  orders(first: Int): [Order!]! @requiresScopes(scopes: [["orders:reed"]])
}
type Order { id: ID! }
type Organization { id: ID! }
"""


def test_check_reports_every_problem_at_once(
    env: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "bad.graphql").write_text(BAD_SDL)
    (tmp_path / "broken.graphql").write_text("type Query { orders: [Order!]! @authenticated ")
    port = closed_port()
    (tmp_path / "upstreams.toml").write_text(
        ORDERS_PERMISSIONS
        + f"""
[[upstream]]
name = "bad"
url = "http://127.0.0.1:{port}/graphql"
schema = "bad.graphql"
forward_headers = ["Authorization"]
[upstream.presets]
tenant = "organization.id"

[[upstream]]
name = "broken"
url = "http://127.0.0.1:{port}/graphql"
schema = "broken.graphql"

[[upstream]]
name = "gone"
url = "http://127.0.0.1:{port}/graphql"

[[upstream]]
name = "Not A Name"
url = "http://127.0.0.1:{port}/graphql"
"""
    )
    assert main(["upstreams", "check", "--file", str(tmp_path / "upstreams.toml")]) == 1
    err = capsys.readouterr().err
    assert "the header Authorization is never forwarded" in err
    assert "broken: the schema is not valid SDL" in err
    assert "line 1" in err
    assert "gone: unreachable" in err
    assert "name must match [a-z0-9-]+" in err
    (tmp_path / "upstreams.toml").write_text(
        ORDERS_PERMISSIONS
        + f"""
[[upstream]]
name = "bad"
url = "http://127.0.0.1:{port}/graphql"
schema = "bad.graphql"
[upstream.presets]
tenant = "organization.id"
"""
    )
    with pytest.raises(UpstreamsFileError) as raised:
        load_upstreams(tmp_path / "upstreams.toml")
    problems = "\n".join(raised.value.problems)
    assert "unknown permission(s): orders:reed" in problems
    assert "root field Query.organization collides with the gateway's" in problems
    assert "type Organization" not in problems or "collides" in problems
    assert "preset 'tenant' names an argument no field has" in problems


@pytest.mark.parametrize("url", ["ftp://nowhere", "http://127.0.0.1:99999/graphql", "http://exa mple.test/graphql"])
def test_serve_refuses_to_start_on_a_problem(
    env: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str], url: str
) -> None:
    (tmp_path / "upstreams.toml").write_text(f'[[upstream]]\nname = "x"\nurl = "{url}"\n')
    env.setenv("PORTCULLIS_UPSTREAMS_FILE", str(tmp_path / "upstreams.toml"))
    assert main(["serve", "--port", str(closed_port())]) == 2
    assert "url must be an http:// or https:// address" in capsys.readouterr().err


def test_a_file_that_is_not_toml_is_refused(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "upstreams.toml").write_text("[[upstream]\nname=")
    with pytest.raises(UpstreamsFileError) as raised:
        load_upstreams(tmp_path / "upstreams.toml")
    assert "not a valid TOML file" in raised.value.problems[0]


def test_a_type_of_the_gateway_cannot_be_redefined(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "t.graphql").write_text(
        "type Query { things: [Organization!]! @authenticated } type Organization { id: ID! }"
    )
    (tmp_path / "upstreams.toml").write_text(
        '[[upstream]]\nname = "t"\nurl = "http://127.0.0.1:9/graphql"\nschema = "t.graphql"\n'
    )
    with pytest.raises(UpstreamsFileError) as raised:
        load_upstreams(tmp_path / "upstreams.toml")
    assert raised.value.problems == ["upstream t: type Organization collides with a type of the gateway"]


def test_check_and_authz_report_list_the_http_routes_of_the_billing_example(
    env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    example = Path(__file__).resolve().parents[2] / "examples" / "billing" / "upstreams.toml"
    env.setenv("PORTCULLIS_UPSTREAMS_FILE", str(example))
    assert main(["upstreams", "check"]) == 0
    out = capsys.readouterr().out
    assert "# billing: GET /api/billing/invoices/{id} -> http://127.0.0.1:9200/invoices/{id}" in out
    assert "# billing: POST /api/billing/invoices -> http://127.0.0.1:9200/invoices" in out
    assert main(["authz-report", "--format", "json"]) == 0
    rows = {(r["type"], r["field"]): r for r in json.loads(capsys.readouterr().out)}
    read = rows[("http:billing", "GET /api/billing/invoices/{id}")]
    assert read["rule"] == "@requiresScopes(billing:read)"
    assert set(read["roles"]) == {"admin", "owner"}
    write = rows[("http:billing", "POST /api/billing/invoices")]
    assert write["rule"] == "@requiresScopes(billing:write) @requiresPlan(PROFESSIONAL)"
    assert set(write["roles"]) == {"owner", "admin", "manager"}


def test_http_route_problems_are_reported_with_the_others(
    env: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "upstreams.toml").write_text(
        """
[[upstream]]
name = "billing"
url = "http://127.0.0.1:9/graphql"
schema = "missing.graphql"

[[http_upstream]]
name = "billing"
url = "http://127.0.0.1:9200"
prefix = "/graphql/billing"

[[http_upstream.route]]
methods = ["GET"]
path = "/files/{path*}"
rule = { requires_scopes = [["billing:wrte"]] }
"""
    )
    assert main(["upstreams", "check", "--file", str(tmp_path / "upstreams.toml")]) == 1
    err = capsys.readouterr().err
    for problem in (
        "cannot read the schema file",
        "collides with the gateway's own paths",
        "a parameter is one whole segment",
        "unknown permission 'billing:wrte'",
    ):
        assert problem in err, err
