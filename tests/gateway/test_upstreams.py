"""GraphQL upstreams mounted into the gateway's schema and forwarded to, against a real upstream server."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from jose import jwt

from gateway.app import create_app
from tests.conftest import Tenant, error_codes, gql, login, make_settings, make_tenant, running, sql
from tests.upstreams import ORDERS_SDL, Answer, GraphQLUpstream, graphql_upstream, orders_file


@pytest.fixture
def upstream() -> Iterator[GraphQLUpstream]:
    with graphql_upstream() as u:
        yield u


def write_upstreams(tmp_path: Path, text: str, sdl: str = ORDERS_SDL) -> Path:
    (tmp_path / "orders.graphql").write_text(sdl)
    path = tmp_path / "upstreams.toml"
    path.write_text(text)
    return path


@pytest.fixture
async def gateway(database_url: str, signing_key: str, upstream: GraphQLUpstream, tmp_path: Path) -> AsyncIterator[Any]:
    path = write_upstreams(tmp_path, orders_file(upstream.url, timeout=3))
    app = create_app(make_settings(database_url, signing_key, upstreams_file=path))
    async with running(app) as client:
        app.state.client = client
        yield app


async def token_of(client: Any, t: Tenant) -> str:
    return str((await login(client, t))["accessToken"])


async def test_c138_an_upstream_query_is_forwarded_with_the_callers_organization(
    gateway: Any, upstream: GraphQLUpstream, tenant: Tenant
) -> None:
    client = gateway.state.client
    token = await token_of(client, tenant)
    r = await gql(
        client,
        "query Mine { orders(first: 2) { id total status customer } organization { slug } }",
        token=token,
        headers={
            "accept-language": "fr",
            "cookie": "a=b",
            "x-forwarded-for": "198.51.100.66",
            "forwarded": "for=198.51.100.66",
            "connection": "keep-alive, x-hop",
            "x-hop": "1",
            "te": "trailers",
            "proxy-authorization": "Basic eDp5",
        },
    )
    body = r.json()
    assert r.status_code == 200, body
    assert "errors" not in body, body
    assert body["data"]["organization"] == {"slug": tenant.slug}
    assert [o["id"] for o in body["data"]["orders"]] == [f"{tenant.org_id}-o1", f"{tenant.org_id}-o2"]
    assert body["data"]["orders"][0] == {
        "id": f"{tenant.org_id}-o1",
        "total": 10.0,
        "status": "PAID",
        "customer": f"customer 1 of {tenant.org_id}",
    }
    received = upstream.last()
    assert received.variables["portcullisPreset_organizationId"] == tenant.org_id
    assert "slug" not in received.query  # the local field never leaves
    assert received.body.get("operationName") == "Mine"
    # the client's credentials never reach the upstream (C-138); a context token does
    assert received.headers["authorization"] != f"Bearer {token}"
    # X-Forwarded-For is rebuilt from the address the edge trusts, never copied; hop-by-hop headers stop here
    assert received.headers["x-forwarded-for"] == "203.0.113.7"
    for dropped in ("forwarded", "x-hop", "te", "proxy-authorization"):
        assert dropped not in received.headers
    assert "cookie" not in received.headers
    assert "x-api-key" not in received.headers
    assert received.headers["accept-language"] == "fr"
    assert received.headers["x-request-id"] == r.headers["x-request-id"]
    assert received.headers["user-agent"] == "Portcullis"
    assert "gzip" in received.headers["accept-encoding"].split(",")
    claims = jwt.get_unverified_claims(received.headers["authorization"].removeprefix("Bearer "))
    assert claims["aud"] == "orders"
    assert claims["org"] == tenant.org_id
    assert claims["sub"] == tenant.user_id
    assert claims["exp"] - claims["iat"] <= 60
    assert set(claims["scope"].split()) == {"orders:read", "orders:write", "orders:admin"}


async def test_c136_a_client_cannot_send_a_preset_argument_itself(
    gateway: Any, upstream: GraphQLUpstream, tenant: Tenant
) -> None:
    client = gateway.state.client
    token = await token_of(client, tenant)
    r = await gql(client, '{ orders(organizationId: "someone-else") { id } }', token=token)
    assert r.status_code == 400
    assert "organizationId" in r.text
    assert upstream.received == []


async def test_c135_a_denied_field_never_reaches_the_upstream(
    gateway: Any, upstream: GraphQLUpstream, database_url: str
) -> None:
    viewer = await make_tenant(database_url, slug="viewers", email="v@viewers.test", role="admin")
    client = gateway.state.client
    token = await token_of(client, viewer)
    r = await gql(
        client,
        """query { orders(first: 1) { id ...Notes note2: internalNote ... on Order { internalNote } } }
           fragment Notes on Order { internalNote }""",
        token=token,
    )
    body = r.json()
    assert body["data"]["orders"] == [{"id": f"{viewer.org_id}-o1", "internalNote": None, "note2": None}]
    assert set(error_codes(body)) == {"FORBIDDEN"}
    assert "internalNote" not in upstream.last().query


async def test_an_unruled_root_field_is_not_mounted(gateway: Any, tenant: Tenant) -> None:
    client = gateway.state.client
    token = await token_of(client, tenant)
    r = await gql(client, "{ unruled }", token=token)
    assert r.status_code == 400


async def test_c139_an_upstream_that_fails_answers_at_its_fields_while_the_rest_answers(
    gateway: Any, upstream: GraphQLUpstream, tenant: Tenant
) -> None:
    client = gateway.state.client
    token = await token_of(client, tenant)
    for answer in (
        Answer(status=500, content_type="text/html", body=b"<html>oops</html>"),
        Answer(body=b"{not json"),
        Answer(data={"data": {"order": {"id": 1, "total": "x", "status": "WHAT", "customer": None}}}),
        Answer(data=[1, 2]),
    ):
        upstream.answer = lambda _r, a=answer: a  # type: ignore[misc]
        r = await gql(client, '{ order(id: "1") { id total status customer } organization { slug } }', token=token)
        body = r.json()
        assert r.status_code == 200, body
        assert body["data"] == {"order": None, "organization": {"slug": tenant.slug}}
        assert error_codes(body), body
        assert set(error_codes(body)) == {"UPSTREAM_ERROR"}, body
        assert "oops" not in r.text
        assert "WHAT" not in r.text


async def test_c139_an_upstream_that_hangs_answers_unavailable(
    gateway: Any, upstream: GraphQLUpstream, tenant: Tenant
) -> None:
    client = gateway.state.client
    token = await token_of(client, tenant)
    upstream.answer = lambda _r: Answer(delay=4.0)
    r = await gql(client, '{ order(id: "x") { id } organization { slug } }', token=token)
    body = r.json()
    assert body["data"] == {"order": None, "organization": {"slug": tenant.slug}}
    assert error_codes(body) == ["UPSTREAM_UNAVAILABLE"]
    assert body["errors"][0]["extensions"]["upstream"] == "orders"
    metrics = (await client.get("/metrics")).text
    assert 'portcullis_upstream_request_duration_seconds_count{outcome="timeout",upstream="orders"} 1.0' in metrics


async def test_a_mutation_is_forwarded_and_audited(gateway: Any, upstream: GraphQLUpstream, tenant: Tenant) -> None:
    client = gateway.state.client
    token = await token_of(client, tenant)
    r = await gql(
        client,
        'mutation { createOrder(input: {customer: "c", items: [{sku: "a", quantity: 2}]}) { id total status } }',
        token=token,
    )
    body = r.json()
    assert "errors" not in body, body
    assert body["data"]["createOrder"] == {"id": f"{tenant.org_id}-new1", "total": 2.0, "status": "PENDING"}
    r = await gql(
        client,
        '{ auditLogs(first: 20, filter: {upstream: "orders"}) { edges { node { action details requestId } } } }',
        token=token,
    )
    actions = [e["node"] for e in r.json()["data"]["auditLogs"]["edges"]]
    assert [a["action"] for a in actions] == ["upstream_mutation"]
    assert "input" not in actions[0]["details"]  # argument values are not stored
    assert actions
    assert actions[0]["details"]["field"] == "createOrder"
    assert actions[0]["details"]["upstream"] == "orders"
    assert actions[0]["details"]["outcome"] == "success"


async def test_upstream_errors_are_repathed_and_masked_unless_exposed(
    database_url: str, signing_key: str, upstream: GraphQLUpstream, tmp_path: Path, tenant: Tenant
) -> None:
    nested = {
        "data": {"order": {"id": "a", "customer": None}},
        "errors": [{"message": "customer service down: db at 10.0.0.7", "path": ["order", "customer"]}],
    }
    for expose in (False, True):
        path = write_upstreams(tmp_path, orders_file(upstream.url, expose_errors=expose))
        app = create_app(make_settings(database_url, signing_key, upstreams_file=path))
        async with running(app) as client:
            token = await token_of(client, tenant)
            upstream.answer = lambda _r: Answer(data=nested)
            r = await gql(client, '{ order(id: "a") { id customer } organization { slug } }', token=token)
            body = r.json()
            # `customer` is non-null: its null bubbles to `order`, as GraphQL prescribes
            assert body["data"] == {"order": None, "organization": {"slug": tenant.slug}}
            errors = {tuple(e["path"]): e for e in body["errors"]}
            assert all(e["extensions"]["code"] == "UPSTREAM_ERROR" for e in body["errors"])
            assert all(e["extensions"]["upstream"] == "orders" for e in body["errors"])
            assert list(errors) == [("order", "customer")]
            assert ("10.0.0.7" in r.text) is expose


async def test_c139_what_the_caller_did_not_ask_never_leaves(
    gateway: Any, upstream: GraphQLUpstream, tenant: Tenant
) -> None:
    client = gateway.state.client
    token = await token_of(client, tenant)
    upstream.answer = lambda _r: Answer(
        data={
            "data": {
                "orders": [{"id": "a", "total": 1.0, "secret": "x", "internalNote": "n", "__typename": "Order"}],
                "otherRoot": {"leak": True},
                "organization": {"slug": "someone-else"},
            },
            "extensions": {"debug": "stack"},
        }
    )
    r = await gql(client, "{ orders { id total } organization { slug } }", token=token)
    assert r.json()["data"] == {"orders": [{"id": "a", "total": 1.0}], "organization": {"slug": tenant.slug}}
    for leaked in ("secret", "otherRoot", "someone-else", "stack", "internalNote"):
        assert leaked not in r.text


# the answer to the field asked, were it not over the 10 MB limit
_HUGE = b'{"data":{"order":{"id":"' + b"x" * 12_000_000 + b'"}}}'


@pytest.mark.parametrize(
    "answer",
    [
        Answer(body=_HUGE),
        Answer(body=_HUGE, chunked=True),
        # a Content-Length of about 12 kB, 12 MB once inflated
        Answer(body=_HUGE, gzip=True),
        # plain JSON within the limit, said to be gzip: it does not decode as its coding says
        Answer(body=b'{"data":{"order":{"id":"x"}}}', claimed_encoding="gzip"),
    ],
    ids=["over-the-limit-declared", "over-the-limit-chunked", "over-the-limit-compressed", "broken-coding"],
)
async def test_c139_an_upstream_answer_that_cannot_be_read_is_an_error(
    gateway: Any, upstream: GraphQLUpstream, tenant: Tenant, answer: Answer
) -> None:
    client = gateway.state.client
    token = await token_of(client, tenant)
    upstream.answer = lambda _r: answer
    r = await gql(client, '{ order(id: "x") { id } organization { slug } }', token=token)
    body = r.json()
    assert r.status_code == 200
    assert body["data"] == {"order": None, "organization": {"slug": tenant.slug}}
    assert error_codes(body) == ["UPSTREAM_ERROR"]


async def test_a_forwarded_header_with_a_control_character_is_left_out(
    gateway: Any, upstream: GraphQLUpstream, tenant: Tenant
) -> None:
    client = gateway.state.client
    token = await token_of(client, tenant)
    for value, forwarded in (("fr\x7f", False), ("fr\x01", False), ("fr;\tq=0.9", True), ("fr-CH, fr;q=0.9", True)):
        r = await gql(client, "{ orders(first: 1) { id } }", token=token, headers={"accept-language": value})
        body = r.json()
        assert "errors" not in body, (value, body)
        assert body["data"]["orders"] == [{"id": f"{tenant.org_id}-o1"}]
        assert upstream.last().headers.get("accept-language") == (value if forwarded else None)
    ready = (await client.get("/readyz")).json()
    assert ready["upstreams"]["orders"]["circuit"] == "closed"


@pytest.mark.parametrize(("chunked", "compressed"), [(True, False), (False, True)], ids=["chunked", "compressed"])
async def test_an_answer_within_the_limit_is_read_whole(
    gateway: Any, upstream: GraphQLUpstream, tenant: Tenant, chunked: bool, compressed: bool
) -> None:
    client = gateway.state.client
    token = await token_of(client, tenant)
    orders = [{"id": f"o-{n}-" + "x" * 500} for n in range(400)]  # about 200 kB, in several chunks
    body = orjson.dumps({"data": {"orders": orders}})
    upstream.answer = lambda _r: Answer(body=body, chunked=chunked, gzip=compressed)
    r = await gql(client, "{ orders(first: 400) { id } }", token=token)
    assert r.json() == {**r.json(), "data": {"orders": orders}}


async def test_a_failing_upstream_opens_its_circuit_and_fails_fast(
    gateway: Any, upstream: GraphQLUpstream, tenant: Tenant
) -> None:
    client = gateway.state.client
    token = await token_of(client, tenant)
    upstream.answer = lambda _r: Answer(status=503, content_type="text/plain", body=b"down")
    for _ in range(5):
        r = await gql(client, "{ orders { id } }", token=token)
        assert error_codes(r.json()) == ["UPSTREAM_ERROR"]
    sent = len(upstream.received)
    r = await gql(client, '{ order(id: "x") { id } organization { slug } }', token=token)
    assert error_codes(r.json()) == ["UPSTREAM_UNAVAILABLE"]
    assert r.json()["data"]["organization"] == {"slug": tenant.slug}
    assert len(upstream.received) == sent  # failed fast: nothing sent
    ready = (await client.get("/readyz")).json()
    assert ready["status"] == "ok"
    assert ready["upstreams"]["orders"]["circuit"] == "open"
    metrics = (await client.get("/metrics")).text
    assert 'portcullis_upstream_circuit_open{upstream="orders"} 1.0' in metrics
    assert 'portcullis_upstream_request_duration_seconds_count{outcome="error",upstream="orders"} 5.0' in metrics
    assert 'portcullis_upstream_request_duration_seconds_count{outcome="circuit_open",upstream="orders"} 1.0' in metrics
    assert 'portcullis_upstream_in_flight{upstream="orders"} 0.0' in metrics


async def test_c139_two_tenants_interleaved_each_reach_only_their_own_organization(
    gateway: Any, upstream: GraphQLUpstream, database_url: str, tenant: Tenant
) -> None:
    import asyncio

    other = await make_tenant(database_url, slug="other", email="owner@other.test")
    client = gateway.state.client
    tokens = {tenant.org_id: await token_of(client, tenant), other.org_id: await token_of(client, other)}

    async def ask(org: str) -> None:
        r = await gql(client, "{ orders(first: 3) { id customer } }", token=tokens[org])
        assert r.json().get("data"), r.text
        orders = r.json()["data"]["orders"]
        assert [o["id"] for o in orders] == [f"{org}-o1", f"{org}-o2", f"{org}-o3"]

    await asyncio.gather(*(ask(org) for _ in range(15) for org in tokens))
    for received in upstream.received:
        claims = jwt.get_unverified_claims(received.headers["authorization"].removeprefix("Bearer "))
        assert received.variables["portcullisPreset_organizationId"] == claims["org"]


async def test_an_api_key_without_the_team_permission_is_refused(
    gateway: Any, upstream: GraphQLUpstream, tenant: Tenant
) -> None:
    client = gateway.state.client
    token = await token_of(client, tenant)
    created = await gql(
        client,
        'mutation { createApiKey(input: {name: "ci", scopes: ["organization:read"]}) { secret } }',
        token=token,
    )
    secret = created.json()["data"]["createApiKey"]["secret"]
    r = await client.post(
        "/graphql", json={"query": "{ orders { id } organization { slug } }"}, headers={"x-api-key": secret}
    )
    body = r.json()
    assert body["data"] == {"orders": None, "organization": {"slug": tenant.slug}} or body["data"] is None
    assert "FORBIDDEN" in error_codes(body)
    assert upstream.received == []
    created = await gql(
        client,
        'mutation { createApiKey(input: {name: "reader", scopes: ["orders:read"]}) { secret } }',
        token=token,
    )
    secret = created.json()["data"]["createApiKey"]["secret"]
    r = await client.post("/graphql", json={"query": "{ orders(first: 1) { id } }"}, headers={"x-api-key": secret})
    assert r.json()["data"]["orders"] == [{"id": f"{tenant.org_id}-o1"}]
    claims = jwt.get_unverified_claims(upstream.last().headers["authorization"].removeprefix("Bearer "))
    assert claims["scope"] == "orders:read"
    assert claims["amr"] == ["api_key"]


async def test_a_tenant_at_its_cost_budget_is_refused_before_forwarding(
    gateway: Any, upstream: GraphQLUpstream, database_url: str
) -> None:
    small = await make_tenant(database_url, slug="small", email="o@small.test", limits={"COST_PER_MINUTE": 25})
    client = gateway.state.client
    token = await token_of(client, small)
    r = await gql(client, "{ orders(first: 20) { id } }", token=token)
    assert r.status_code == 200, r.text
    r = await gql(client, "{ orders(first: 20) { id } }", token=token)
    assert r.status_code == 429
    assert error_codes(r.json()) == ["RATE_LIMITED"]
    assert len(upstream.received) == 1


async def test_mutations_keep_their_order_across_the_gateway_and_the_upstream(
    gateway: Any, upstream: GraphQLUpstream, tenant: Tenant, database_url: str
) -> None:
    client = gateway.state.client
    token = await token_of(client, tenant)
    r = await gql(
        client,
        """mutation {
             a: createOrder(input: {customer: "a", items: [{sku: "s", quantity: 1}]}) { id }
             b: createOrder(input: {customer: "b", items: [{sku: "s", quantity: 2}]}) { id }
             updateOrganization(input: {name: "Renamed"}) { name }
             c: cancelOrder(id: "x") { id }
           }""",
        token=token,
    )
    body = r.json()
    assert "errors" not in body, body
    assert body["data"]["a"]["id"].endswith("new1")
    assert body["data"]["b"]["id"].endswith("new2")
    assert body["data"]["updateOrganization"] == {"name": "Renamed"}
    # one request for the run a, b; another for c, after the local mutation
    assert len(upstream.received) == 2
    assert "a: createOrder" in upstream.received[0].query
    assert "b: createOrder" in upstream.received[0].query
    assert "cancelOrder" in upstream.received[1].query
    # every forwarded mutation is audited with the local one, in the same chain, at once: on SQLite the local
    # mutation's unit of work holds the only write lock until it commits, with the upstream's entries in it
    entries = sql(
        database_url,
        "SELECT action, details FROM audit_log WHERE action IN ('upstream_mutation', 'org_updated') ORDER BY sequence",
    )
    assert [action for action, _ in entries].count("upstream_mutation") == 3, entries
    assert "org_updated" in [action for action, _ in entries], entries


async def test_introspection_shows_each_role_the_upstream_fields_it_may_reach(gateway: Any, database_url: str) -> None:
    client = gateway.state.client
    seen: dict[str, set[str]] = {}
    for role in ("viewer", "manager", "owner"):
        t = await make_tenant(database_url, slug=f"intro-{role}", email=f"{role}@intro.test", role=role)
        token = await token_of(client, t)
        r = await gql(
            client,
            '{ q: __type(name: "Query") { fields { name } } m: __type(name: "Mutation") { fields { name } } '
            'o: __type(name: "Order") { fields { name } } }',
            token=token,
        )
        data = r.json()["data"]
        seen[role] = {f["name"] for k in ("q", "m", "o") if data[k] for f in data[k]["fields"]}
    assert {"orders", "order", "search", "node"} <= seen["viewer"]
    assert "createOrder" not in seen["viewer"]
    assert "createOrder" in seen["manager"]
    assert "internalNote" not in seen["manager"]
    assert "internalNote" in seen["owner"]
    assert "orderStats" not in seen["owner"]  # ENTERPRISE only; the tenants are PROFESSIONAL
    assert all("unruled" not in fields for fields in seen.values())


def comparable(body: dict[str, Any]) -> dict[str, Any]:
    """A response without what moves from one request to the next (the budget left, the request id)."""
    out = dict(body)
    cost = dict(out.pop("extensions", {}).get("cost", {}))
    out["requested"] = cost.get("requested")
    out["errors"] = sorted(
        (
            {**e, "extensions": {k: v for k, v in e.get("extensions", {}).items() if k != "requestId"}}
            for e in out.get("errors", [])
        ),
        key=lambda e: str(e.get("path")),
    )
    return out


DIRECT_CASES = [
    ("{ orders(first: 3) { id total status customer } }", None),
    ("query Two($n: ID!) { a: orders(first: 2) { id } b: order(id: $n) { id customer } }", None),
    ("{ orders(first: 2) { id items { sku quantity } __typename } }", None),
    (
        '{ order(id: "x") { id total status } }',
        Answer(data={"data": {"order": {"id": 1, "total": "x", "status": "NO"}}}),
    ),
    ("{ orders(first: 1) { id customer } }", Answer(data={"data": {"orders": [{"id": "a", "customer": None}]}})),
    ("{ orders(first: 1) { id } }", Answer(status=502, content_type="text/html", body=b"<html>bad gateway</html>")),
    (
        '{ order(id: "x") { id customer } }',
        Answer(data={"data": {"order": None}, "errors": [{"message": "nope", "path": ["order"]}]}),
    ),
    ('{ order(id: "x") { id items { sku } } }', Answer(data={"data": {"order": {"id": "1", "items": "x"}}})),
    # each built-in scalar and the enum, given a value its type takes as it is, one it converts, and one it refuses
    (
        '{ order(id: "x") { id total status items { sku quantity } } }',
        Answer(
            data={"data": {"order": {"id": 7, "total": 5, "status": "PAID", "items": [{"sku": "a", "quantity": 3}]}}}
        ),
    ),
    (
        '{ order(id: "x") { id items { sku quantity } } }',
        Answer(data={"data": {"order": {"id": "1", "items": [{"sku": "a", "quantity": 2**31}]}}}),
    ),
    (
        '{ order(id: "x") { id items { sku quantity } } }',
        Answer(data={"data": {"order": {"id": "1", "items": [{"sku": "a", "quantity": True}]}}}),
    ),
    (
        '{ order(id: "x") { id items { sku quantity } } }',
        Answer(
            data={"data": {"order": {"id": "1", "items": [{"sku": "a", "quantity": 1.5}, {"sku": 2, "quantity": 0}]}}}
        ),
    ),
    ('{ order(id: "x") { id status } }', Answer(data={"data": {"order": {"id": "1", "status": "LOST"}}})),
    ('{ order(id: "x") { id status } }', Answer(data={"data": {"order": {"id": "1", "status": 3}}})),
    ('{ order(id: "x") { id customer } }', Answer(data={"data": {"order": {"id": True, "customer": 12.5}}})),
    ('{ order(id: "x") { id total } }', Answer(data={"data": {"order": {"id": "1", "total": "12.5"}}})),
]


@pytest.mark.parametrize(("query", "answer"), DIRECT_CASES)
async def test_the_direct_way_answers_as_the_schema_does(
    gateway: Any, upstream: GraphQLUpstream, tenant: Tenant, query: str, answer: Answer | None
) -> None:
    """A query that only forwards is answered the schema's way once for its document and kind of caller, then
    the direct way: both answers are the same, whatever the upstream answers."""
    client = gateway.state.client
    token = await token_of(client, tenant)
    direct = gateway.state.services.upstreams.direct
    upstream.answer = (lambda _r: answer) if answer is not None else None
    variables = {"n": "x"} if "$n" in query else None
    first = await gql(client, query, variables, token=token)
    assert direct.answered == 0
    second = await gql(client, query, variables, token=token)
    assert direct.answered == 1
    assert second.status_code == first.status_code
    assert second.headers["content-type"] == first.headers["content-type"]
    assert comparable(second.json()) == comparable(first.json())
    assert upstream.received[-1].body == upstream.received[-2].body


async def test_the_direct_way_refuses_like_the_schema_does(
    gateway: Any, upstream: GraphQLUpstream, database_url: str
) -> None:
    small = await make_tenant(database_url, slug="tight", email="o@tight.test", limits={"COST_PER_MINUTE": 45})
    client = gateway.state.client
    token = await token_of(client, small)
    direct = gateway.state.services.upstreams.direct
    # a variable that does not coerce goes the schema's way, which refuses it
    for _ in range(2):
        bad = await gql(client, "query($n: Int) { orders(first: $n) { id } }", {"n": "many"}, token=token)
        assert bad.status_code == 400
    assert direct.answered == 0
    assert (await gql(client, "{ orders(first: 10) { id } }", token=token)).status_code == 200
    assert (await gql(client, "{ orders(first: 10) { id } }", token=token)).status_code == 200
    assert direct.answered == 1
    refused = await gql(client, "{ orders(first: 10) { id } }", token=token)
    assert direct.answered == 2
    assert refused.status_code == 429
    assert error_codes(refused.json()) == ["RATE_LIMITED"]
    assert refused.headers["retry-after"]


async def test_a_forwarded_mutation_whose_answer_does_not_fit_is_audited_as_an_error(
    gateway: Any, upstream: GraphQLUpstream, tenant: Tenant
) -> None:
    client = gateway.state.client
    token = await token_of(client, tenant)
    upstream.answer = lambda _r: Answer(data={"data": {"cancelOrder": {"id": "x", "status": "NOT A STATUS"}}})
    r = await gql(client, 'mutation { cancelOrder(id: "x") { id status } }', token=token)
    assert error_codes(r.json()) == ["UPSTREAM_ERROR"]
    upstream.answer = lambda _r: Answer(delay=4.0)
    r = await gql(client, 'mutation { cancelOrder(id: "y") { id } }', token=token)
    assert error_codes(r.json()) == ["UPSTREAM_UNAVAILABLE"]
    r = await gql(
        client,
        '{ auditLogs(first: 5, filter: {upstream: "orders"}) { edges { node { result details } } } }',
        token=token,
    )
    entries = [e["node"] for e in r.json()["data"]["auditLogs"]["edges"]]
    assert [(e["result"], e["details"]["outcome"]) for e in entries] == [("error", "unavailable"), ("error", "error")]


async def test_c136_a_preset_below_the_root_is_hidden_and_filled(
    gateway: Any, upstream: GraphQLUpstream, database_url: str
) -> None:
    big = await make_tenant(database_url, slug="bigco", email="o@bigco.test", plan="enterprise")
    client = gateway.state.client
    token = await token_of(client, big)
    r = await gql(client, "{ orderStats { count recent(first: 1) { id } } }", token=token)
    assert r.json()["data"]["orderStats"] == {"count": 12, "recent": [{"id": f"{big.org_id}-o1"}]}, r.text
    assert upstream.last().query.count("organizationId: $portcullisPreset_organizationId") == 2
    r = await gql(client, '{ orderStats { recent(organizationId: "other") { id } } }', token=token)
    assert r.status_code == 400
    assert "organizationId" in r.text


async def test_a_fragment_of_an_upstream_type_on_a_local_type_is_refused(
    gateway: Any, upstream: GraphQLUpstream, tenant: Tenant
) -> None:
    client = gateway.state.client
    token = await token_of(client, tenant)
    for query in (
        "{ organization { ... on Order { id } } }",
        "{ organization { ...O } } fragment O on Order { id }",
        "{ orders { ... on Organization { slug } } }",
    ):
        r = await gql(client, query, token=token)
        assert r.status_code == 400, r.text
        assert error_codes(r.json()) == ["BAD_USER_INPUT"]
    assert upstream.received == []


async def test_explain_reports_the_upstream_fields_cost_and_denials_without_forwarding(
    gateway: Any, upstream: GraphQLUpstream, database_url: str
) -> None:
    viewer = await make_tenant(database_url, slug="explained", email="v@explained.test", role="viewer")
    client = gateway.state.client
    token = await token_of(client, viewer)
    for _ in range(2):  # the second time too: a dry run never goes the direct way
        r = await gql(
            client,
            "{ orders(first: 5) { id internalNote } }",
            token=token,
            headers={"x-portcullis-explain": "1"},
        )
        explain = r.json()["extensions"]["explain"]
        assert explain["cost"] == 5
        assert [d["path"] for d in explain["denied"]] == [["orders", "internalNote"]]
    assert upstream.received == []
