"""Runs the example billing service on Node (examples/billing-node) on a free loopback port, `npm ci` first when
needed; and serves a JWKS on loopback for such a service to fetch its keys from. The gateway's tests start the
service too, pointed at the gateway's own JWKS.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tests.services import ServiceUnavailable, npm_ci, stop_process

HERE = Path(__file__).resolve().parents[2] / "examples" / "billing-node"
READY = re.compile(rb"billing-node listening on (http://[0-9.]+:[0-9]+)")


# what server.mjs imports: jose always, OpenTelemetry's packages when it exports spans
PACKAGES = (
    "jose",
    "@opentelemetry/api",
    "@opentelemetry/core",
    "@opentelemetry/resources",
    "@opentelemetry/sdk-trace-base",
    "@opentelemetry/exporter-trace-otlp-proto",
)


def ensure_node_modules() -> None:
    npm_ci(HERE, PACKAGES, "the Node billing service (examples/billing-node)")


@contextlib.contextmanager
def billing_node_upstream(
    jwks_url: str, issuer: str, *, port: int = 0, env: Mapping[str, str] | None = None
) -> Iterator[str]:
    """The base URL (`http://127.0.0.1:<port>`) of a fresh Node billing service trusting the context tokens of
    `issuer` signed with a key of the JWKS at `jwks_url`; on `port`, or a free one; with the variables of `env`
    in its environment too (`OTEL_EXPORTER_OTLP_ENDPOINT`, say). It is stopped (SIGTERM) on exit."""
    ensure_node_modules()
    workdir = Path(tempfile.mkdtemp(prefix="portcullis-billing-node-"))
    own = {"PORT": str(port), "JWKS_URL": jwks_url, "ISSUER": issuer, "HOST": "127.0.0.1"}
    environment = {**os.environ, **(env or {}), **own}
    log_path = workdir / "log"
    log = log_path.open("wb")
    proc = subprocess.Popen(
        ["node", str(HERE / "server.mjs")], cwd=HERE, env=environment, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 30
        while (ready := READY.search(log_path.read_bytes())) is None:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise ServiceUnavailable(
                    "the Node billing service did not start: " + log_path.read_text(errors="replace")[-500:]
                )
            time.sleep(0.05)
        yield ready.group(1).decode()
    finally:
        stop_process(proc)
        log.close()
        shutil.rmtree(workdir, ignore_errors=True)


class JwksServer:
    """A JWKS served at `url` from a thread of the test process: `jwks` may be replaced (a key rotation) and
    `fetches` counts the requests for it."""

    def __init__(self, jwks: Mapping[str, Any]) -> None:
        self.jwks = jwks
        self.fetches = 0
        served = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path != "/.well-known/jwks.json":
                    self.send_error(404)
                    return
                served.fetches += 1
                body = json.dumps(served.jwks).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/.well-known/jwks.json"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


@contextlib.contextmanager
def serving_jwks(jwks: Mapping[str, Any]) -> Iterator[JwksServer]:
    server = JwksServer(jwks)
    try:
        yield server
    finally:
        server.close()
