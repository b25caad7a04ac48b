"""Redis going away and coming back under a running gateway (shared mode): one `redis_unavailable` line when it
goes, one `redis_available` line when it is back, no traceback, however many requests and reconnection attempts
meet the outage in between; each failed call counted in `portcullis_redis_errors_total`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator

import pytest

from gateway.app import create_app
from tests.conftest import REQUIRE, make_settings, running
from tests.services import free_port, stop_process

ANONYMOUS = {"query": "{ __typename }"}


class RestartableRedis:
    """A redis-server of the test's own on one free port, stopped and started again on that same port."""

    def __init__(self, binary: str) -> None:
        self.binary = binary
        self.port = free_port()
        self.workdir = tempfile.mkdtemp(prefix="portcullis-redis-outage-")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                *(self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""),
                *("--appendonly", "no", "--dir", self.workdir, "--daemonize", "no"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return
            time.sleep(0.05)
        raise RuntimeError(f"redis-server did not listen on {self.port}")

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None


@pytest.fixture
def redis_process() -> Iterator[RestartableRedis]:
    binary = shutil.which("redis-server")
    if binary is None:
        if REQUIRE:
            pytest.fail("required service unavailable: no redis-server on PATH")
        pytest.skip("no redis-server on PATH")
    server = RestartableRedis(binary)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.workdir, ignore_errors=True)


def redis_lines(caplog: pytest.LogCaptureFixture, event: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "portcullis.redis" and r.getMessage() == event]


def sample(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.mark.redis
async def test_redis_down_then_up_is_logged_once_each_way(
    postgresql_url: str, signing_key: str, redis_process: RestartableRedis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="portcullis")
    app = create_app(make_settings(postgresql_url, signing_key, redis_url=redis_process.url))
    async with running(app) as client:
        assert (await client.post("/graphql", json=ANONYMOUS)).status_code == 200
        assert redis_lines(caplog, "redis_unavailable") == []

        redis_process.stop()
        for _ in range(6):
            r = await client.post("/graphql", json=ANONYMOUS)
            assert r.status_code == 503  # limits fail closed (PORTCULLIS_LIMITS_ON_REDIS_ERROR)
        ready = await client.get("/readyz")
        assert ready.status_code == 503
        assert "Redis is unreachable" in ready.json()["reason"]
        await asyncio.sleep(1.6)  # the revocation bus tries again every 0.5 s meanwhile
        [down] = redis_lines(caplog, "redis_unavailable")
        assert down.levelno == logging.WARNING
        assert down.exc_info is None
        assert "Error" in down.error  # type: ignore[attr-defined]
        metrics = (await client.get("/metrics")).text
        assert sample(metrics, 'portcullis_redis_errors_total{component="admission"}') == 6
        assert sample(metrics, 'portcullis_redis_errors_total{component="revocation-bus"}') >= 2
        assert sample(metrics, 'portcullis_redis_state_changes_total{state="down"}') == 1
        assert sample(metrics, "portcullis_redis_up") == 0

        redis_process.start()
        deadline = time.monotonic() + 15
        while (await client.post("/graphql", json=ANONYMOUS)).status_code != 200:
            assert time.monotonic() < deadline, "the gateway did not find Redis again"
            await asyncio.sleep(0.2)
        await asyncio.sleep(1.0)  # the revocation bus subscribes again too
        assert (await client.get("/readyz")).status_code == 200
        for _ in range(3):
            assert (await client.post("/graphql", json=ANONYMOUS)).status_code == 200
        [up] = redis_lines(caplog, "redis_available")
        assert up.down_seconds > 0  # type: ignore[attr-defined]
        assert len(redis_lines(caplog, "redis_unavailable")) == 1
        metrics = (await client.get("/metrics")).text
        assert sample(metrics, 'portcullis_redis_state_changes_total{state="up"}') == 1
        assert sample(metrics, "portcullis_redis_up") == 1
    tracebacks = [r for r in caplog.records if r.name.startswith("portcullis") and r.exc_info]
    assert tracebacks == [], [r.getMessage() for r in tracebacks]


async def test_no_redis_metrics_in_embedded_mode(sqlite_url: str, signing_key: str) -> None:
    app = create_app(make_settings(sqlite_url, signing_key))
    async with running(app) as client:
        text = (await client.get("/metrics")).text
    assert "portcullis_redis_up" not in text
