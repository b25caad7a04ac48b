"""The benchmark database, migrated, holding the demo tenant and its owner: a SQLite file (the embedded
default), or PostgreSQL (`--postgres`: a throwaway server of the benchmark's own; `--database-url`: an
empty database of yours)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from gateway.cli import DEMO_ORG, DEMO_OWNER, DEMO_PASSWORD
from identity.passwords import HashParameters, PasswordHasherService
from resolvers.provisioning import create_tenant
from store.db import Database
from store.migrate import upgrade

DEMO_NAME = "Acme Corporation"
DEMO_PLAN = "professional"
DEMO_BILLING_EMAIL = "billing@acme.test"
LIFTED = ("REQUESTS_PER_MINUTE", "REQUESTS_PER_DAY", "COST_PER_MINUTE")
LIFTED_LIMIT = 10**12


@dataclass(frozen=True)
class BenchDatabase:
    url: str
    organization_id: str


async def _seed(url: str) -> str:
    hasher = PasswordHasherService(HashParameters())
    db = Database(url)
    try:
        async with db.transaction() as session:
            provisioned = await create_tenant(
                session,
                slug=DEMO_ORG,
                name=DEMO_NAME,
                plan=DEMO_PLAN,
                owner_email=DEMO_OWNER,
                password_hash=await hasher.hash(DEMO_PASSWORD),
            )
            # a value rather than null, so that an answer from a denied field cannot pass for it
            provisioned.organization.billing_email = DEMO_BILLING_EMAIL
            # lifted, not removed (what `portcullis org limits acme --set ...` does): the load far exceeds
            # the plan's rates, and every request must still be counted for the admission to be measured
            provisioned.organization.limit_overrides = dict.fromkeys(LIFTED, LIFTED_LIMIT)
            return provisioned.organization.id
    finally:
        await db.dispose()


def prepare(directory: Path, url: str | None = None) -> BenchDatabase:
    """Migrate and seed the benchmark database: `url` (an empty PostgreSQL database), or by default a new
    SQLite file `bench.db` in `directory`."""
    url = url or f"sqlite:///{directory / 'bench.db'}"
    upgrade(url)
    return BenchDatabase(url=url, organization_id=asyncio.run(_seed(url)))


def expected_response(db: BenchDatabase) -> dict[str, object]:
    """The answer every server must give to the benchmark query."""
    organization = {"id": db.organization_id, "slug": DEMO_ORG, "name": DEMO_NAME, "plan": DEMO_PLAN.upper()}
    return {"data": {"organization": organization}}


def expected_audited_response(db: BenchDatabase) -> dict[str, object]:
    """The answer to the audited mutation (checked before and after the load): the organization under its
    seeded name, whichever of the two names the load left it with."""
    organization = {"id": db.organization_id, "slug": DEMO_ORG, "name": DEMO_NAME, "plan": DEMO_PLAN.upper()}
    return {"data": {"updateOrganization": organization}}


def audit_entries(db: BenchDatabase) -> tuple[int, bool]:
    """How many entries the audited mutation left, and whether the chains verify."""
    from store import audit
    from store.models import AuditEntry

    async def count() -> tuple[int, bool]:
        from sqlalchemy import func, select
        from sqlmodel import col

        database = Database(db.url)
        try:
            async with database.transaction() as session:
                n = (
                    await session.execute(
                        select(func.count()).select_from(AuditEntry).where(col(AuditEntry.action) == "org_updated")
                    )
                ).scalar_one()
                return int(n), (await audit.verify(session)).ok
        finally:
            await database.dispose()

    return asyncio.run(count())


def expected_guarded_response(db: BenchDatabase) -> dict[str, object]:
    """The answer to the guarded query: the same organization with its billing email, and no error."""
    organization = {
        "id": db.organization_id,
        "slug": DEMO_ORG,
        "name": DEMO_NAME,
        "plan": DEMO_PLAN.upper(),
        "billingEmail": DEMO_BILLING_EMAIL,
    }
    return {"data": {"organization": organization}}


@contextlib.contextmanager
def temporary_postgres() -> Iterator[str]:
    """A throwaway PostgreSQL with its default durability (fsync and synchronous commit on), holding an
    empty database `bench`. Needs the PostgreSQL server binaries (Debian: apt-get install postgresql)."""
    from sqlalchemy import create_engine, text

    from bench.servers import BenchError
    from tests.services import ServiceUnavailable, postgres_server

    with contextlib.ExitStack() as stack:
        try:
            admin = stack.enter_context(postgres_server(durable=True))
        except ServiceUnavailable as error:
            raise BenchError(f"--postgres: {error}") from error
        engine = create_engine(admin, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.execute(text("CREATE DATABASE bench"))
        engine.dispose()
        yield admin.rsplit("/", 1)[0] + "/bench"
