"""Load generation with wrk: the request script, one run, and what its report says."""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from bench.servers import BenchError, pin_to

WRK_MISSING = "wrk not found: install wrk: apt-get install wrk"
_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}
_REQUESTS_PER_SECOND = re.compile(r"^Requests/sec:\s+([\d.]+)\s*$", re.MULTILINE)
_PERCENTILE = r"^\s+{}%\s+([\d.]+)(us|ms|s|m)\s*$"
_TOTAL = re.compile(r"^\s+(\d+) requests in ", re.MULTILINE)
_NON_2XX = re.compile(r"Non-2xx or 3xx responses:\s+(\d+)")
_SOCKET_ERRORS = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")


@dataclass(frozen=True)
class Measurement:
    requests_per_second: float
    p50_ms: float
    p99_ms: float


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
    if credential is not None:
        # spaces inside the brackets: `[[[` would open a long string
        lines.append(f"wrk.headers[ {lua_string(credential[0])} ] = {lua_string(credential[1])}")
    if alternate is not None:
        lines += [
            f"local bodies = {{ wrk.body, {lua_string(json.dumps({'query': alternate}))} }}",
            "local n = 0",
            "request = function()",
            "  n = n + 1",
            "  return wrk.format(nil, nil, nil, bodies[n % 2 + 1])",
            "end",
        ]
    path.write_text("\n".join(lines) + "\n")
    return path


def run_wrk(wrk: str, url: str, script: Path, *, connections: int, seconds: int, cpu: int | None) -> str:
    command = [wrk, "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script), url]
    completed = subprocess.run(command, capture_output=True, text=True, check=False,
                               preexec_fn=pin_to(cpu), timeout=seconds + 60)  # type: ignore[arg-type]
    if completed.returncode != 0:
        raise BenchError(f"wrk failed ({completed.returncode}): {completed.stderr or completed.stdout}")
    return completed.stdout


def _milliseconds(output: str, percentile: int) -> float:
    match = re.search(_PERCENTILE.format(percentile), output, re.MULTILINE)
    if match is None:
        raise BenchError(f"no {percentile}th percentile in wrk's report:\n{output}")
    return float(match.group(1)) * _UNITS[match.group(2)]


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


def parse(output: str) -> Measurement:
    check_responses(output)
    rps = _REQUESTS_PER_SECOND.search(output)
    if rps is None:
        raise BenchError(f"no Requests/sec in wrk's report:\n{output}")
    return Measurement(float(rps.group(1)), _milliseconds(output, 50), _milliseconds(output, 99))
