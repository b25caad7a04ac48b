"""What every baseline shares: the benchmark queries and reading the organization row."""

from __future__ import annotations

import os

from sqlalchemy import select
from sqlmodel import col

from store.db import Database
from store.models import Organization

QUERY = "{ organization { id slug name plan } }"
# the same query with a field that requires `billing:read` (the demo owner holds it)
GUARDED_QUERY = "{ organization { id slug name plan billingEmail } }"
# an audited mutation that really changes a row: the load alternates it with AUDITED_MUTATION_ALTERNATE, so every
# request updates the organization and (when audited) appends its hash-chained entry in the same transaction
AUDITED_MUTATION = 'mutation { updateOrganization(input: {name: "Acme Corporation"}) { id slug name plan } }'
AUDITED_MUTATION_ALTERNATE = 'mutation { updateOrganization(input: {name: "Acme Corp."}) { id slug name plan } }'
# the `forward` scenario's query: the gateway forwards it to the orders upstream (examples/orders), filling the
# preset `organizationId` from the caller
FORWARD_QUERY = "{ orders(first: 10) { id total status customer } }"
# the `forward-http` scenario's request: a GET the gateway forwards under its prefix to the billing upstream's own
# path (bench/forward_http.py); the upstream loaded directly is sent the path without the prefix
BILLING_PREFIX = "/api/billing"
BILLING_PATH = "/invoices/1"
FORWARD_HTTP_PATH = BILLING_PREFIX + BILLING_PATH
SLUG = "acme"
DATABASE_URL_VARIABLE = "BENCH_DATABASE_URL"

_database: Database | None = None


def database() -> Database:
    """One engine per process, opened on first use from the URL the harness hands in."""
    global _database
    if _database is None:
        _database = Database(os.environ[DATABASE_URL_VARIABLE])
    return _database


async def read_organization() -> Organization:
    """The organization row by slug, in a session of its own (the same engine kind as the gateway)."""
    async with database().session() as session:
        result = await session.execute(select(Organization).where(col(Organization.slug) == SLUG))
        return result.scalar_one()
