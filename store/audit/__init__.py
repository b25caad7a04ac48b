"""The audit log: one append-only table, one hash chain per tenant.

Each tenant's entries (`chain` = the organization id, or `platform` for events outside any tenant) are
numbered 1, 2, 3, ... without gaps and linked by a hash chain. By job:

- `vocabulary`: the actions, actor types and results, and `AuditEvent` (an entry before it is chained);
- `cleaning`: what may be written (printable, bounded, no secrets) and the entry's column values;
- `chain`: the canonical JSON and the link hash, in Python and in SQL;
- `writing`: writing entries in the caller's transaction (`append`), or on their own (`AuditTrail`);
- `verification`: recomputing chains against their head rows and checkpoints;
- `sealing`: the personal fields sealed under each person's key, and `readable_entries`, the one readable
  view of entries (every reader goes through it);
- `cursors`: the cursors of `auditLogs` pages.

This module names what the rest of the code uses; the modules above hold the rest.
"""

from store.audit.chain import GENESIS_HASH, canonical_json, entry_hash, link_hash
from store.audit.cleaning import changes, clean_text, iso
from store.audit.cursors import decode_cursor, encode_cursor
from store.audit.sealing import ReadableEntry, readable_entries
from store.audit.verification import ChainHead, VerificationReport, entries_to_verify, heads, verify
from store.audit.vocabulary import (
    ACTIONS,
    PLATFORM_CHAIN,
    RESULTS,
    ActorType,
    AuditAction,
    AuditEvent,
    AuditResult,
)
from store.audit.writing import AuditTrail, append

__all__ = [
    "ACTIONS",
    "GENESIS_HASH",
    "PLATFORM_CHAIN",
    "RESULTS",
    "ActorType",
    "AuditAction",
    "AuditEvent",
    "AuditResult",
    "AuditTrail",
    "ChainHead",
    "ReadableEntry",
    "VerificationReport",
    "append",
    "canonical_json",
    "changes",
    "clean_text",
    "decode_cursor",
    "encode_cursor",
    "entries_to_verify",
    "entry_hash",
    "heads",
    "iso",
    "link_hash",
    "readable_entries",
    "verify",
]
