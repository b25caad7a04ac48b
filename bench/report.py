"""Medians over runs, the results tables, the ratios and the target checks of the scenarios."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Collection, Iterable

from bench.load import Measurement
from bench.servers import BEFORE

GATEWAY = "gateway"
TARGET_BASELINE = "strawberry-cached"
TARGET_CONNECTIONS = 32
TARGET_THROUGHPUT_RATIO = 0.75
TARGET_P99_RATIO = 1.5
UNENFORCED = "gateway-unenforced"
TARGET_AUTHORIZATION_P50_RATIO = 1.05
API_KEY = "gateway-apikey"
TARGET_API_KEY_THROUGHPUT_RATIO = 0.95
BLOCKLIST = "gateway-blocklist"
TARGET_BLOCKLIST_THROUGHPUT_RATIO = 0.97
ADMISSION = "gateway-redis"
NO_ADMISSION = "gateway-redis-noadmission"
TARGET_ADMISSION_THROUGHPUT_RATIO = 0.80
AUDITED = "gateway"
UNAUDITED = "gateway-noaudit"
TARGET_AUDIT_P50_RATIO = 1.15
FORWARD = "gateway-forward"
FORWARD_REDIS = "gateway-forward-redis"
HIVE = "hive-gateway"
UPSTREAM_DIRECT = "upstream-direct"
TARGET_FORWARD_THROUGHPUT_RATIO = 1.0
TARGET_FORWARD_REDIS_THROUGHPUT_RATIO = 0.8
TARGET_FORWARD_P50_RATIO = 1.0
FORWARD_HTTP = "gateway-forward-http"
FORWARD_HTTP_REDIS = "gateway-forward-http-redis"
BILLING_DIRECT = "billing-direct"
BILLING = (FORWARD_HTTP, FORWARD_HTTP_REDIS, BILLING_DIRECT)  # the servers in front of (or being) that upstream
TARGET_FORWARD_HTTP_RATIO = 1.0

Results = dict[tuple[str, int], Measurement]


def median(runs: list[Measurement]) -> Measurement:
    cpu = [m.cpu_us_per_request for m in runs if m.cpu_us_per_request is not None]
    return Measurement(
        statistics.median(m.requests_per_second for m in runs),
        statistics.median(m.p50_ms for m in runs),
        statistics.median(m.p99_ms for m in runs),
        statistics.median(cpu) if len(cpu) == len(runs) else None,
    )


def _cpu(m: Measurement) -> str:
    return f"{m.cpu_us_per_request:.0f}" if m.cpu_us_per_request is not None else "-"


def table(results: Results, servers: Iterable[str], connections: Iterable[int]) -> list[str]:
    lines = [f"{'server':<27} {'conns':>5} {'req/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'cpu us/req':>10}"]
    for name in servers:
        for c in connections:
            m = results.get((name, c))
            if m is not None:
                lines.append(
                    f"{name:<27} {c:>5} {m.requests_per_second:>10.1f} {m.p50_ms:>8.2f} {m.p99_ms:>8.2f} {_cpu(m):>10}"
                )
    return lines


def ratios(results: Results, servers: Iterable[str], connections: Iterable[int]) -> list[str]:
    lines = ["gateway / baseline     conns  throughput   p99"]
    for name in servers:
        if name == GATEWAY:
            continue
        for c in connections:
            gateway, baseline = results.get((GATEWAY, c)), results.get((name, c))
            if gateway is None or baseline is None:
                continue
            throughput = gateway.requests_per_second / baseline.requests_per_second
            p99 = gateway.p99_ms / baseline.p99_ms
            lines.append(f"{name:<22} {c:>5} {throughput:>10.2f}x {p99:>6.2f}x")
    return lines if len(lines) > 1 else []


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def _check(label: str, value: float, limit: float, ok: Callable[[float, float], bool]) -> str:
    return f"  {label:<44} {value:>5.2f} (limit {limit:.2f})  {_verdict(ok(value, limit))}"


def target(results: Results) -> list[str]:
    gateway = results.get((GATEWAY, TARGET_CONNECTIONS))
    baseline = results.get((TARGET_BASELINE, TARGET_CONNECTIONS))
    header = f"target at {TARGET_CONNECTIONS} connections, against {TARGET_BASELINE}:"
    if gateway is None or baseline is None:
        return [header, f"  not measured (needs {GATEWAY} and {TARGET_BASELINE} at {TARGET_CONNECTIONS})"]
    throughput = gateway.requests_per_second / baseline.requests_per_second
    p99 = gateway.p99_ms / baseline.p99_ms
    return [
        header,
        _check("throughput gateway/baseline >= 0.75", throughput, TARGET_THROUGHPUT_RATIO, lambda v, limit: v >= limit),
        _check("p99 gateway/baseline <= 1.50", p99, TARGET_P99_RATIO, lambda v, limit: v <= limit),
    ]


def authorization_ratios(results: Results, connections: Iterable[int]) -> list[str]:
    """The gateway over the same build without field authorization (above 1: what authorization adds)."""
    lines = [f"{'gateway / ' + UNENFORCED:<30} {'conns':>5} {'throughput':>11} {'p50':>7} {'p99':>7}"]
    for c in connections:
        enforced, unenforced = results.get((GATEWAY, c)), results.get((UNENFORCED, c))
        if enforced is None or unenforced is None:
            continue
        throughput = enforced.requests_per_second / unenforced.requests_per_second
        lines.append(
            f"{'':<30} {c:>5} {throughput:>10.3f}x {enforced.p50_ms / unenforced.p50_ms:>6.3f}x "
            f"{enforced.p99_ms / unenforced.p99_ms:>6.3f}x"
        )
    return lines if len(lines) > 1 else []


def authorization_target(results: Results, connections: Iterable[int]) -> list[str]:
    limit = TARGET_AUTHORIZATION_P50_RATIO
    header = f"target: authorization adds at most {limit - 1:.0%} to p50 ({GATEWAY} / {UNENFORCED}):"
    lines = [header]
    for c in connections:
        enforced, unenforced = results.get((GATEWAY, c)), results.get((UNENFORCED, c))
        if enforced is None or unenforced is None:
            continue
        ratio = enforced.p50_ms / unenforced.p50_ms
        label = f"p50 at {c} connection{'s' if c != 1 else ''}: {enforced.p50_ms:.2f} / {unenforced.p50_ms:.2f} ms"
        lines.append(f"  {label:<44} {ratio:>5.3f} ({ratio - 1:+.1%}, limit {limit:.2f})  {_verdict(ratio <= limit)}")
    if len(lines) == 1:
        lines.append(f"  not measured (needs {GATEWAY} and {UNENFORCED})")
    return lines


def api_key_target(results: Results, connections: Iterable[int]) -> list[str]:
    """API-key requests against Bearer-token requests of the same gateway and query."""
    limit = TARGET_API_KEY_THROUGHPUT_RATIO
    lines = [f"target: API-key throughput at least {limit:.0%} of the Bearer scenario ({API_KEY} / {GATEWAY}):"]
    for c in connections:
        key, bearer = results.get((API_KEY, c)), results.get((GATEWAY, c))
        if key is None or bearer is None:
            continue
        ratio = key.requests_per_second / bearer.requests_per_second
        label = (
            f"req/s at {c} connection{'s' if c != 1 else ''}: {key.requests_per_second:.0f} / "
            f"{bearer.requests_per_second:.0f}; p50 {key.p50_ms:.2f} / {bearer.p50_ms:.2f} ms"
        )
        lines.append(f"  {label:<62} {ratio:>5.3f} (limit {limit:.2f})  {_verdict(ratio >= limit)}")
    if len(lines) == 1:
        lines.append(f"  not measured (needs {GATEWAY} and {API_KEY})")
    return lines


def blocks_target(results: Results, connections: Iterable[int]) -> list[str]:
    """2,000 blocks that do not match against an empty block list: the throughput kept, at every connection
    count (the target: at most 3% less)."""
    limit = TARGET_BLOCKLIST_THROUGHPUT_RATIO
    lines = [f"target: the block check keeps {limit:.0%} of the throughput ({BLOCKLIST} / {GATEWAY}):"]
    for c in connections:
        on, off = results.get((BLOCKLIST, c)), results.get((GATEWAY, c))
        if on is None or off is None:
            continue
        ratio = on.requests_per_second / off.requests_per_second
        label = (
            f"req/s at {c} connection{'s' if c != 1 else ''}: {on.requests_per_second:.0f} / "
            f"{off.requests_per_second:.0f}"
        )
        lines.append(f"  {label:<44} {ratio:>5.3f} (limit {limit:.2f})  {_verdict(ratio >= limit)}")
    if len(lines) == 1:
        lines.append(f"  not measured (needs {BLOCKLIST} and {GATEWAY})")
    return lines


def audit_target(results: Results, connections: Iterable[int]) -> list[str]:
    """The audited mutation against the same build writing no entry: what the entry adds to p50."""
    lines = [
        f"target: the audit entry adds at most {TARGET_AUDIT_P50_RATIO - 1:.0%} to the mutation's p50 at one "
        f"connection ({AUDITED} / {UNAUDITED}):"
    ]
    for c in connections:
        on, off = results.get((AUDITED, c)), results.get((UNAUDITED, c))
        if on is None or off is None:
            continue
        ratio = on.p50_ms / off.p50_ms
        label = f"p50 at {c} connection{'s' if c != 1 else ''}: {on.p50_ms:.2f} / {off.p50_ms:.2f} ms"
        if c == 1:
            lines.append(
                f"  {label:<44} {ratio:>5.3f} (limit {TARGET_AUDIT_P50_RATIO:.2f})  "
                f"{_verdict(ratio <= TARGET_AUDIT_P50_RATIO)}"
            )
        else:
            lines.append(f"  {label:<44} {ratio:>5.3f} (queueing; the target is at 1 connection)")
        throughput = on.requests_per_second / off.requests_per_second
        lines.append(
            f"  req/s at {c} connection{'s' if c != 1 else ''}: {on.requests_per_second:.0f} / "
            f"{off.requests_per_second:.0f} = {throughput:.3f}"
        )
    if len(lines) == 1:
        lines.append(f"  not measured (needs {AUDITED} and {UNAUDITED})")
    return lines


def admission_target(results: Results, connections: Iterable[int]) -> list[str]:
    """Shared mode with admission against the same build without it: the throughput kept at 32 connections
    (a saturated server) is judged; at one connection, what admission adds to p50 is reported."""
    ratio_limit = TARGET_ADMISSION_THROUGHPUT_RATIO
    lines = [
        f"target: admission keeps {ratio_limit:.0%} of the throughput at {TARGET_CONNECTIONS} connections "
        f"({ADMISSION} / {NO_ADMISSION}):"
    ]
    for c in connections:
        on, off = results.get((ADMISSION, c)), results.get((NO_ADMISSION, c))
        if on is None or off is None:
            continue
        ratio = on.requests_per_second / off.requests_per_second
        added = on.p50_ms - off.p50_ms
        label = (
            f"req/s at {c} connection{'s' if c != 1 else ''}: {on.requests_per_second:.0f} / "
            f"{off.requests_per_second:.0f}"
        )
        if c == TARGET_CONNECTIONS:
            lines.append(f"  {label:<44} {ratio:>5.3f} (limit {ratio_limit:.2f})  {_verdict(ratio >= ratio_limit)}")
        else:
            lines.append(f"  {label:<44} {ratio:>5.3f}")
        label = f"p50 at {c} connection{'s' if c != 1 else ''}: {on.p50_ms:.2f} - {off.p50_ms:.2f} ms"
        # at 32 connections p50 is queueing behind a saturated server (connections / throughput)
        lines.append(f"  {label:<44} {added:>+5.2f}{' (queueing)' if c != 1 else ''}")
    if len(lines) == 1:
        lines.append(f"  not measured (needs {ADMISSION} and {NO_ADMISSION})")
    return lines


def against_before(results: Results, servers: Iterable[str], connections: Iterable[int]) -> list[str]:
    """Each server against its `@before` twin, the same server from the build before a change (`--before`):
    throughput, p50 and CPU per request, this build / the one before."""
    lines = ["this build / before         conns  throughput     p50  cpu/req"]
    for name in servers:
        for c in connections:
            now, then = results.get((name, c)), results.get((name + BEFORE, c))
            if now is None or then is None:
                continue
            cpu = (
                f" {now.cpu_us_per_request / then.cpu_us_per_request:>7.3f}x"
                if now.cpu_us_per_request and then.cpu_us_per_request
                else ""
            )
            lines.append(
                f"{name:<27} {c:>5} {now.requests_per_second / then.requests_per_second:>10.3f}x "
                f"{now.p50_ms / then.p50_ms:>6.3f}x{cpu}"
            )
    return lines if len(lines) > 1 else []


def forward_ratios(
    results: Results,
    servers: Iterable[str],
    connections: Iterable[int],
    *,
    direct: str = UPSTREAM_DIRECT,
    behind: Collection[str] | None = None,
) -> list[str]:
    """Each server against Hive Gateway (throughput above 1: faster; p50, p99 and CPU per request below 1:
    faster), and the share of the upstream's own throughput (`direct`, loaded directly) that each keeps: each of
    `behind`, the servers in front of that upstream (all of them when None)."""
    share_header = f"of {direct}"
    width = len(share_header) + 1
    lines = [
        f"{'against ' + HIVE:<27} {'conns':>5} {'throughput':>11} {'p50':>7} {'p99':>7} {'cpu/req':>8} "
        f"{share_header:>{width}}"
    ]
    for name in servers:
        if name == HIVE:
            continue
        for c in connections:
            m, hive, alone = results.get((name, c)), results.get((HIVE, c)), results.get((direct, c))
            if m is None or hive is None:
                continue
            share = ""
            if alone is not None and (behind is None or name in behind):
                share = f"{m.requests_per_second / alone.requests_per_second:.1%}"
            cpu = "-"
            if m.cpu_us_per_request and hive.cpu_us_per_request:
                cpu = f"{m.cpu_us_per_request / hive.cpu_us_per_request:.2f}x"
            lines.append(
                f"{name:<27} {c:>5} {m.requests_per_second / hive.requests_per_second:>10.2f}x "
                f"{m.p50_ms / hive.p50_ms:>6.2f}x {m.p99_ms / hive.p99_ms:>6.2f}x {cpu:>8} {share:>{width}}".rstrip()
            )
    return lines if len(lines) > 1 else []


def forward_target(results: Results) -> list[str]:
    """The gateway's forward against Hive Gateway's: throughput at 32 connections (embedded and shared mode)
    and p50 at one connection."""
    lines = [f"targets against {HIVE} (measured, not enforced):"]
    hive = results.get((HIVE, TARGET_CONNECTIONS))
    for name, limit in (
        (FORWARD, TARGET_FORWARD_THROUGHPUT_RATIO),
        (FORWARD_REDIS, TARGET_FORWARD_REDIS_THROUGHPUT_RATIO),
    ):
        m = results.get((name, TARGET_CONNECTIONS))
        if m is None or hive is None:
            lines.append(f"  {name} req/s at {TARGET_CONNECTIONS} connections: not measured (needs {name} and {HIVE})")
            continue
        ratio = m.requests_per_second / hive.requests_per_second
        label = f"{name} req/s at {TARGET_CONNECTIONS}: {m.requests_per_second:.0f} / {hive.requests_per_second:.0f}"
        lines.append(f"  {label:<56} {ratio:>5.2f} (at least {limit:.2f})  {_verdict(ratio >= limit)}")
    on, off = results.get((FORWARD, 1)), results.get((HIVE, 1))
    if on is None or off is None:
        lines.append(f"  {FORWARD} p50 at 1 connection: not measured (needs {FORWARD} and {HIVE})")
    else:
        ratio = on.p50_ms / off.p50_ms
        label = f"{FORWARD} p50 at 1 connection: {on.p50_ms:.2f} / {off.p50_ms:.2f} ms"
        limit = TARGET_FORWARD_P50_RATIO
        lines.append(f"  {label:<56} {ratio:>5.2f} (at most {limit:.2f})  {_verdict(ratio <= limit)}")
    return lines


def forward_http_target(results: Results, connections: Iterable[int]) -> list[str]:
    """A GET forwarded to an HTTP route against the GraphQL forward, measured side by side in the same run:
    throughput at 32 connections judged (an HTTP route is less work than a GraphQL operation); at other
    connection counts, and p50 at one connection, reported."""
    limit = TARGET_FORWARD_HTTP_RATIO
    lines = [f"target against {FORWARD} (measured, not enforced):"]
    for c in connections:
        m, graphql = results.get((FORWARD_HTTP, c)), results.get((FORWARD, c))
        if m is None or graphql is None:
            continue
        ratio = m.requests_per_second / graphql.requests_per_second
        label = f"{FORWARD_HTTP} req/s at {c}: {m.requests_per_second:.0f} / {graphql.requests_per_second:.0f}"
        verdict = f" (at least {limit:.2f})  {_verdict(ratio >= limit)}" if c == TARGET_CONNECTIONS else ""
        lines.append(f"  {label:<56} {ratio:>5.2f}{verdict}")
        if c == 1:
            label = f"{FORWARD_HTTP} p50 at 1 connection: {m.p50_ms:.2f} / {graphql.p50_ms:.2f} ms"
            lines.append(f"  {label:<56} {m.p50_ms / graphql.p50_ms:>5.2f}")
    if (FORWARD_HTTP, TARGET_CONNECTIONS) not in results or (FORWARD, TARGET_CONNECTIONS) not in results:
        lines.append(
            f"  {FORWARD_HTTP} req/s at {TARGET_CONNECTIONS} connections: not measured "
            f"(needs {FORWARD_HTTP} and {FORWARD})"
        )
    return lines
