"""The bench's own measurements: the CPU time a server spends, read from /proc, its children included."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest

from bench.load import Sample, combine, process_cpu_seconds
from bench.report import against_before, median

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="reads /proc")


def test_a_busy_grandchild_counts_while_it_runs() -> None:
    busy = subprocess.Popen(
        [sys.executable, "-c", "import subprocess, sys\nsubprocess.run([sys.executable, '-c', 'while True: pass'])"],
        start_new_session=True,
    )
    try:
        time.sleep(0.5)
        before = process_cpu_seconds(busy.pid)
        time.sleep(1.0)
        after = process_cpu_seconds(busy.pid)
    finally:
        os.killpg(busy.pid, signal.SIGKILL)
        busy.wait()
    assert before is not None
    assert after is not None
    assert after - before > 0.5  # the grandchild's loop, not the parent's wait
    assert process_cpu_seconds(busy.pid) is None  # gone: nothing to read


def test_cpu_per_request_is_combined_and_compared() -> None:
    samples = [
        Sample(1000, 1_000_000, Counter({500: 1000}), cpu_seconds=0.2),
        Sample(3000, 1_000_000, Counter({400: 3000}), cpu_seconds=0.6),
    ]
    m = combine(samples)
    assert m.cpu_us_per_request == pytest.approx(200.0)
    assert combine([Sample(10, 1_000_000, Counter({1: 10}))]).cpu_us_per_request is None
    then = combine([Sample(1000, 1_000_000, Counter({500: 1000}), cpu_seconds=0.4)])
    assert median([m, m, then]).cpu_us_per_request == pytest.approx(200.0)
    lines = against_before({("g", 32): m, ("g@before", 32): then}, ["g"], [32])
    assert lines[1].split()[-1] == "0.500x"
