"""`python -m bench.audit_seed`: a database holding a million audit entries, and how fast the first page
of `auditLogs` answers on it.

    python -m bench.audit_seed --database-url postgresql+psycopg://... [--entries 1000000] [--tenants 10]
    python -m bench.audit_seed --temporary-postgres          # starts a throwaway PostgreSQL (needs pg_ctl)

The entries are real ones: chained per tenant exactly as the gateway chains them (`store.audit`), written
with COPY on PostgreSQL, then checked by the verifier on one chain. The measurement runs the resolver's
own query (`resolvers.audit.query_entries`: first page, newest first, with a filter) `--samples` times per
filter and prints p50 and p95.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import statistics
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

from sqlalchemy import bindparam, create_engine, text

from resolvers.audit import AuditFilter, query_entries
from store import audit
from store.db import Database, is_sqlite, sync_url
from store.migrate import upgrade
from store.models import new_id
from store.types import UtcDateTime

ACTIONS = [
    "authn_login_success",
    "authn_login_success",
    "authn_login_success",
    "authn_token_refresh",
    "authn_token_refresh",
    "authn_login_fail",
    "authn_logout",
    "org_updated",
    "member_added",
    "authz_change",
    "apikey_created",
    "apikey_revoked",
    "privilege_permissions_changed",
    "authz_fail",
    "authz_cross_tenant",
    "apikey_use_denied",
    "excess_rate_limit_exceeded",
]
COLUMNS = [
    "id",
    "chain",
    "sequence",
    "organization_id",
    "at",
    "actor_type",
    "actor_id",
    "action",
    "resource_type",
    "resource_id",
    "result",
    "request_id",
    "ip",
    "user_agent",
    "details",
    "previous_hash",
    "hash",
]


def entries(chain: str, count: int, rng: random.Random, start: datetime) -> Iterator[tuple[object, ...]]:
    """A chain of `count` entries, hashed as `store.audit` hashes them (values already clean, so the
    rows are built as plain namespaces rather than ORM objects: a million of those take minutes)."""
    users = [new_id() for _ in range(50)]
    previous = audit.GENESIS_HASH
    step = timedelta(days=90) / count
    for sequence in range(1, count + 1):
        action = rng.choice(ACTIONS)
        result = (
            "denied"
            if action
            in {
                "authn_login_fail",
                "authz_fail",
                "authz_cross_tenant",
                "apikey_use_denied",
                "excess_rate_limit_exceeded",
            }
            else "success"
        )
        entry = SimpleNamespace(
            id=new_id(),
            chain=chain,
            sequence=sequence,
            organization_id=chain,
            at=start + step * sequence,
            actor_type="user",
            actor_id=rng.choice(users),
            action=action,
            resource_type="organization",
            resource_id=chain,
            result=result,
            request_id=new_id(),
            ip=f"198.51.100.{rng.randrange(1, 255)}",
            user_agent="bench/1.0",
            details={"n": sequence},
            previous_hash=previous,
        )
        entry.hash = audit.entry_hash(previous, entry)  # type: ignore[arg-type]
        previous = entry.hash
        yield tuple(getattr(entry, c) if c != "details" else json.dumps(entry.details) for c in COLUMNS)


def seed(url: str, total: int, tenants: int, seed_value: int = 7) -> list[str]:
    """Write `total` entries over `tenants` chains; the chains' ids."""
    rng = random.Random(seed_value)
    chains = [new_id() for _ in range(tenants)]
    per = total // tenants
    start = datetime.now(UTC) - timedelta(days=91)
    engine = create_engine(sync_url(url))
    try:
        with engine.begin() as conn:
            heads = []
            for i, chain in enumerate(chains):
                rows = list(entries(chain, per, rng, start))
                if is_sqlite(url):
                    placeholders = ", ".join(f":{c}" for c in COLUMNS)
                    insert = text(f"INSERT INTO audit_log ({', '.join(COLUMNS)}) VALUES ({placeholders})")
                    conn.execute(
                        insert.bindparams(bindparam("at", type_=UtcDateTime())),
                        [dict(zip(COLUMNS, r, strict=True)) for r in rows],
                    )
                else:
                    cursor = conn.connection.cursor()
                    with cursor.copy(f"COPY audit_log ({', '.join(COLUMNS)}) FROM STDIN") as copy:
                        for row in rows:
                            copy.write_row(row)
                heads.append({"chain": chain, "sequence": per, "hash": rows[-1][-1], "updated_at": rows[-1][4]})
                print(f"chain {i + 1}/{tenants}: {per} entries", file=sys.stderr, flush=True)
            conn.execute(
                text(
                    "INSERT INTO audit_chain_heads (chain, sequence, hash, updated_at) "
                    "VALUES (:chain, :sequence, :hash, :updated_at)"
                ).bindparams(bindparam("updated_at", type_=UtcDateTime())),
                heads,
            )
            if not is_sqlite(url):
                conn.execute(text("ANALYZE audit_log"))
    finally:
        engine.dispose()
    return chains


async def measure(url: str, chain: str, samples: int) -> dict[str, tuple[float, float]]:
    """p50 and p95 in milliseconds of the first page (50 entries) for several filters."""
    some_actor = None
    db = Database(url)
    filters: dict[str, AuditFilter | None] = {}
    try:
        async with db.session() as session:
            first = await query_entries(session, chain, None, 1)
            some_actor = first.edges[0].node.actor_id
            recent = first.edges[0].node.at
        filters = {
            "none": None,
            "action=authz_fail": AuditFilter(action="authz_fail"),
            "result=denied": AuditFilter(result="denied"),
            "result=success": AuditFilter(result="success"),
            "actorId": AuditFilter(actor_id=some_actor),
            "action+last 7 days": AuditFilter(action="authn_login_success", start=recent - timedelta(days=7)),
            "30-60 days ago": AuditFilter(start=recent - timedelta(days=60), end=recent - timedelta(days=30)),
        }
        out = {}
        for name, f in filters.items():
            timings = []
            async with db.session() as session:
                await query_entries(session, chain, f, 50)  # warm the connection and the plan
                for _ in range(samples):
                    started = time.perf_counter()
                    page = await query_entries(session, chain, f, 50)
                    timings.append((time.perf_counter() - started) * 1000)
                    assert len(page.edges) == 50, (name, len(page.edges))
            timings.sort()
            out[name] = (statistics.median(timings), timings[int(len(timings) * 0.95) - 1])
        return out
    finally:
        await db.dispose()


@contextlib.contextmanager
def temporary_postgres() -> Iterator[str]:
    from tests.services import postgres_server

    with postgres_server() as admin:
        engine = create_engine(admin, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.execute(text("CREATE DATABASE audit_bench"))
        engine.dispose()
        yield admin.rsplit("/", 1)[0] + "/audit_bench"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.audit_seed", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--database-url", help="an empty database (migrated here); PostgreSQL for the figure")
    p.add_argument("--temporary-postgres", action="store_true", help="start a throwaway PostgreSQL instead")
    p.add_argument("--entries", type=int, default=1_000_000)
    p.add_argument("--tenants", type=int, default=10)
    p.add_argument("--samples", type=int, default=200)
    args = p.parse_args(argv)
    if not args.database_url and not args.temporary_postgres:
        p.error("give --database-url or --temporary-postgres")
    with contextlib.ExitStack() as stack:
        url = stack.enter_context(temporary_postgres()) if args.temporary_postgres else args.database_url
        upgrade(url)
        started = time.monotonic()
        chains = seed(url, args.entries, args.tenants)
        print(
            f"seeded {args.entries} entries in {args.tenants} chains in {time.monotonic() - started:.0f}s",
            file=sys.stderr,
        )

        async def check() -> bool:
            db = Database(url)
            try:
                async with db.session() as session:
                    return (await audit.verify(session, chains=[chains[0]])).ok
            finally:
                await db.dispose()

        print(f"chain {chains[0]} verifies: {asyncio.run(check())}")
        results = asyncio.run(measure(url, chains[0], args.samples))
        print(
            f"first page of auditLogs (50 entries, one tenant of {args.entries // args.tenants} in a table of "
            f"{args.entries}), {args.samples} samples each:"
        )
        for name, (p50, p95) in results.items():
            print(f"  filter {name:<22} p50 {p50:7.2f} ms   p95 {p95:7.2f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
