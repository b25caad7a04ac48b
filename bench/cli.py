"""`python -m bench`: prepare the database, measure each server in turn, print what was measured."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import platform
import shutil
import signal
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

from bench import database, forward, forward_http, load, report, servers
from bench.load import Measurement
from bench.servers import (
    SCENARIO_NAMES,
    SCENARIOS,
    SERVER_NAMES,
    SERVERS,
    BenchError,
    RunningServer,
    Scenario,
    ServerSpec,
)
from gateway.cli import DEMO_ORG, DEMO_OWNER, DEMO_PASSWORD
from identity.tokens import generate_private_key_pem

DEFAULT_DURATION = 10
DEFAULT_WARMUP = 3
DEFAULT_SLICE = 1
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


def _checkout(value: str) -> Path:
    path = Path(value).resolve()
    if not (path / "gateway" / "app.py").is_file():
        raise argparse.ArgumentTypeError(f"{value} is not a checkout of the gateway")
    return path


def _scenarios(value: str) -> list[str]:
    if value == "all":
        return list(SCENARIO_NAMES)
    names = [name.strip() for name in value.split(",") if name.strip()]
    for name in names:
        if name not in SCENARIO_NAMES:
            raise argparse.ArgumentTypeError(f"unknown scenario {name!r}; choose from {', '.join(SCENARIO_NAMES)}, all")
    if not names:
        raise argparse.ArgumentTypeError("name at least one scenario")
    return names


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument(
        "--scenario",
        type=_scenarios,
        default=list(SCENARIO_NAMES),
        metavar="basic|guarded|apikey|admission|blocks|audited|forward|forward-http|all",
        help="basic: the gateway against three baselines; guarded: a field that requires a "
        "permission, with and without field authorization; apikey: Bearer against API key; "
        "admission: shared mode (Redis) with and without admission; blocks: an empty block list against "
        "2,000 blocks that do not match; audited: an audited "
        "mutation; forward: a query forwarded to a GraphQL upstream, against GraphQL Hive Gateway "
        "(needs node); forward-http: a GET forwarded to an HTTP upstream's route, against the GraphQL "
        "forward and Hive Gateway (needs node); all (default): every one; several: comma-separated",
    )
    p.add_argument(
        "--duration",
        type=_positive,
        default=DEFAULT_DURATION,
        help="seconds of load per server and connection count (10)",
    )
    p.add_argument(
        "--slice",
        type=_positive,
        default=DEFAULT_SLICE,
        help="the servers of a scenario take turns under load for this many seconds at a time (1)",
    )
    p.add_argument("--warmup", type=int, default=DEFAULT_WARMUP, help="seconds of warm-up per server (3)")
    p.add_argument(
        "--connections",
        type=_counts,
        default=_counts(DEFAULT_CONNECTIONS),
        help="comma-separated connection counts (1,32)",
    )
    p.add_argument(
        "--only",
        type=_names,
        default=list(SERVER_NAMES),
        help=f"restrict each scenario to these servers, among {', '.join(SERVER_NAMES)}",
    )
    p.add_argument("--runs", type=_positive, default=1, help="repeat every measurement and take the median")
    p.add_argument(
        "--before",
        type=_checkout,
        metavar="DIR",
        help="also run each server from the checkout in DIR (the build before a change, e.g. a git "
        "worktree), side by side with this checkout's, and report each server's ratios to it",
    )
    p.add_argument("--no-pin", action="store_true", help="do not pin the server and wrk to separate CPUs")
    p.add_argument(
        "--redis-cpu",
        choices=("server", "wrk"),
        default="server",
        help="the CPU the bench's Redis is pinned to (shared mode): the gateway's (default; its work "
        "counts against the gateway's CPU, and no idle CPU has to wake for each call) or wrk's",
    )
    where = p.add_mutually_exclusive_group()
    where.add_argument(
        "--postgres",
        action="store_true",
        help="serve every scenario from a throwaway PostgreSQL of the benchmark's own (default "
        "durability; needs the PostgreSQL server binaries) instead of a SQLite file",
    )
    where.add_argument(
        "--database-url",
        metavar="URL",
        help="serve every scenario from this empty PostgreSQL database (migrated and seeded here)",
    )
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
    def __init__(self, args: argparse.Namespace, wrk: str, workdir: Path, database_url: str | None = None) -> None:
        self.args = args
        self.wrk = wrk
        self.workdir = workdir
        self.server_cpu, self.wrk_cpu = cpus(not args.no_pin)
        self.db = database.prepare(workdir, database_url)
        self.expected = {
            "basic": database.expected_response(self.db),
            "guarded": database.expected_guarded_response(self.db),
            "apikey": database.expected_response(self.db),
            "admission": database.expected_response(self.db),
            "blocks": database.expected_response(self.db),
            "audited": database.expected_audited_response(self.db),
            "forward": forward.ANSWER,
            "forward-http": forward.ANSWER,
        }
        # what the servers sent a GET (`Scenario.gets`) must answer, by scenario
        self.expected_get: dict[str, object] = {"forward-http": forward_http.INVOICE}
        self.env = servers.server_environment(self.db.url, generate_private_key_pem())
        self.redis_url: str | None = None  # set by `main` when a chosen server runs in shared mode
        # the bench's Node upstreams ("orders", "billing") that a chosen server forwards to (or is), and the
        # upstreams file pointing at each: set by `start_upstreams`
        self.upstreams: dict[str, RunningServer] = {}
        self.upstreams_files: dict[str, Path] = {}
        # servers that cannot run on this machine, and why (`check_node`): left out of their scenario
        self.unavailable: dict[str, str] = {}
        self._credentials: dict[str, servers.Credential | None] = {}
        # the gateway's CPU by default: at one connection the gateway waits for each reply, and Redis runs in
        # that wait; on the other CPU every call first wakes an idle CPU (a cost of the machine, not of
        # admission), and at 32 connections Redis's work is charged to the gateway's CPU, the safe side
        self.redis_cpu = self.server_cpu if args.redis_cpu == "server" else self.wrk_cpu

    def needs_redis(self) -> bool:
        return any(spec.redis for _, specs in self.scenarios() for spec in specs)

    def start_upstreams(self, stack: contextlib.ExitStack) -> None:
        """Start the bench's Node upstreams the chosen servers need, each on wrk's CPU (what it costs to answer
        is the upstream's, not the server's under test), until `stack` closes; write their upstreams files."""
        node = forward.node_binary()
        if node is None:
            return
        needed = {spec.upstream for _, specs in self.scenarios() for spec in specs}
        if "orders" in needed:
            spec = ServerSpec("orders-upstream", str(forward.UPSTREAM_SCRIPT), "", kind="upstream", upstream="orders")
            orders = stack.enter_context(forward.orders_upstream(spec, self.workdir, node=node, cpu=self.wrk_cpu))
            self.upstreams["orders"] = orders
            self.upstreams_files["orders"] = forward.write_upstreams_file(self.workdir, orders.url)
        if "billing" in needed:
            billing = stack.enter_context(forward_http.billing_upstream(self.workdir, node=node, cpu=self.wrk_cpu))
            self.upstreams["billing"] = billing
            self.upstreams_files["billing"] = forward_http.write_upstreams_file(self.workdir, billing)

    def check_node(self) -> None:
        """Leave out what cannot run here: without node, every server of the bench's upstreams (they are Node
        servers); Hive Gateway also when it cannot be installed (`npm ci` in bench/hive/)."""
        chosen = {spec.name: spec for _, specs in self.scenarios() for spec in specs}
        needing_node = [s for s in chosen.values() if s.upstream is not None or s.kind != "uvicorn"]
        if needing_node and forward.node_binary() is None:
            for spec in needing_node:
                self.unavailable[spec.name] = f"the {spec.upstream} upstream is a Node server, and node is not on PATH"
        elif any(s.kind == "hive" for s in chosen.values()):
            if not forward.HIVE_BIN.exists():
                log(f"installing GraphQL Hive Gateway: npm ci in {forward.HIVE_DIR}")
            reason = forward.hive_unavailable()
            if reason is not None:
                for spec in chosen.values():
                    if spec.kind == "hive":
                        self.unavailable[spec.name] = reason
        for name, reason in self.unavailable.items():
            log(f"skipping {name}: {reason}")

    def scenarios(self) -> list[tuple[Scenario, list[ServerSpec]]]:
        """The chosen scenarios, each with its servers (restricted by `--only`); empty ones left out."""
        chosen = []
        by_name = {s.name: s for s in SERVERS}
        for scenario in SCENARIOS:
            specs = [
                by_name[name] for name in scenario.servers if name in self.args.only and name not in self.unavailable
            ]
            if self.args.before is not None:
                # only the Python servers have a build before; the upstream and Hive Gateway are the same
                specs = [
                    twin
                    for s in specs
                    for twin in ((s, servers.before(s, self.args.before)) if s.kind == "uvicorn" else (s,))
                ]
            if scenario.name in self.args.scenario and specs:
                chosen.append((scenario, specs))
        return chosen

    def measure_all(self) -> dict[str, report.Results]:
        runs: dict[tuple[str, str, int], list[Measurement]] = defaultdict(list)
        for run in range(1, self.args.runs + 1):
            for scenario, specs in self.scenarios():
                for (name, connections), measurement in self.measure_scenario(scenario, specs, run).items():
                    runs[(scenario.name, name, connections)].append(measurement)
        results: dict[str, report.Results] = defaultdict(dict)
        for (scenario_name, name, connections), values in runs.items():
            results[scenario_name][(name, connections)] = report.median(values)
        return results

    def measure_scenario(self, scenario: Scenario, specs: list[ServerSpec], run: int) -> report.Results:
        """All of a scenario's servers side by side, loaded in turn for one slice at a time (in the reverse
        order every other slice), so that whatever the machine does meanwhile falls on each of them alike;
        each server's slices are then merged into one measurement."""
        slices = max(1, self.args.duration // self.args.slice)
        with contextlib.ExitStack() as stack:
            loaded: list[tuple[RunningServer, str, Path]] = []  # each server, the URL wrk loads, its script
            for spec in specs:
                server = self._start(spec, stack)
                credential = self._credential(server)
                self._credentials[spec.name] = credential
                self._check(scenario, server)
                script_path = self.workdir / f"{scenario.name}-{spec.name}.lua"
                path = scenario.get_path(spec.name)
                if path is None:
                    script = load.write_script(script_path, scenario.query, credential, scenario.alternate)
                    loaded.append((server, server.url, script))
                else:
                    loaded.append((server, server.origin + path, load.write_get_script(script_path, credential)))
            for server, url, script in loaded:
                self._wrk(server, url, script, max(self.args.connections), self.args.warmup)
            measured: report.Results = {}
            for connections in self.args.connections:
                samples: dict[str, list[load.Sample]] = defaultdict(list)
                for index in range(slices):
                    for server, url, script in loaded if index % 2 == 0 else reversed(loaded):
                        cpu_before = load.process_cpu_seconds(server.process.pid)
                        output = self._wrk(server, url, script, connections, self.args.slice)
                        cpu_after = load.process_cpu_seconds(server.process.pid)
                        sample = load.parse(output)
                        if cpu_before is not None and cpu_after is not None:
                            sample = dataclasses.replace(sample, cpu_seconds=cpu_after - cpu_before)
                        samples[server.spec.name].append(sample)
                for server, _, _ in loaded:
                    m = measured[(server.spec.name, connections)] = load.combine(samples[server.spec.name])
                    log(
                        f"run {run}/{self.args.runs} {scenario.name:<12} {server.spec.name:<26} c={connections:<3} "
                        f"{m.requests_per_second:>9.1f} req/s  p50 {m.p50_ms:.2f} ms  p99 {m.p99_ms:.2f} ms"
                        + (f"  cpu {m.cpu_us_per_request:.0f} us/req" if m.cpu_us_per_request is not None else "")
                    )
            for server, _, _ in loaded:
                self._check(scenario, server)
            return measured

    def _check(self, scenario: Scenario, server: RunningServer) -> None:
        """The server answers its request of the scenario (the query, or a GET) as expected."""
        credential = self._credentials[server.spec.name]
        path = scenario.get_path(server.spec.name)
        if path is None:
            servers.check_answer(server, credential, scenario.query, self.expected[scenario.name])
        else:
            servers.check_get(server, credential, path, self.expected_get[scenario.name])

    def _start(self, spec: ServerSpec, stack: contextlib.ExitStack) -> RunningServer:
        """A server of the scenario, running until `stack` closes; an upstream is the bench's own, started
        once (`start_upstreams`) and shared by the servers that forward to it."""
        if spec.kind == "upstream":
            return dataclasses.replace(self._upstream(spec), spec=spec)  # measured under the scenario's name
        if spec.kind == "hive":
            url = self._upstream(spec).url
            return stack.enter_context(forward.hive_gateway(spec, url, self.workdir, cpu=self.server_cpu))
        return stack.enter_context(
            servers.running(spec, env=self._environment(spec), workdir=self.workdir, cpu=self.server_cpu)
        )

    def _upstream(self, spec: ServerSpec) -> RunningServer:
        upstream = self.upstreams.get(spec.upstream or "")
        if upstream is None:
            raise BenchError(f"{spec.name} needs the {spec.upstream} upstream")
        return upstream

    def _environment(self, spec: ServerSpec) -> dict[str, str]:
        env = dict(self.env)
        if spec.redis:
            if self.redis_url is None:
                raise BenchError(f"{spec.name} needs Redis")
            env["PORTCULLIS_REDIS_URL"] = self.redis_url
        if spec.upstream is not None:
            if spec.upstream not in self.upstreams_files:
                raise BenchError(f"{spec.name} needs the {spec.upstream} upstream")
            env["PORTCULLIS_UPSTREAMS_FILE"] = str(self.upstreams_files[spec.upstream])
        return env

    def _credential(self, server: RunningServer) -> servers.Credential | None:
        if server.spec.credential is None:
            return None
        token = servers.login(server, DEMO_OWNER, DEMO_PASSWORD, DEMO_ORG)
        if server.spec.credential == "apikey":
            return ("x-api-key", servers.create_api_key(server, token))
        return ("authorization", f"Bearer {token}")

    def _wrk(self, server: RunningServer, url: str, script: Path, connections: int, seconds: int) -> str:
        if seconds <= 0:
            return ""
        output = load.run_wrk(self.wrk, url, script, connections=connections, seconds=seconds, cpu=self.wrk_cpu)
        try:
            load.check_responses(output)
        except BenchError as error:
            raise BenchError(f"{server.spec.name}, {connections} connections: {error}\n{server.log_tail()}") from None
        return output


def print_report(args: argparse.Namespace, bench: Bench, results: dict[str, report.Results]) -> None:
    where = (
        f"server on CPU {bench.server_cpu}, wrk on CPU {bench.wrk_cpu}" if bench.server_cpu is not None else "unpinned"
    )
    store = "PostgreSQL" if bench.db.url.startswith("postgresql") else "SQLite"
    if bench.redis_url is not None:
        where += f", Redis on CPU {bench.redis_cpu}" if bench.redis_cpu is not None else ", Redis unpinned"
    slices = max(1, args.duration // args.slice)
    print(
        f"\nPortcullis bench: {os.cpu_count()} CPUs, Python {platform.python_version()}, {where}; "
        f"wrk -t1, each server {slices} x {args.slice}s in turns with the others, median of {args.runs} "
        f"run(s); database: {store}"
    )
    for scenario, specs in bench.scenarios():
        names = [s.name for s in specs]
        scenario_results = results.get(scenario.name, {})
        alternating = f"\n   alternating with: {scenario.alternate}" if scenario.alternate else ""
        gets = "".join(f"\n{name}: GET {path}" for name, path in scenario.gets if name in names)
        print(f"\nscenario {scenario.name}: {scenario.description}\nquery: {scenario.query}{alternating}{gets}\n")
        blocks: tuple[list[str], ...]
        if scenario.name == "guarded":
            blocks = (
                report.table(scenario_results, names, args.connections),
                report.authorization_ratios(scenario_results, args.connections),
                report.authorization_target(scenario_results, args.connections),
            )
        elif scenario.name == "admission":
            blocks = (
                report.table(scenario_results, names, args.connections),
                report.admission_target(scenario_results, args.connections),
            )
        elif scenario.name == "audited":
            entries, ok = database.audit_entries(bench.db)
            blocks = (
                report.table(scenario_results, names, args.connections),
                report.audit_target(scenario_results, args.connections),
                [f"audit entries written: {entries}; chains verify: {'yes' if ok else 'NO'}"],
            )
        elif scenario.name == "forward":
            blocks = (
                report.table(scenario_results, names, args.connections),
                report.forward_ratios(scenario_results, names, args.connections),
                report.forward_target(scenario_results),
            )
        elif scenario.name == "forward-http":
            blocks = (
                report.table(scenario_results, names, args.connections),
                report.forward_ratios(
                    scenario_results, names, args.connections, direct=report.BILLING_DIRECT, behind=report.BILLING
                ),
                report.forward_http_target(scenario_results, args.connections),
            )
        elif scenario.name == "blocks":
            blocks = (
                report.table(scenario_results, names, args.connections),
                report.blocks_target(scenario_results, args.connections),
            )
        elif scenario.name == "apikey":
            blocks = (
                report.table(scenario_results, names, args.connections),
                report.api_key_target(scenario_results, args.connections),
            )
        else:
            blocks = (
                report.table(scenario_results, names, args.connections),
                report.ratios(scenario_results, names, args.connections),
                report.target(scenario_results),
            )
        if args.before is not None:
            blocks = (*blocks, report.against_before(scenario_results, names, args.connections))
        for block in blocks:
            if block:
                print("\n".join(block) + "\n")
    for name, reason in bench.unavailable.items():
        print(f"not run: {name}: {reason}")


def _exit_on_sigterm(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds, so the server being measured is stopped too


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    wrk = shutil.which("wrk")
    if wrk is None:
        print(load.WRK_MISSING, file=sys.stderr)
        return 2
    try:
        with tempfile.TemporaryDirectory(prefix="portcullis-bench-") as tmp, contextlib.ExitStack() as databases:
            url = databases.enter_context(database.temporary_postgres()) if args.postgres else args.database_url
            bench = Bench(args, wrk, Path(tmp), url)
            bench.check_node()
            with contextlib.ExitStack() as stack:
                if bench.needs_redis():
                    from bench.redis_server import redis_server

                    bench.redis_url = stack.enter_context(redis_server(cpu=bench.redis_cpu))
                bench.start_upstreams(stack)
                results = bench.measure_all()
            print_report(args, bench, results)
    except BenchError as error:
        print(f"bench: {error}", file=sys.stderr)
        return 1
    return 0
