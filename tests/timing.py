"""Where the suite's time goes: after a run, the modules that took longest (setup, call and teardown of their
tests, summed). With pytest-xdist the sums are over all workers, so they add up to more than the wall time."""

from __future__ import annotations

from collections import defaultdict

import pytest

MODULES_SHOWN = 30

_totals: defaultdict[str, float] = defaultdict(float)
_counts: defaultdict[str, int] = defaultdict(int)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    module = report.nodeid.split("::", 1)[0]
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
