"""`python -m bench`: prepare the database, measure each server in turn, print what was measured."""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

from bench import database, load, report, servers
from bench.load import Measurement
from bench.servers import SERVER_NAMES, SERVERS, BenchError, RunningServer, ServerSpec
from identity.tokens import generate_private_key_pem

DEFAULT_DURATION = 10
DEFAULT_WARMUP = 3
DEFAULT_CONNECTIONS = "1,32"


def _names(value: str) -> list[str]:
    names = [n.strip() for n in value.split(",") if n.strip()]
    unknown = sorted(set(names) - set(SERVER_NAMES))
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown server(s) {unknown}; choose from {', '.join(SERVER_NAMES)}")
    return names


def _counts(value: str) -> list[int]:
    try:
        counts = [int(c) for c in value.split(",") if c.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError("connections: a comma-separated list of integers") from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError("connections must be positive")
    return counts


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return number


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--duration", type=_positive, default=DEFAULT_DURATION, help="seconds per wrk run (10)")
    p.add_argument("--warmup", type=int, default=DEFAULT_WARMUP, help="seconds of warm-up per server (3)")
    p.add_argument("--connections", type=_counts, default=_counts(DEFAULT_CONNECTIONS),
                   help="comma-separated connection counts (1,32)")
    p.add_argument("--only", type=_names, default=list(SERVER_NAMES),
                   help=f"comma-separated servers among {', '.join(SERVER_NAMES)}")
    p.add_argument("--runs", type=_positive, default=1, help="repeat every measurement and take the median")
    p.add_argument("--no-pin", action="store_true", help="do not pin the server and wrk to separate CPUs")
    return p


def cpus(pin: bool) -> tuple[int | None, int | None]:
    """(server CPU, wrk CPU): two distinct CPUs when there are two, otherwise no pinning."""
    if not pin or not hasattr(os, "sched_getaffinity"):
        return None, None
    available = sorted(os.sched_getaffinity(0))
    return (available[0], available[1]) if len(available) >= 2 else (None, None)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class Bench:
    def __init__(self, args: argparse.Namespace, wrk: str, workdir: Path) -> None:
        self.args = args
        self.wrk = wrk
        self.workdir = workdir
        self.server_cpu, self.wrk_cpu = cpus(not args.no_pin)
        self.db = database.prepare(workdir)
        self.expected = database.expected_response(self.db)
        self.env = servers.server_environment(self.db.url, generate_private_key_pem())

    def measure_all(self) -> report.Results:
        runs: dict[tuple[str, int], list[Measurement]] = defaultdict(list)
        specs = [s for s in SERVERS if s.name in self.args.only]
        for run in range(1, self.args.runs + 1):
            for spec in specs:
                for connections, measurement in self.measure_server(spec, run):
                    runs[(spec.name, connections)].append(measurement)
        return {key: report.median(values) for key, values in runs.items()}

    def measure_server(self, spec: ServerSpec, run: int) -> list[tuple[int, Measurement]]:
        with servers.running(spec, env=self.env, workdir=self.workdir, cpu=self.server_cpu) as server:
            token = self._token(server)
            servers.check_answer(server, token, self.expected)
            script = load.write_script(self.workdir / f"{spec.name}.lua", token)
            self._wrk(server, script, max(self.args.connections), self.args.warmup)
            measured = []
            for connections in self.args.connections:
                m = load.parse(self._wrk(server, script, connections, self.args.duration))
                log(f"run {run}/{self.args.runs} {spec.name:<20} c={connections:<3} "
                    f"{m.requests_per_second:>9.1f} req/s  p50 {m.p50_ms:.2f} ms  p99 {m.p99_ms:.2f} ms")
                measured.append((connections, m))
            servers.check_answer(server, token, self.expected)
            return measured

    def _token(self, server: RunningServer) -> str | None:
        if not server.spec.authenticated:
            return None
        return servers.login(server, database.DEMO_OWNER, database.DEMO_PASSWORD, database.DEMO_ORG)

    def _wrk(self, server: RunningServer, script: Path, connections: int, seconds: int) -> str:
        if seconds <= 0:
            return ""
        output = load.run_wrk(self.wrk, server.url, script, connections=connections, seconds=seconds,
                              cpu=self.wrk_cpu)
        load.check_responses(output)
        return output


def print_report(args: argparse.Namespace, bench: Bench, results: report.Results) -> None:
    where = (f"server on CPU {bench.server_cpu}, wrk on CPU {bench.wrk_cpu}" if bench.server_cpu is not None
             else "unpinned")
    print(f"\nPortcullis bench: {os.cpu_count()} CPUs, Python {platform.python_version()}, {where}; "
          f"wrk -t1 -d{args.duration}s, median of {args.runs} run(s)")
    print(f"query: {load.QUERY}\n")
    for block in (report.table(results, args.only, args.connections),
                  report.ratios(results, args.only, args.connections),
                  report.target(results)):
        if block:
            print("\n".join(block) + "\n")


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    wrk = shutil.which("wrk")
    if wrk is None:
        print(load.WRK_MISSING, file=sys.stderr)
        return 2
    try:
        with tempfile.TemporaryDirectory(prefix="portcullis-bench-") as tmp:
            bench = Bench(args, wrk, Path(tmp))
            results = bench.measure_all()
            print_report(args, bench, results)
    except BenchError as error:
        print(f"bench: {error}", file=sys.stderr)
        return 1
    return 0
