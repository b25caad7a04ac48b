"""The benchmark database: one SQLite file, migrated, holding the demo tenant and its owner."""

from __future__ import annotations

import asyncio
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
                session, slug=DEMO_ORG, name=DEMO_NAME, plan=DEMO_PLAN, owner_email=DEMO_OWNER,
                password_hash=await hasher.hash(DEMO_PASSWORD),
            )
            # a value rather than null, so that an answer from a denied field cannot pass for it
            provisioned.organization.billing_email = DEMO_BILLING_EMAIL
            return provisioned.organization.id
    finally:
        await db.dispose()


def prepare(directory: Path) -> BenchDatabase:
    """Create, migrate and seed `bench.db` in `directory`."""
    url = f"sqlite:///{directory / 'bench.db'}"
    upgrade(url)
    return BenchDatabase(url=url, organization_id=asyncio.run(_seed(url)))


def expected_response(db: BenchDatabase) -> dict[str, object]:
    """The answer every server must give to the benchmark query."""
    organization = {"id": db.organization_id, "slug": DEMO_ORG, "name": DEMO_NAME, "plan": DEMO_PLAN.upper()}
    return {"data": {"organization": organization}}


def expected_audited_response(db: BenchDatabase) -> dict[str, object]:
    """The answer to the audited mutation: the organization, renamed to the name it already has."""
    organization = {"id": db.organization_id, "slug": DEMO_ORG, "name": DEMO_NAME, "plan": DEMO_PLAN.upper()}
    return {"data": {"updateOrganization": organization}}


def audit_entries(db: BenchDatabase) -> tuple[int, bool]:
    """How many entries the audited mutation left, and whether the chains verify."""
    from store import audit
    from store.models import AuditEntry

    async def count() -> tuple[int, bool]:
        from sqlalchemy import func, select

        database = Database(db.url)
        try:
            async with database.transaction() as session:
                n = (await session.execute(select(func.count()).select_from(AuditEntry)
                                           .where(AuditEntry.action == "org_updated"))).scalar_one()  # type: ignore[arg-type]
                return int(n), (await audit.verify(session)).ok
        finally:
            await database.dispose()

    return asyncio.run(count())


def expected_guarded_response(db: BenchDatabase) -> dict[str, object]:
    """The answer to the guarded query: the same organization with its billing email, and no error."""
    organization = {"id": db.organization_id, "slug": DEMO_ORG, "name": DEMO_NAME, "plan": DEMO_PLAN.upper(),
                    "billingEmail": DEMO_BILLING_EMAIL}
    return {"data": {"organization": organization}}
