"""What an operator reads off a running gateway: the metrics families after traffic, /metrics behind a token in
prod or on a port of its own, one access log line per request, the RateLimit headers of every admitted answer,
and /readyz refusing until the database is migrated."""

from __future__ import annotations

import asyncio
import io
import logging
import re
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from gateway.access_log import AccessLog
from gateway.app import create_app
from gateway.metrics import portcullis_version
from gateway.probes import Readiness
from store.migrate import upgrade
from tests.conftest import _fresh_postgres_database, gql, login, make_settings, make_tenant, running
from tests.services import free_port

GOOD = {"api_key_pepper": "p" * 40, "cookie_secret": "c" * 40, "data_encryption_key": "d" * 40}
TOKEN = "m" * 40
QUERY = "query Who { organization { slug } }"


def family(text: str, name: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(name)]


# -- metrics --------------------------------------------------------------------------------------------------


async def test_metrics_list_request_latency_process_and_build_families_after_traffic(
    database_url: str, signing_key: str
) -> None:
    tenant = await make_tenant(database_url)
    app = create_app(make_settings(database_url, signing_key))
    async with running(app) as client:
        token = (await login(client, tenant))["accessToken"]
        assert (await gql(client, QUERY, token=token)).status_code == 200
        assert (await client.get("/healthz")).status_code == 200
        assert (await client.get("/reports/nothing.csv", headers={"Authorization": f"Bearer {token}"})).status_code
        text = (await client.get("/metrics")).text
    graphql = family(text, 'portcullis_request_duration_seconds_count{kind="graphql",name="Who",outcome="2xx"}')
    assert graphql
    assert graphql[0].endswith(" 1.0")
    assert family(
        text, 'portcullis_request_duration_seconds_bucket{kind="graphql",le="10.0",name="Who",outcome="2xx"} 1.0'
    )
    assert family(text, 'portcullis_request_duration_seconds_count{kind="gateway",name="/healthz",outcome="2xx"}')
    assert family(text, 'portcullis_request_duration_seconds_count{kind="route"') or family(
        text, 'portcullis_request_duration_seconds_count{kind="gateway",name="other",outcome="4xx"}'
    )
    assert family(text, "portcullis_requests_in_flight 1.0")  # the scrape itself
    for name in ("process_resident_memory_bytes", "process_cpu_seconds_total", "process_open_fds", "python_info"):
        assert family(text, name), name
    python = re.escape(".".join(str(v) for v in __import__("sys").version_info[:3]))
    assert re.search(
        rf'portcullis_build_info{{python="{python}",version="{re.escape(portcullis_version())}"}} 1.0', text
    )


async def test_prod_refuses_metrics_without_the_token(sqlite_url: str, signing_key: str) -> None:
    app = create_app(make_settings(sqlite_url, signing_key, env="prod", metrics_token=TOKEN, **GOOD))
    async with running(app) as client:
        refused = await client.get("/metrics")
        assert refused.status_code == 401
        assert refused.headers["www-authenticate"].startswith("Bearer")
        assert "portcullis_" not in refused.text
        assert refused.json()["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
        for wrong in (f"Bearer {'x' * 40}", f"Bearer {TOKEN}x", TOKEN, f"bearer  {TOKEN}"):
            assert (await client.get("/metrics", headers={"Authorization": wrong})).status_code == 401, wrong
        ok = await client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
        assert ok.status_code == 200
        assert "portcullis_request_duration_seconds" in ok.text


async def test_prod_without_a_token_serves_metrics_to_nobody_on_the_api_port(sqlite_url: str, signing_key: str) -> None:
    app = create_app(make_settings(sqlite_url, signing_key, env="prod", **GOOD))
    async with running(app) as client:
        assert (await client.get("/metrics")).status_code == 401
        assert (await client.get("/metrics", headers={"Authorization": "Bearer "})).status_code == 401


async def test_a_token_guards_metrics_outside_prod_too(sqlite_url: str, signing_key: str) -> None:
    app = create_app(make_settings(sqlite_url, signing_key, metrics_token="t" * 32))
    async with running(app) as client:
        assert (await client.get("/metrics")).status_code == 401
        assert (await client.get("/metrics", headers={"Authorization": f"Bearer {'t' * 32}"})).status_code == 200


async def test_metrics_port_serves_the_same_registry(sqlite_url: str, signing_key: str) -> None:
    port = free_port()
    app = create_app(make_settings(sqlite_url, signing_key, env="prod", metrics_port=port, **GOOD))
    async with running(app) as client:
        assert app.state.metrics_port.port == port
        assert (await client.get("/healthz")).status_code == 200
        assert (await client.get("/metrics")).status_code == 401  # not on the API port
        async with httpx.AsyncClient() as scraper:
            r = await scraper.get(f"http://127.0.0.1:{port}/metrics")
        assert r.status_code == 200
        assert 'portcullis_request_duration_seconds_count{kind="gateway",name="/healthz",outcome="2xx"}' in r.text
    async with httpx.AsyncClient() as scraper:
        with pytest.raises(httpx.ConnectError):
            await scraper.get(f"http://127.0.0.1:{port}/metrics", timeout=2)  # gone with the process's lifespan


# -- access log -----------------------------------------------------------------------------------------------


def access_lines(text: str) -> list[dict[str, Any]]:
    """The access log's lines among what the gateway wrote to standard error."""
    lines = [orjson.loads(line) for line in text.splitlines() if line.startswith("{")]
    return [line for line in lines if line.get("logger") == "portcullis.access"]


async def test_one_access_line_per_request(
    database_url: str, signing_key: str, capsys: pytest.CaptureFixture[str]
) -> None:
    tenant = await make_tenant(database_url)
    app = create_app(make_settings(database_url, signing_key))
    async with running(app) as client:
        token = (await login(client, tenant))["accessToken"]
        await asyncio.sleep(0)  # the login's line is written at the loop's next turn
        capsys.readouterr()
        r = await gql(client, QUERY, token=token, headers={"X-Request-ID": "req-access-0001"})
        assert r.status_code == 200
        refused = await client.get("/graphql?query=%7B__typename%7D&access_token=leaked-secret-value")
        assert refused.status_code == 401
        anonymous = await client.get("/healthz")
    written = capsys.readouterr().err
    lines = access_lines(written)
    assert len(lines) == 3
    first, second, third = lines
    assert list(first) == [
        "at",
        "level",
        "logger",
        "event",
        "trace_id",
        "method",
        "path",
        "status",
        "duration_ms",
        "request_id",
        "principal",
        "tenant",
        "operation",
    ]
    assert first["level"] == "INFO"
    assert first["event"] == "request"
    assert re.fullmatch(r"[0-9a-f]{32}", first["trace_id"])
    assert first["method"] == "POST"
    assert first["path"] == "/graphql"
    assert first["status"] == 200
    assert first["request_id"] == "req-access-0001"
    assert first["principal"] == "user"
    assert first["tenant"] == tenant.org_id
    assert first["operation"] == "Who"
    assert first["duration_ms"] > 0
    assert second["path"] == "/graphql"
    assert second["status"] == 401
    assert second["principal"] == "none"
    assert third == {**third, "path": "/healthz", "status": 200, "request_id": anonymous.headers["x-request-id"]}
    assert len({line["trace_id"] for line in lines}) == 3
    assert "leaked-secret-value" not in written
    assert "access_token" not in written


async def test_lines_of_one_turn_go_out_in_one_write() -> None:
    """Requests that end in the same turn of the event loop share one write; each is one JSON line, control
    characters escaped."""
    stream = CountingStream()
    log = AccessLog(stream)
    state: dict[str, Any] = {"request_id": "r1", "trace_id": "ab" * 16}
    for path in ("/graphql", "/x\n", "/healthz"):
        log.record({"method": "GET", "path": path}, state, 200, 0.001)
    assert stream.writes == []
    await asyncio.sleep(0)
    assert len(stream.writes) == 1
    lines = stream.writes[0].splitlines()
    assert [orjson.loads(line)["path"] for line in lines] == ["/graphql", "/x\n", "/healthz"]
    log.record({"method": "GET", "path": "/late"}, state, 200, 0.001)
    log.flush()  # what the lifespan does when the application stops
    assert len(stream.writes) == 2
    log.flush()
    assert len(stream.writes) == 2


async def test_a_failing_stream_loses_lines_not_requests() -> None:
    """A write that fails (a broken pipe) loses that batch and raises nothing into the request that ended;
    the next batch is written when the stream works again."""

    class Flaky(CountingStream):
        broken = True

        def write(self, text: str) -> int:
            if self.broken:
                raise OSError(32, "Broken pipe")
            return super().write(text)

    stream = Flaky()
    log = AccessLog(stream)
    log.record({"method": "GET", "path": "/lost"}, {}, 200, 0.001)
    log.flush()  # raises nothing
    stream.broken = False
    log.record({"method": "GET", "path": "/kept"}, {}, 200, 0.001)
    await asyncio.sleep(0)
    assert [orjson.loads(line)["path"] for w in stream.writes for line in w.splitlines()] == ["/kept"]


async def test_access_log_is_off_by_the_setting_or_the_level(
    sqlite_url: str, signing_key: str, capsys: pytest.CaptureFixture[str]
) -> None:
    level = logging.getLogger("portcullis").level
    try:
        for settings in (
            make_settings(sqlite_url, signing_key, access_log=False),
            make_settings(sqlite_url, signing_key, log_level="WARNING"),
        ):
            app = create_app(settings)
            async with running(app) as client:
                assert (await client.get("/healthz")).status_code == 200
            assert access_lines(capsys.readouterr().err) == []
    finally:
        logging.getLogger("portcullis").setLevel(level)  # the level is the process's, not the app's


class CountingStream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return len(text)


# -- RateLimit headers ----------------------------------------------------------------------------------------

_ITEM = re.compile(r'"([a-z-]+)";r=(\d+);t=(\d+)')
_POLICY = re.compile(r'"([a-z-]+)";q=(\d+);w=(\d+)')


def rate_limits(r: httpx.Response) -> tuple[dict[str, tuple[int, int]], dict[str, tuple[int, int]]]:
    policies = {m[1]: (int(m[2]), int(m[3])) for m in _POLICY.finditer(r.headers["ratelimit-policy"])}
    left = {m[1]: (int(m[2]), int(m[3])) for m in _ITEM.finditer(r.headers["ratelimit"])}
    return policies, left


async def test_admitted_graphql_answers_carry_ratelimit_headers(database_url: str, signing_key: str) -> None:
    tenant = await make_tenant(database_url, plan="free")
    app = create_app(make_settings(database_url, signing_key))
    async with running(app) as client:
        token = (await login(client, tenant))["accessToken"]
        one = await gql(client, QUERY, token=token)
        two = await gql(client, QUERY, token=token)
    assert one.status_code == two.status_code == 200
    policies, left = rate_limits(one)
    assert policies["tenant-minute"] == (60, 60)  # FREE: 60 requests a minute
    assert policies["tenant-day"] == (1000, 86_400)
    assert set(left) == set(policies)
    _, later = rate_limits(two)
    assert later["tenant-minute"][0] == left["tenant-minute"][0] - 1
    assert 0 < later["tenant-minute"][1] <= 60


async def test_admitted_http_route_answers_carry_ratelimit_headers(database_url: str, signing_key: str) -> None:
    tenant = await make_tenant(database_url, plan="free")
    app = create_app(make_settings(database_url, signing_key))
    async with running(app) as client:
        token = (await login(client, tenant))["accessToken"]
        r = await client.get("/reports/nothing.csv", headers={"Authorization": f"Bearer {token}"})
        health = await client.get("/healthz")
    assert r.status_code == 404
    policies, left = rate_limits(r)
    assert policies["tenant-minute"] == (60, 60)
    assert left["tenant-minute"][0] < 60
    assert "ratelimit" not in health.headers  # not limited, nothing to tell


async def test_a_refusal_keeps_its_one_limit(database_url: str, signing_key: str) -> None:
    tenant = await make_tenant(database_url, limits={"REQUESTS_PER_MINUTE": 1})
    app = create_app(make_settings(database_url, signing_key))
    async with running(app) as client:
        token = (await login(client, tenant))["accessToken"]
        await gql(client, QUERY, token=token)
        refused = await gql(client, QUERY, token=token)
    assert refused.status_code == 429
    assert refused.headers["ratelimit-policy"] == '"tenant-minute";q=1;w=60'
    assert refused.headers["ratelimit"].startswith('"tenant-minute";r=0;t=')
    assert len(refused.headers.get_list("ratelimit")) == 1


# -- readiness ------------------------------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def unmigrated_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'never-migrated.db'}"
    return _fresh_postgres_database(request.getfixturevalue("postgres_admin_url"))


async def test_readyz_fails_until_migrations_are_at_head(unmigrated_url: str, signing_key: str) -> None:
    app = create_app(make_settings(unmigrated_url, signing_key))
    async with running(app) as client:
        r = await client.get("/readyz")
        assert r.status_code == 503
        assert r.json()["checks"] == {"database": "ok", "migrations": "pending"}
        assert r.json()["reason"] == "the database is not migrated: run `portcullis migrate`"
        upgrade(unmigrated_url, "0014")
        now = [0.0]
        readiness = Readiness(app.state.services, clock=lambda: now[0])
        reason = await readiness.migrations()
        assert reason is not None
        assert "at revision 0014" in reason
        upgrade(unmigrated_url)
        assert await readiness.migrations() == reason  # asked again after a while, not on every probe
        now[0] = 5.0
        assert await readiness.migrations() is None
        now[0] = 1e9
        assert readiness.migrated
    app = create_app(make_settings(unmigrated_url, signing_key))
    async with running(app) as client:
        r = await client.get("/readyz")
        assert r.status_code == 200
        assert r.json()["checks"] == {"database": "ok", "migrations": "ok"}
