"""Runs the GraphQL Yoga orders service (examples/orders-yoga) on a free loopback port; `npm ci` first when needed."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx

from tests.services import ServiceUnavailable, free_port, npm_ci, stop_process

HERE = Path(__file__).resolve().parents[2] / "examples" / "orders-yoga"


def ensure_node_modules() -> None:
    npm_ci(HERE, ("graphql-yoga", "jose"), "the Yoga orders service (examples/orders-yoga)")


@contextlib.contextmanager
def yoga_upstream(jwks: Mapping[str, Any], issuer: str) -> Iterator[str]:
    """The GraphQL URL of a fresh Yoga orders service trusting the keys of `jwks` and tokens from `issuer`."""
    ensure_node_modules()
    port = free_port()
    workdir = Path(tempfile.mkdtemp(prefix="portcullis-yoga-"))
    (workdir / "jwks.json").write_text(json.dumps(jwks))
    env = {**os.environ, "PORT": str(port), "JWKS_FILE": str(workdir / "jwks.json"), "ISSUER": issuer}
    env.pop("JWKS_URL", None)
    env.pop("AUDIENCE", None)
    log = (workdir / "log").open("wb")
    proc = subprocess.Popen(["node", str(HERE / "server.mjs")], cwd=HERE, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise ServiceUnavailable(
                    "the Yoga orders service did not start: " + (workdir / "log").read_text(errors="replace")[-500:]
                )
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}/graphql"
    finally:
        stop_process(proc)
        log.close()
        shutil.rmtree(workdir, ignore_errors=True)
