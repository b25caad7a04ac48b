"""The `forward-http` scenario's own pieces: the billing upstream (a dependency-free Node server answering
`GET /invoices/1` with one fixed invoice, `bench/upstream/billing.mjs`) and the upstreams file that declares it
to the gateway as an HTTP upstream with one route.

The gateway matches `GET /api/billing/invoices/1` against the route `/invoices/{id}`, admits it at the route's
cost, decides its rule (`billing:read`, which the demo owner holds) and forwards `GET /invoices/1` with a
context token; the upstream answers `INVOICE` whoever calls, and the gateway streams the answer back as it is.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

from bench.apps.common import BILLING_PREFIX
from bench.servers import RunningServer, ServerSpec, running

UPSTREAM_SCRIPT = Path(__file__).resolve().parent / "upstream" / "billing.mjs"

INVOICE: dict[str, object] = {
    "id": "inv-1",
    "customer": "Ada Lovelace",
    "amount": 125.5,
    "currency": "EUR",
    "status": "PAID",
}

# the route of the scenario, pointed at the bench's upstream; `billing:read` is a built-in permission
UPSTREAMS = """\
[[http_upstream]]
name = "billing"
url = "{url}"
prefix = "{prefix}"
timeout_seconds = 10

[[http_upstream.route]]
methods = ["GET"]
path = "/invoices/{{id}}"
rule = {{ requires_scopes = [["billing:read"]] }}
cost = 1
"""


@contextlib.contextmanager
def billing_upstream(workdir: Path, *, node: str, cpu: int | None) -> Iterator[RunningServer]:
    """The Node upstream on a free port, pinned to `cpu` (wrk's), answering `INVOICE`; always stopped."""
    invoice_path = workdir / "billing-invoice.json"
    invoice_path.write_text(json.dumps(INVOICE))
    spec = ServerSpec("billing-upstream", str(UPSTREAM_SCRIPT), "", kind="upstream", upstream="billing")
    with running(
        spec,
        env=dict(os.environ),
        workdir=workdir,
        cpu=cpu,
        command=lambda port: [node, str(UPSTREAM_SCRIPT), str(port), str(invoice_path)],
    ) as server:
        yield server


def write_upstreams_file(workdir: Path, upstream: RunningServer) -> Path:
    """The upstreams file the gateway reads (`PORTCULLIS_UPSTREAMS_FILE`): the billing route alone."""
    path = workdir / "billing-upstreams.toml"
    path.write_text(UPSTREAMS.format(url=upstream.origin, prefix=BILLING_PREFIX))
    return path
