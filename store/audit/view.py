"""What a reader is shown of an audit entry: the one view both the GraphQL `AuditLogEntry` (schema/audit.py)
and the audit streams' readable copy of each entry (identity/audit_streams.py) are built from, so a change
to how a field is stored or shown reaches both at once."""

from __future__ import annotations

from typing import Any

from store.audit.sealing import ReadableEntry


def entry_view(e: ReadableEntry) -> dict[str, Any]:
    """The entry's readable fields, by their Python names (`actor_type`...); times as datetimes. `e` comes from
    `store.audit.readable_entries`: personal fields opened with their person's key, or `[erased]`."""
    return {
        "id": e.id,
        "sequence": e.sequence,
        "at": e.at,
        "actor_type": e.actor_type,
        "actor_id": e.actor_id,
        "action": e.action,
        "resource_type": e.resource_type,
        "resource_id": e.resource_id,
        "result": e.result,
        "request_id": e.request_id,
        "ip": e.ip,
        "details": e.details,
        "hash": e.hash,
        "previous_hash": e.previous_hash,
    }
