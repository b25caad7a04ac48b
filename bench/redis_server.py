"""A Redis server of the benchmark's own, on a free loopback port, for the shared-mode scenario.

Pinned, when the bench pins, to the CPU that is not the gateway's (wrk's): Redis is another service, as it
would be on another host, and an unpinned server moves the results with wherever the scheduler puts it."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator

from bench.servers import HOST, BenchError, free_port, pin_to, stop


@contextlib.contextmanager
def redis_server(cpu: int | None = None) -> Iterator[str]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise BenchError("the admission scenario needs redis-server on PATH (Debian: apt-get install redis-server)")
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="portcullis-bench-redis-")
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", HOST, "--save", "", "--appendonly", "no", "--dir", workdir],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
        preexec_fn=pin_to(cpu),
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=0.5):
                break
            if process.poll() is not None or time.monotonic() > deadline:
                raise BenchError("redis-server did not start")
            time.sleep(0.05)
        yield f"redis://{HOST}:{port}/0"
    finally:
        stop(process)
        shutil.rmtree(workdir, ignore_errors=True)
