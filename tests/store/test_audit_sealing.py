"""Personal fields of audit entries sealed per person (store/audit/sealing.py, docs/audit.md "Erasure and the
chain"): stored only as ciphertext, read back while the person's key exists, `[erased]` once it is destroyed,
and the chain verifies either way (C-144)."""

from __future__ import annotations

from typing import Any

from store import audit
from store.audit import AuditEvent
from store.audit.sealing import email_subject, user_subject
from store.db import Database
from store.models import new_id
from tests.audit_view import readable_rows
from tests.conftest import sql

IP = "192.0.2.44"
EMAIL = "Sealed.Person@Example.test"


async def write(url: str, *events: AuditEvent) -> None:
    db = Database(url)
    try:
        async with db.transaction() as session:
            await audit.append(session, events)
    finally:
        await db.dispose()


async def verified(url: str) -> Any:
    db = Database(url)
    try:
        async with db.transaction() as session:
            return await audit.verify(session)
    finally:
        await db.dispose()


def stored_text(url: str) -> str:
    return "\n".join(repr(tuple(r)) for r in sql(url, "SELECT * FROM audit_log")).casefold()


async def test_c144_a_persons_fields_are_stored_sealed_and_shredded_with_their_key(database_url: str) -> None:
    org, user = new_id(), new_id()
    await write(
        database_url,
        AuditEvent(
            action="member_invited",
            organization_id=org,
            actor_type="user",
            actor_id=user,
            ip=IP,
            user_agent="Sealed Browser/1.0",
            details={"email": EMAIL, "role": "viewer", "changes": {"billingEmail": {"old": None, "new": EMAIL}}},
        ),
        # nobody's: a system job's entry is written as it is
        AuditEvent(action="org_updated", organization_id=org, actor_type="system", actor_id="cron", ip="192.0.2.1"),
    )
    text = stored_text(database_url)
    assert IP not in text
    assert EMAIL.casefold() not in text
    assert "sealed browser" not in text
    assert "192.0.2.1" in text
    [entry, job] = readable_rows(database_url)
    assert (entry.ip, entry.user_agent, entry.details["email"], entry.erased) == (
        IP,
        "Sealed Browser/1.0",
        EMAIL,
        False,
    )
    assert entry.details["changes"]["billingEmail"]["new"] == EMAIL
    assert entry.details["role"] == "viewer"
    assert job.ip == "192.0.2.1"
    # the person's key destroyed: the address sealed under the address's own key still opens
    sql(database_url, "UPDATE subject_keys SET key = NULL WHERE subject = :s", s=user_subject(user))
    [entry, _] = readable_rows(database_url)
    assert (entry.ip, entry.user_agent, entry.erased) == (None, None, True)
    assert entry.details["email"] == EMAIL
    assert entry.details["_erased"] is True
    sql(database_url, "DELETE FROM subject_keys WHERE subject = :s", s=email_subject(EMAIL))
    [entry, _] = readable_rows(database_url)
    assert entry.details["email"] == "[erased]"
    assert entry.details["changes"]["billingEmail"]["new"] == "[erased]"
    assert (await verified(database_url)).ok
    # written after the erasure: the tombstone drops the fields instead of sealing them under a new key
    await write(
        database_url, AuditEvent(action="authn_logout", organization_id=org, actor_type="user", actor_id=user, ip=IP)
    )
    assert IP not in stored_text(database_url)
    assert sql(database_url, "SELECT count(*) FROM subject_keys WHERE subject = :s", s=user_subject(user)) == [(1,)]
    assert (await verified(database_url)).ok
