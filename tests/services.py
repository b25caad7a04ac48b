"""PostgreSQL and Redis for the tests: the ones named by PORTCULLIS_TEST_DATABASE_URL /
PORTCULLIS_TEST_REDIS_URL, or our own, started on free loopback ports from the binaries on PATH.

Several pytest processes may run at once (pytest-xdist workers): each starts servers of its own, a server
that could not take its port (another process took it first) is started again on another, and `npm ci`
in a shared directory runs under a file lock.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from filelock import FileLock

PORT_ATTEMPTS = 5


class ServiceUnavailable(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """Asks the process to end, and ends it if it has not within ten seconds."""
    proc.terminate()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def npm_ci(directory: Path, packages: tuple[str, ...], what: str) -> None:
    """The node packages of `directory` installed from its lock file (`npm ci`), unless they are there already
    from this lock file. Processes running at once wait for each other: one installs, the others find it done."""
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        raise ServiceUnavailable(f"node and npm are needed for {what}")
    lock_file = directory / "package-lock.json"
    wanted = hashlib.sha256(lock_file.read_bytes()).hexdigest() if lock_file.is_file() else "no lock file"
    marker = directory / "node_modules" / ".installed-from"

    def installed() -> bool:
        return (
            marker.is_file()
            and marker.read_text() == wanted
            and all((directory / "node_modules" / p).is_dir() for p in packages)
        )

    if installed():
        return
    key = hashlib.sha256(str(directory.resolve()).encode()).hexdigest()[:16]
    with FileLock(Path(tempfile.gettempdir()) / f"portcullis-npm-ci-{key}.lock", timeout=600):
        if installed():
            return
        try:
            subprocess.run(
                [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
                cwd=directory,
                check=True,
                capture_output=True,
                timeout=300,
            )
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            out = getattr(exc, "stderr", b"") or b""
            raise ServiceUnavailable(f"npm ci failed for {what}: {out.decode(errors='replace')[-500:]}") from exc
        marker.write_text(wanted)


def _wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.05)
    raise ServiceUnavailable(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def _pg_bindir() -> Path | None:
    found = shutil.which("pg_ctl")
    if found:
        return Path(os.path.realpath(found)).parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    return Path(candidates[-1]).parent if candidates else None


def _as_user() -> list[str]:
    """PostgreSQL refuses to run as root: drop to the `postgres` (or `nobody`) account."""
    if os.geteuid() != 0:
        return []
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return ["runuser", "-u", name, "--"]
    raise ServiceUnavailable("running as root and no unprivileged account to run PostgreSQL")


@contextlib.contextmanager
def postgres_server(*, durable: bool = False) -> Iterator[str]:
    """A throwaway PostgreSQL on a free port. Tests run it without fsync; `durable=True` keeps the
    server's default durability (fsync, synchronous commit), as the benchmark measures it."""
    bindir = _pg_bindir()
    if bindir is None:
        raise ServiceUnavailable("no PostgreSQL binaries (pg_ctl) on PATH or in /usr/lib/postgresql")
    prefix = _as_user()
    base = Path(tempfile.mkdtemp(prefix="portcullis-pg-"))
    data, sock = base / "data", base / "sock"
    sock.mkdir()
    if prefix:
        user = prefix[2]
        pw = pwd.getpwnam(user)
        for p in (base, sock):
            os.chown(p, pw.pw_uid, pw.pw_gid)
    try:
        subprocess.run(
            [
                *prefix,
                str(bindir / "initdb"),
                "-D",
                str(data),
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
                "-E",
                "UTF8",
                "--locale=C",
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        out = getattr(exc, "stderr", b"") or b""
        shutil.rmtree(base, ignore_errors=True)
        raise ServiceUnavailable(f"PostgreSQL's initdb failed: {out.decode(errors='replace')[-500:]}") from exc
    port = 0
    for attempt in range(PORT_ATTEMPTS):
        # the port is free when chosen, but another process may take it before the server binds it: then
        # the server stops at once (it listens on no address) and starts again on another port
        port = free_port()
        opts = f"-p {port} -k {sock} -h 127.0.0.1 -c max_connections=200"
        if not durable:
            opts += " -c fsync=off -c full_page_writes=off -c synchronous_commit=off"
        try:
            subprocess.run(
                [
                    *prefix,
                    str(bindir / "pg_ctl"),
                    "-D",
                    str(data),
                    "-o",
                    opts,
                    "-l",
                    str(base / "log"),
                    "-w",
                    "-t",
                    "60",
                    "start",
                ],
                check=True,
                capture_output=True,
                timeout=90,
            )
            break
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            if attempt + 1 < PORT_ATTEMPTS and b"in use" in _read(base / "log"):
                continue
            out = (getattr(exc, "stderr", b"") or b"") + _read(base / "log")
            shutil.rmtree(base, ignore_errors=True)
            raise ServiceUnavailable(f"PostgreSQL did not start: {out.decode(errors='replace')[-500:]}") from exc
    try:
        _wait_port(port)
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(
            [*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
            capture_output=True,
            timeout=60,
            check=False,
        )
        shutil.rmtree(base, ignore_errors=True)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:
        return b""


def _redis_pid(port: int) -> int | None:
    """The process id the Redis listening on `port` reports (`INFO server`), None if it does not answer."""
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=2) as s:
        s.sendall(b"INFO server\r\n")
        data = b""
        while (found := re.search(rb"process_id:(\d+)\r\n", data)) is None:
            chunk = s.recv(65536)
            if not chunk:
                return None
            data += chunk
        return int(found.group(1))
    return None


@contextlib.contextmanager
def redis_server() -> Iterator[str]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise ServiceUnavailable("no redis-server on PATH")
    workdir = tempfile.mkdtemp(prefix="portcullis-redis-")
    try:
        for attempt in range(PORT_ATTEMPTS):
            port = free_port()
            proc = subprocess.Popen(
                [
                    binary,
                    "--port",
                    str(port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    workdir,
                    "--daemonize",
                    "no",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                _wait_port(port)
                # what answers must be this server: another process may have taken the port first
                if proc.poll() is None and _redis_pid(port) == proc.pid:
                    break
            except ServiceUnavailable:
                if proc.poll() is None or attempt + 1 == PORT_ATTEMPTS:
                    stop_process(proc)
                    raise
            stop_process(proc)
        else:
            raise ServiceUnavailable(f"redis-server found no free port in {PORT_ATTEMPTS} attempts")
        try:
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            stop_process(proc)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
