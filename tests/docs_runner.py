"""Runs the documentation's examples (tests/docs_examples.py) against a real gateway process.

One `portcullis serve` per Markdown file, started on first need on a free port, with its own working
directory and SQLite database (a copy of one migrated and seeded with the demo tenant once per test
session). The blocks of a file run in order against it, so a later block can use what an earlier one made;
asking for block k first runs the blocks before it that have not run yet (in any test process).

GraphQL blocks are posted operation by operation, as the demo owner unless the comment names another
caller. Shell blocks run under `bash` with `set -euo pipefail` in the file's working directory, with the
gateway's URL in place of the documentation's (`http://127.0.0.1:8000`, `http://localhost:8000`,
`https://gateway.example.com`), `$TOKEN` holding an owner's access token, `portcullis` and `python3` from
this environment, the same database, and `curl` failing on an HTTP error (`--fail-with-body`). A block
fails on an exit status other than 0, or when it prints a GraphQL answer carrying `errors`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from graphql import GraphQLSyntaxError, OperationDefinitionNode, parse

from tests.docs_examples import ROOT, SHELL, Block, Fill, Setup, console_commands
from tests.services import free_port, stop_process


def wait_port(port: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f}s")


BIN = Path(sys.executable).parent
DOC_URLS = ("http://127.0.0.1:8000", "http://localhost:8000", "https://gateway.example.com")
DEMO_EMAIL, DEMO_PASSWORD = "owner@acme.test", "portcullis-demo"
SHELL_TIMEOUT = 180.0
LOGIN = f'mutation {{ login(email: "{DEMO_EMAIL}", password: "{DEMO_PASSWORD}") {{ accessToken }} }}'


class ExampleFailed(AssertionError):
    pass


def _environment(workdir: Path, database: Path) -> dict[str, str]:
    """The caller's environment without any PORTCULLIS_ setting, then the test gateway's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PORTCULLIS_")}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PORTCULLIS_ENV"] = "dev"
    env["PORTCULLIS_DATABASE_URL"] = f"sqlite:///{database}"
    env["HOME"] = str(workdir)
    return env


def seeded_database(directory: Path) -> Path:
    """A SQLite file migrated to head with the demo tenant: the start of every file's gateway."""
    database = directory / "seeded.db"
    env = _environment(directory, database)
    for command in (["migrate"], ["seed-demo"]):
        done = subprocess.run(
            [str(BIN / "portcullis"), *command], cwd=directory, env=env, capture_output=True, timeout=120
        )
        if done.returncode != 0:
            raise RuntimeError(f"portcullis {command[0]} failed: {done.stderr.decode(errors='replace')}")
    return database


@dataclass
class Gateway:
    workdir: Path
    database: Path
    url: str = ""
    process: subprocess.Popen[bytes] | None = None
    extra_env: dict[str, str] = field(default_factory=dict)
    port: int | None = None  # the first port to try
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log = self.workdir / "gateway.log"

    @property
    def env(self) -> dict[str, str]:
        return {**_environment(self.workdir, self.database), **self.extra_env}

    def start(self) -> None:
        for attempt in range(3):  # a free port can be taken between the probe and the bind
            port = self.port if attempt == 0 and self.port else free_port()
            with self.log.open("ab") as out:
                self.process = subprocess.Popen(
                    [str(BIN / "portcullis"), "serve", "--host", "127.0.0.1", "--port", str(port)],
                    cwd=self.workdir,
                    env=self.env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            self.url = f"http://127.0.0.1:{port}"
            if self._wait():
                return
            stop_process(self.process)
        raise RuntimeError(f"the gateway did not start:\n{self.log_tail()}")

    def _wait(self, timeout: float = 60.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                return False
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/healthz", timeout=2).status_code == 200:
                    return True
            time.sleep(0.1)
        return False

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)
            self.process = None

    def log_tail(self, lines: int = 30) -> str:
        if not self.log.exists():
            return ""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


@dataclass
class Outcome:
    ok: bool
    detail: str  # what was sent and what came back; the reason of a failure first


def _lookup(answers: dict[str, Any], path: str) -> Any:
    root, *rest = path.split(".")
    if root not in answers:
        raise ExampleFailed(f"no earlier answer holds {root!r} (known: {', '.join(sorted(answers)) or 'none'})")
    value = answers[root]
    for part in rest:
        if isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        elif isinstance(value, dict) and part in value:
            value = value[part]
        else:
            raise ExampleFailed(f"{path}: nothing at {part!r} in {json.dumps(value)[:300]}")
    return value


def _graphql_errors(output: str) -> list[Any]:
    """The `errors` of every JSON object printed in `output` (answers printed back to back included)."""
    decoder, found, i = json.JSONDecoder(), [], 0
    while (i := output.find("{", i)) != -1:
        try:
            value, end = decoder.raw_decode(output, i)
        except json.JSONDecodeError:
            i += 1
            continue
        if isinstance(value, dict) and value.get("errors"):
            found.append(value["errors"])
        i = end
    return found


class FileRun:
    """The examples of one Markdown file, run in order against one gateway."""

    def __init__(
        self,
        blocks: list[Block],
        workdir: Path,
        database: Path,
        values: Callable[[str], str],
        setup: Setup | None = None,
    ) -> None:
        self.blocks = blocks
        self.setup = setup or Setup()
        self.services: list[subprocess.Popen[bytes]] = []
        self.workdir = workdir
        self.values = values  # `$NAME` sources: the test IdPs and the like, started on first use
        self.gateway: Gateway | None = None
        self.answers: dict[str, Any] = {}
        self.outcomes: dict[int, Outcome] = {}
        self._database = database
        self._token: str | None = None
        self._log = ""

    def close(self) -> None:
        for service in self.services:
            stop_process(service)
        self.services = []
        if self.gateway is not None:
            self.gateway.stop()
            self._log = self.gateway.log_tail()
            self.gateway = None

    def log_tail(self) -> str:
        """The last lines of the gateway's log (kept when it has stopped)."""
        return self.gateway.log_tail() if self.gateway is not None else self._log

    def _gateway(self) -> Gateway:
        if self.gateway is None:
            self.workdir.mkdir(parents=True, exist_ok=True)
            database = self.workdir / "portcullis.db"
            shutil.copyfile(self._database, database)
            for name, target in ((".venv", Path(sys.prefix)), ("examples", ROOT / "examples")):
                with contextlib.suppress(FileExistsError):
                    (self.workdir / name).symlink_to(target)
            self.gateway = Gateway(self.workdir, database)
            if self.setup.upstreams:
                self._upstreams(self.gateway)
            self.gateway.start()
        return self.gateway

    def _upstreams(self, gateway: Gateway) -> None:
        """The page's services on free ports, and a copy of its upstreams file pointing at them."""
        assert self.setup.upstreams is not None
        gateway.port = free_port()
        url = f"http://127.0.0.1:{gateway.port}"
        source = ROOT / self.setup.upstreams
        text = source.read_text()
        for module in self.setup.services:
            port = free_port()
            prefix = module.rsplit(".", 1)[-1].upper()  # examples.orders reads ORDERS_PORT, ORDERS_ISSUER, ...
            env = {**gateway.env, f"{prefix}_PORT": str(port), f"{prefix}_ISSUER": url}
            env[f"{prefix}_JWKS_URL"] = url + "/.well-known/jwks.json"
            with (self.workdir / f"{prefix.lower()}.log").open("ab") as out:
                proc = subprocess.Popen(
                    [sys.executable, "-m", module], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT
                )
            self.services.append(proc)
            wait_port(port)
            text = re.sub(r"http://127\.0\.0\.1:\d+", f"http://127.0.0.1:{port}", text, count=1)
        text = re.sub(r'^schema = "([^"]+)"', lambda m: f'schema = "{source.parent / m.group(1)}"', text, flags=re.M)
        copy = self.workdir / "upstreams.toml"
        copy.write_text(text)
        gateway.extra_env = {"PORTCULLIS_UPSTREAMS_FILE": str(copy), "PORTCULLIS_PUBLIC_URL": url}

    def token(self) -> str:
        if self._token is None:
            body = self.post(LOGIN, {}, {})
            self._token = body["data"]["login"]["accessToken"]
        return self._token

    def post(self, query: str, variables: dict[str, Any], headers: dict[str, str]) -> Any:
        r = httpx.post(
            self._gateway().url + "/graphql", json={"query": query, "variables": variables}, headers=headers, timeout=60
        )
        try:
            body = r.json()
        except ValueError:
            raise ExampleFailed(f"HTTP {r.status_code}, not JSON: {r.text[:500]}") from None
        body["_status"] = r.status_code
        return body

    def run(self, block: Block) -> Outcome:
        """Runs the blocks before `block` that have not run, then `block`; its outcome."""
        for index, earlier in enumerate(self.blocks):
            if index not in self.outcomes:
                self.outcomes[index] = self._run_one(earlier)
            if earlier.line == block.line:
                if len(self.outcomes) == len(self.blocks):
                    self.close()  # the file is done: its gateway is not needed any more
                return self.outcomes[index]
        raise ExampleFailed(f"{block.id}: no such block any more (was the file edited during the run?)")

    def failed_before(self, block: Block) -> list[str]:
        index = next(i for i, b in enumerate(self.blocks) if b.line == block.line)
        return [self.blocks[i].id for i, o in sorted(self.outcomes.items()) if i < index and not o.ok]

    def _run_one(self, block: Block) -> Outcome:
        if block.marker.not_run is not None or block.marker_error is not None:
            return Outcome(True, "not run")
        try:
            if block.lang in SHELL:
                return self._shell(block)
            return self._graphql(block)
        except ExampleFailed as exc:
            return Outcome(False, str(exc))

    def _fill(self, text: str, fills: tuple[Fill, ...], quoted: bool) -> str:
        for fill in fills:
            if fill.placeholder not in text:
                continue  # another operation of the block holds it
            value = self._value(fill.source[1:]) if fill.source.startswith("$") else _lookup(self.answers, fill.source)
            if quoted:
                text = text.replace(json.dumps(fill.placeholder, ensure_ascii=False), json.dumps(value))
            else:
                text = text.replace(fill.placeholder, value if isinstance(value, str) else json.dumps(value))
        return text

    def _value(self, name: str) -> Any:
        if name == "CALLER_NETWORK":  # where the examples call from
            return "127.0.0.0/8"
        if name == "OWNER_ID":  # the demo owner's user id, in this file's database
            return self.post("{ me { user { id } } }", {}, self._headers("owner"))["data"]["me"]["user"]["id"]
        return self.values(name)

    def _headers(self, caller: str) -> dict[str, str]:
        if caller == "anonymous":
            return {}
        if caller.startswith("key "):
            return {"X-API-Key": str(_lookup(self.answers, caller[4:]))}
        return {"Authorization": f"Bearer {self.token()}"}

    def _graphql(self, block: Block) -> Outcome:
        try:
            document = parse(block.text)
        except GraphQLSyntaxError as exc:
            raise ExampleFailed(
                f"not valid GraphQL: {exc.message} at {exc.locations} (SDL or output? tag it differently, or mark it "
                "`<!-- example: not run (reason) -->`)"
            ) from None
        fragments = "\n".join(
            block.text[d.loc.start : d.loc.end]
            for d in document.definitions
            if not isinstance(d, OperationDefinitionNode) and d.loc is not None
        )
        variables = block.marker.variables
        if block.marker.variables_below:
            if block.json_below is None:
                raise ExampleFailed("`variables below`, but no ```json block follows within a few lines")
            variables = json.loads(block.json_below)
        operations = [d for d in document.definitions if isinstance(d, OperationDefinitionNode)]
        if not operations:
            raise ExampleFailed("no operation in this block (SDL or a fragment? mark it `not run (reason)`)")
        transcript, expected_seen = [], False
        for op in operations:
            assert op.loc is not None
            query = self._fill(block.text[op.loc.start : op.loc.end], block.marker.fills, quoted=True)
            if fragments:
                query += "\n" + fragments
            body = self.post(query, variables, self._headers(block.marker.caller))
            status = body.pop("_status")
            transcript.append(f"> {query}\n< HTTP {status} {json.dumps(body)[:2000]}")
            codes = {str((e.get("extensions") or {}).get("code")) for e in body.get("errors") or []}
            if codes - block.marker.expect or (status != 200 and not block.marker.expect):
                detail = "\n".join(transcript)
                raise ExampleFailed(f"the operation answered errors {sorted(codes)}:\n{detail}")
            expected_seen |= bool(codes)
            for key, value in (body.get("data") or {}).items():
                if value is not None:
                    self.answers[key] = value
        if block.marker.expect and not expected_seen:
            raise ExampleFailed(f"expected {sorted(block.marker.expect)}, got none:\n" + "\n".join(transcript))
        return Outcome(True, "\n".join(transcript))

    def _shell(self, block: Block) -> Outcome:
        gateway = self._gateway()
        script = console_commands(block.text) if block.lang == "console" else block.text
        for doc_url in DOC_URLS:
            script = script.replace(doc_url, gateway.url)
        script = self._fill(script, block.marker.fills, quoted=False)
        env = gateway.env
        env["TOKEN"] = self.token()
        prelude = 'set -euo pipefail\ncurl() { command curl --fail-with-body "$@"; }\n'
        # a session of its own, so that a timeout ends whatever the block started, not only bash
        proc = subprocess.Popen(
            ["bash", "-c", prelude + script],
            cwd=self.workdir,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            stdout, stderr = proc.communicate(timeout=SHELL_TIMEOUT)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            stdout, stderr = proc.communicate()
            raise ExampleFailed(
                f"still running after {SHELL_TIMEOUT:.0f}s (a server? mark it not run)\n"
                f"--- stdout ---\n{stdout.decode(errors='replace')[-2000:]}\n"
                f"--- stderr ---\n{stderr.decode(errors='replace')[-2000:]}"
            ) from None
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # anything the block left running in the background
        done = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
        out, err = done.stdout.decode(errors="replace"), done.stderr.decode(errors="replace")
        detail = f"$ bash -c {shlex.quote(script)}\n--- stdout ---\n{out[-3000:]}\n--- stderr ---\n{err[-3000:]}"
        if done.returncode != 0:
            raise ExampleFailed(f"exit status {done.returncode}\n{detail}")
        if errors := _graphql_errors(out):
            raise ExampleFailed(f"printed a GraphQL answer with errors {json.dumps(errors)[:500]}\n{detail}")
        return Outcome(True, detail)


@contextlib.contextmanager
def file_runs(root: Path, values: Callable[[str], str]) -> Iterator[Callable[[Block], FileRun]]:
    """A `FileRun` per Markdown file, made on first use under `root`; every gateway stopped at the end."""
    runs: dict[str, FileRun] = {}
    seeded: list[Path] = []

    def run_for(block: Block) -> FileRun:
        from tests.docs_examples import extract, file_setup

        if block.path not in runs:
            if not seeded:
                seed_dir = root / "seed"
                seed_dir.mkdir(parents=True, exist_ok=True)
                seeded.append(seeded_database(seed_dir))
            workdir = root / block.path.replace("/", "_").replace(".", "_")
            path = ROOT / block.path
            runs[block.path] = FileRun(extract(path), workdir, seeded[0], values, file_setup(path))
        return runs[block.path]

    try:
        yield run_for
    finally:
        for run in runs.values():
            run.close()
