"""Load generation with wrk: the request script, one run, and what its report says."""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from bench.servers import BenchError, pin_to

WRK_MISSING = "wrk not found: install wrk: apt-get install wrk"
_SAMPLE = re.compile(r"^portcullis-sample requests=(\d+) duration_us=(\d+) latency_us=([\d:, ]*)$", re.MULTILINE)
_TOTAL = re.compile(r"^\s+(\d+) requests in ", re.MULTILINE)
_NON_2XX = re.compile(r"Non-2xx or 3xx responses:\s+(\d+)")
_SOCKET_ERRORS = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")


@dataclass(frozen=True)
class Measurement:
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    # the server's CPU time (its process and its children, every thread) per request served, in microseconds:
    # what a request costs the server, far steadier from one run to the next than its throughput
    cpu_us_per_request: float | None = None


@dataclass(frozen=True)
class Sample:
    """One wrk run: how many requests completed, over how long, and every latency (microseconds: count)."""

    requests: int
    duration_us: int
    latencies: Counter[int]
    cpu_seconds: float | None = None  # the server's CPU time over the run (`process_cpu_seconds`)


# wrk's `done` hook prints the run's whole latency histogram, so that runs can be merged exactly
_DONE = """
done = function(summary, latency, requests)
  local parts = {}
  for i = 1, #latency do
    local value, count = latency(i)
    parts[#parts + 1] = string.format("%d:%d", value, count)
  end
  io.write(string.format("portcullis-sample requests=%d duration_us=%d latency_us=%s\\n",
                         summary.requests, summary.duration, table.concat(parts, ",")))
end
"""


def lua_string(value: str) -> str:
    """A Lua long-bracket literal holding `value` verbatim."""
    level = 0
    while f"]{'=' * level}]" in value:
        level += 1
    return f"[{'=' * level}[{value}]{'=' * level}]"


def write_script(path: Path, query: str, credential: tuple[str, str] | None, alternate: str | None = None) -> Path:
    """A wrk script POSTing `query`, with the credential header when there is one; with `alternate`, every
    other request posts that one instead (a mutation that changes a row back and forth)."""
    lines = [
        'wrk.method = "POST"',
        f"wrk.body = {lua_string(json.dumps({'query': query}))}",
        'wrk.headers["Content-Type"] = "application/json"',
    ]
    lines += _credential(credential)
    if alternate is not None:
        lines += [
            f"local bodies = {{ wrk.body, {lua_string(json.dumps({'query': alternate}))} }}",
            "local n = 0",
            "request = function()",
            "  n = n + 1",
            "  return wrk.format(nil, nil, nil, bodies[n % 2 + 1])",
            "end",
        ]
    path.write_text("\n".join(lines) + "\n" + _DONE)
    return path


def write_get_script(path: Path, credential: tuple[str, str] | None) -> Path:
    """A wrk script sending GETs (of the path in wrk's URL), with the credential header when there is one."""
    path.write_text("\n".join(['wrk.method = "GET"', *_credential(credential)]) + "\n" + _DONE)
    return path


def _credential(credential: tuple[str, str] | None) -> list[str]:
    if credential is None:
        return []
    # spaces inside the brackets: `[[[` would open a long string
    return [f"wrk.headers[ {lua_string(credential[0])} ] = {lua_string(credential[1])}"]


def run_wrk(wrk: str, url: str, script: Path, *, connections: int, seconds: int, cpu: int | None) -> str:
    command = [wrk, "-t1", f"-c{connections}", f"-d{seconds}s", "-s", str(script), url]
    completed = subprocess.run(
        command, capture_output=True, text=True, check=False, preexec_fn=pin_to(cpu), timeout=seconds + 60
    )
    if completed.returncode != 0:
        raise BenchError(f"wrk failed ({completed.returncode}): {completed.stderr or completed.stdout}")
    return completed.stdout


def check_responses(output: str) -> None:
    """Fail loudly on any non-2xx response, socket error or empty run."""
    non_2xx = _NON_2XX.search(output)
    if non_2xx and int(non_2xx.group(1)) > 0:
        raise BenchError(f"{non_2xx.group(1)} responses were not 2xx:\n{output}")
    errors = _SOCKET_ERRORS.search(output)
    if errors and any(int(n) for n in errors.groups()):
        raise BenchError(f"wrk saw socket errors:\n{output}")
    total = _TOTAL.search(output)
    if total is None or int(total.group(1)) == 0:
        raise BenchError(f"wrk completed no request:\n{output}")


def parse(output: str) -> Sample:
    check_responses(output)
    match = _SAMPLE.search(output)
    if match is None:
        raise BenchError(f"no latency histogram in wrk's report:\n{output}")
    latencies: Counter[int] = Counter()
    for pair in filter(None, match.group(3).split(",")):
        value, count = pair.split(":")
        latencies[int(value)] += int(count)
    return Sample(int(match.group(1)), int(match.group(2)), latencies)


def percentile(latencies: Counter[int], p: float) -> float:
    """The smallest latency (microseconds) that at least p percent of the requests did not exceed."""
    total = sum(latencies.values())
    rank = max(1, -(-total * p // 100))  # ceil without floats drifting at the boundaries
    seen = 0
    for value in sorted(latencies):
        seen += latencies[value]
        if seen >= rank:
            return float(value)
    raise BenchError("percentile of an empty histogram")


def combine(samples: Iterable[Sample]) -> Measurement:
    """Runs of one server merged as if they were one: every request counted once, percentiles over all."""
    samples = list(samples)
    latencies: Counter[int] = Counter()
    for sample in samples:
        latencies.update(sample.latencies)
    requests = sum(s.requests for s in samples)
    seconds = sum(s.duration_us for s in samples) / 1e6
    if requests == 0 or seconds <= 0:
        raise BenchError("no request was measured")
    cpu = None
    if all(s.cpu_seconds is not None for s in samples):
        cpu = sum(s.cpu_seconds or 0.0 for s in samples) / requests * 1e6
    return Measurement(requests / seconds, percentile(latencies, 50) / 1000, percentile(latencies, 99) / 1000, cpu)


_TICKS = os.sysconf("SC_CLK_TCK")


def process_cpu_seconds(pid: int) -> float | None:
    """The CPU time (user and system, every thread) of a process and of its living descendants, from /proc;
    None where /proc cannot tell (another system, a process gone)."""
    total = 0.0
    pending = [pid]
    try:
        while pending:
            current = pending.pop()
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / _TICKS  # utime and stime, fields 14 and 15
            for task in Path(f"/proc/{current}/task").iterdir():
                children = (task / "children").read_text().split()
                pending.extend(int(c) for c in children)
    except (OSError, ValueError, IndexError):
        return None
    return total
