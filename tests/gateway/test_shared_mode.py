"""Shared mode: several gateway processes on one PostgreSQL and one Redis. A logout through one
process is honoured by the others within a second, even where they had the session cached."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.app import create_app
from tests.conftest import FAST_HASH, Tenant, cost_of, gql, login, make_settings, refused_within, running
from tests.services import free_port

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

ME = "{ me { user { email } organization { slug } } }"
ROOT = Path(__file__).resolve().parents[2]


async def test_logout_reaches_the_other_process(
    postgresql_url: str, redis_url: str, signing_key: str, shared_tenant: Tenant
) -> None:
    one = create_app(make_settings(postgresql_url, signing_key, redis_url=redis_url))
    two = create_app(make_settings(postgresql_url, signing_key, redis_url=redis_url))
    async with running(one) as c1, running(two) as c2:
        auth = await login(c1, shared_tenant)
        token = auth["accessToken"]
        for _ in range(2):  # the second answer comes from app two's session cache
            r = await gql(c2, ME, token=token)
            assert r.json()["data"]["me"]["organization"]["slug"] == shared_tenant.slug
        assert two.state.services.sessions.get(_session_id(token)) is not None

        assert (await gql(c1, "mutation { logout }", token=token)).json() == {
            "data": {"logout": True},
            "extensions": {"cost": cost_of(10)},
        }
        assert (await gql(c1, ME, token=token)).status_code == 401
        await refused_within(lambda: gql(c2, ME, token=token))


async def test_tokens_work_across_processes(
    postgresql_url: str, redis_url: str, signing_key: str, shared_tenant: Tenant
) -> None:
    """Both processes share the signing key and the database: a session from one is good on the other,
    and a refresh token issued by one is spent on the other, once."""
    one = create_app(make_settings(postgresql_url, signing_key, redis_url=redis_url))
    two = create_app(make_settings(postgresql_url, signing_key, redis_url=redis_url))
    refresh = "mutation($t: String) { refreshToken(refreshToken: $t) { accessToken refreshToken } }"
    async with running(one) as c1, running(two) as c2:
        auth = await login(c1, shared_tenant)
        rotated = (await gql(c2, refresh, {"t": auth["refreshToken"]})).json()["data"]["refreshToken"]
        assert (await gql(c1, ME, token=rotated["accessToken"])).status_code == 200
        reused = (await gql(c1, refresh, {"t": auth["refreshToken"]})).json()
        assert reused["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
        await refused_within(lambda: gql(c2, ME, token=rotated["accessToken"]))


def _session_id(token: str) -> str:
    from jose import jwt

    return str(jwt.get_unverified_claims(token)["sid"])


# -- real processes -----------------------------------------------------------------------------------


def gateway_env(database_url: str, redis_url: str, signing_key: str, **extra: str) -> dict[str, str]:
    """The environment of a gateway process in shared mode: this one's, minus its own PORTCULLIS_ settings,
    plus the shared database and Redis, the test signing key and fast password hashing; `extra` names
    further settings without their prefix (`LOG_LEVEL="WARNING"`)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PORTCULLIS_")}
    env.update(
        {
            "PORTCULLIS_ENV": "test",
            "PORTCULLIS_DATABASE_URL": database_url,
            "PORTCULLIS_REDIS_URL": redis_url,
            "PORTCULLIS_SIGNING_KEY": signing_key,
            "PORTCULLIS_PASSWORD_HASH_MEMORY_KIB": str(FAST_HASH.memory_kib),
            "PORTCULLIS_PASSWORD_HASH_TIME_COST": str(FAST_HASH.time_cost),
            # the tests call from the loopback far more often than a person, failures included
            "PORTCULLIS_BLOCK_SIGN_IN_ACCOUNTS": "0",
            "PORTCULLIS_BLOCK_INVALID_CREDENTIALS": "0",
            "PORTCULLIS_BLOCK_RATE_LIMITED": "0",
            "PYTHONPATH": str(ROOT),
            **{f"PORTCULLIS_{name}": value for name, value in extra.items()},
        }
    )
    return env


@contextlib.contextmanager
def gateway_processes(count: int, env: dict[str, str], cwd: Path, pids: list[int] | None = None) -> Iterator[list[str]]:
    """`count` gateway processes (uvicorn, as `serve` runs them) on free ports: their URLs, and in `pids`
    (when given) their process ids."""
    procs: list[subprocess.Popen[bytes]] = []
    urls: list[str] = []
    logs: list[Path] = []
    try:
        for i in range(count):
            port = free_port()
            log = cwd / f"gateway-{i}.log"
            logs.append(log)
            with log.open("wb") as out:
                procs.append(
                    subprocess.Popen(
                        [
                            sys.executable,
                            "-m",
                            "uvicorn",
                            "gateway.app:create_app",
                            "--factory",
                            "--host",
                            "127.0.0.1",
                            "--port",
                            str(port),
                            "--no-access-log",
                        ],
                        env=env,
                        cwd=cwd,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                    )
                )
            urls.append(f"http://127.0.0.1:{port}")
        deadline = time.monotonic() + 30
        for proc, url, log in zip(procs, urls, logs, strict=True):
            while True:
                if proc.poll() is not None:
                    pytest.fail(f"gateway exited with {proc.returncode}: {log.read_text()[-2000:]}")
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    pytest.fail(f"gateway at {url} not ready: {log.read_text()[-2000:]}")
                time.sleep(0.05)
        if pids is not None:
            pids.extend(proc.pid for proc in procs)
        yield urls
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.mark.slow
async def test_logout_across_uvicorn_processes(
    postgresql_url: str, redis_url: str, signing_key: str, shared_tenant: Tenant, tmp_path: Path
) -> None:
    env = gateway_env(postgresql_url, redis_url, signing_key)
    with gateway_processes(2, env, tmp_path) as (url1, url2):
        async with httpx.AsyncClient(base_url=url1) as c1, httpx.AsyncClient(base_url=url2) as c2:
            auth = await login(c1, shared_tenant)
            token = auth["accessToken"]
            for _ in range(2):
                r = await gql(c2, ME, token=token)
                assert r.status_code == 200, r.text
                assert r.json()["data"]["me"]["user"]["email"] == shared_tenant.email
                assert r.headers["x-request-id"]
            logout: Any = await gql(c1, "mutation { logout }", token=token)
            assert logout.json() == {"data": {"logout": True}, "extensions": {"cost": cost_of(10)}}
            await refused_within(lambda: gql(c2, ME, token=token))
            assert (await gql(c1, ME, token=token)).status_code == 401
