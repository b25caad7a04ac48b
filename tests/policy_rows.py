"""An organization's security policy set the way an administrator's change leaves it: the row written, and
(`announce`) `org:<id>` published on the revocation bus so every cache of it is dropped."""

from __future__ import annotations

import dataclasses
from typing import Any

from sqlalchemy import delete

from authz.security_policy import SecurityPolicy
from identity.security_policies import row_values
from store.db import Database
from store.security import SecurityPolicyRow


async def set_policy(database_url: str, organization_id: str, app: Any = None, **settings: Any) -> SecurityPolicy:
    """Store `SecurityPolicy(**settings)` as the organization's policy (every other setting its default)."""
    policy = dataclasses.replace(SecurityPolicy(), **settings)
    db = Database(database_url)
    try:
        async with db.transaction() as session:
            await session.execute(
                delete(SecurityPolicyRow).where(SecurityPolicyRow.organization_id == organization_id)  # type: ignore[arg-type]
            )
            session.add(SecurityPolicyRow(organization_id=organization_id, **row_values(policy)))
    finally:
        await db.dispose()
    if app is not None:
        await app.state.services.revocations.publish([f"org:{organization_id}"])
    return policy
