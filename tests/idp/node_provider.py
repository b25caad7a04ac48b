"""Runs node `oidc-provider` (tests/idp/oidc) on a free loopback port; `npm ci` first when needed."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from tests.services import ServiceUnavailable, free_port, npm_ci, stop_process

HERE = Path(__file__).resolve().parent / "oidc"
CLIENT_ID = "portcullis-web"
CLIENT_SECRET = "test-client-secret-0123456789abcdef"


def ensure_node_modules() -> None:
    npm_ci(HERE, ("oidc-provider",), "the OIDC provider (tests/idp/oidc)")


@contextlib.contextmanager
def oidc_provider(redirect_uris: list[str]) -> Iterator[str]:
    """The issuer URL of a fresh provider knowing one confidential client (`CLIENT_ID`)."""
    ensure_node_modules()
    port = free_port()
    workdir = Path(tempfile.mkdtemp(prefix="portcullis-op-"))
    clients = workdir / "clients.json"
    clients.write_text(
        json.dumps(
            [
                {
                    "client_id": CLIENT_ID,
                    "client_secret": CLIENT_SECRET,
                    "redirect_uris": redirect_uris,
                    "grant_types": ["authorization_code"],
                    "response_types": ["code"],
                    "token_endpoint_auth_method": "client_secret_basic",
                }
            ]
        )
    )
    log = (workdir / "log").open("wb")
    proc = subprocess.Popen(
        ["node", str(HERE / "provider.mjs"), str(port), str(clients)], cwd=HERE, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 30
        while b"ready" not in (workdir / "log").read_bytes():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise ServiceUnavailable(
                    "oidc-provider did not start: " + (workdir / "log").read_text(errors="replace")[-500:]
                )
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_process(proc)
        log.close()
        shutil.rmtree(workdir, ignore_errors=True)
