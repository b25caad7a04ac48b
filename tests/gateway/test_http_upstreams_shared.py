"""HTTP routes through gateway processes (uvicorn, as `serve` runs them): two processes in shared mode spend
one tenant's budgets, and a large upload and download stream through without the gateway holding them."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from examples.billing.app import download_sha256
from tests.conftest import Tenant, login, make_tenant
from tests.gateway.test_http_upstreams import ISSUER, routes_file
from tests.gateway.test_shared_mode import gateway_env, gateway_processes
from tests.http_upstreams import Billing, billing_service

BIG = 200 * 1024 * 1024
RSS_GROWTH_LIMIT = 50 * 1024 * 1024
BIG_ROUTES = """
[[http_upstream]]
name = "billing"
url = "{url}"
prefix = "/api/billing"
timeout_seconds = 30

[[http_upstream.route]]
methods = ["POST"]
path = "/uploads"
rule = {{ authenticated = true }}
max_body_bytes = {limit}
audit = false

[[http_upstream.route]]
methods = ["GET"]
path = "/downloads/{{size}}"
rule = {{ authenticated = true }}
"""


@pytest.fixture
def billing(signing_key: str) -> Iterator[Billing]:
    with billing_service(signing_key, ISSUER) as upstream:
        yield upstream


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


class PeakRss:
    """The highest resident memory of a process, read every 20 ms in a thread while the block runs."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = rss(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, rss(self.pid))

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss(self.pid))


@pytest.mark.slow
async def test_two_processes_spend_one_tenants_cost_budget_on_routes(
    postgresql_url: str,
    redis_url: str,
    signing_key: str,
    billing: Billing,
    tmp_path: Path,
) -> None:
    t = await make_tenant(postgresql_url, slug="shared-routes", email="o@routes.test", limits={"COST_PER_MINUTE": 10})
    env = gateway_env(
        postgresql_url,
        redis_url,
        signing_key,
        UPSTREAMS_FILE=str(routes_file(tmp_path, billing.url)),
        PUBLIC_URL=ISSUER,
        LOG_LEVEL="WARNING",
    )
    with gateway_processes(2, env, tmp_path) as urls:
        async with httpx.AsyncClient(base_url=urls[0]) as c1, httpx.AsyncClient(base_url=urls[1]) as c2:
            auth = {"authorization": f"Bearer {(await login(c1, t))['accessToken']}"}
            invoice = f"/api/billing/invoices/inv-{t.org_id[:8]}-1"
            statuses = [(await (c1, c2)[i % 2].get(invoice, headers=auth)).status_code for i in range(8)]
    # the route costs 2 of the budget of 10, wherever it is asked: five pass, across both processes
    assert statuses == [200] * 5 + [429] * 3, statuses
    assert len([p for p in billing.recorder.paths() if p.startswith("/invoices/")]) == 5


async def chunks(total: int, size: int = 256 * 1024) -> AsyncIterator[bytes]:
    block = hashlib.shake_256(b"upload").digest(size)
    sent = 0
    while sent < total:
        part = block[: min(size, total - sent)]
        sent += len(part)
        yield part


@pytest.mark.slow
async def test_200_mb_up_and_down_stream_through_without_growing_the_gateway(
    database_url: str,
    signing_key: str,
    billing: Billing,
    tmp_path: Path,
    tenant: Tenant,
) -> None:
    path = tmp_path / "big.toml"
    path.write_text(BIG_ROUTES.format(url=billing.url, limit=BIG + 1))
    env = gateway_env(database_url, "", signing_key, UPSTREAMS_FILE=str(path), PUBLIC_URL=ISSUER, LOG_LEVEL="WARNING")
    del env["PORTCULLIS_REDIS_URL"]  # embedded mode: in-process limits
    pids: list[int] = []
    with gateway_processes(1, env, tmp_path, pids) as (url,):
        async with httpx.AsyncClient(base_url=url, timeout=120) as client:
            auth = {"authorization": f"Bearer {(await login(client, tenant))['accessToken']}"}
            # warm: the first request of each kind allocates what every later one reuses
            await client.post("/api/billing/uploads", content=b"x" * 1024, headers=auth)
            await client.get("/api/billing/downloads/1024", headers=auth)
            before = rss(pids[0])
            expected = hashlib.sha256()
            async for part in chunks(BIG):
                expected.update(part)
            digest = hashlib.sha256()
            received = 0
            with PeakRss(pids[0]) as memory:
                r = await client.post("/api/billing/uploads", content=chunks(BIG), headers=auth)
                assert r.status_code == 200, r.text
                assert r.json() == {"bytes": BIG, "sha256": expected.hexdigest()}
                async with client.stream("GET", f"/api/billing/downloads/{BIG}", headers=auth) as response:
                    assert response.status_code == 200
                    assert response.headers["content-length"] == str(BIG)
                    async for part in response.aiter_raw():
                        digest.update(part)
                        received += len(part)
            assert received == BIG
            assert digest.hexdigest() == download_sha256(BIG)
    growth = memory.peak - before
    assert growth < RSS_GROWTH_LIMIT, f"resident memory grew by {growth / 2**20:.1f} MiB"
