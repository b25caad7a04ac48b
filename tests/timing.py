"""Where the suite's time goes: after a run, the modules that took longest (setup, call and teardown of their
tests, summed). With pytest-xdist the sums are over all workers, so they add up to more than the wall time.

Under pytest-xdist (`make test`: `--dist loadfile --no-loadscope-reorder`) the modules are handed to the
workers in collection order, one module at a time: the modules with a test marked `slow` come first, so
that none of them starts last and keeps one worker busy long after the others have finished.
"""

from __future__ import annotations

import os
from collections import defaultdict

import pytest

MODULES_SHOWN = 30

_totals: defaultdict[str, float] = defaultdict(float)
_counts: defaultdict[str, int] = defaultdict(int)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if "PYTEST_XDIST_WORKER" not in os.environ:
        return
    slow = {_module(item.nodeid) for item in items if item.get_closest_marker("slow")}
    # a stable sort: each module's tests stay together and in their order
    items.sort(key=lambda item: _module(item.nodeid) not in slow)


def _module(nodeid: str) -> str:
    return nodeid.split("::", 1)[0]


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    module = _module(report.nodeid)
    _totals[module] += report.duration
    if report.when == "call":
        _counts[module] += 1


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _totals:
        return
    terminalreporter.write_sep("=", f"slowest {MODULES_SHOWN} modules (seconds, tests)")
    for module, seconds in sorted(_totals.items(), key=lambda kv: -kv[1])[:MODULES_SHOWN]:
        terminalreporter.write_line(f"{seconds:9.1f}s {_counts[module]:5d}  {module}")
    terminalreporter.write_line(f"{sum(_totals.values()):9.1f}s {sum(_counts.values()):5d}  in all")
