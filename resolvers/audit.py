"""Reading the audit log and verifying its chains.

A tenant's reader (`audit:read`) sees its own organization's chain; the platform operator
(`platform:audit:read`) reads every chain, the `platform` one included. Pages are newest first, keyset
on (at, id), each filter served by an index that ends in that order (migration 0005).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, or_, text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col, select

from authz import Permission, Principal
from authz.errors import BadUserInput
from identity.tokens import KeyRing, TokenError, VerifyingKeys, sign_document, verify_document
from resolvers.budgets import charge_work
from resolvers.common import Page, PageEdge, tenant_of
from resolvers.deps import RequestContext
from resolvers.times import given_time
from store import audit
from store.audit import ACTIONS, RESULTS, AuditResult
from store.cursors import CursorError
from store.models import UNSUCCESSFUL, ApiKey, AuditEntry, Invitation, Membership, Organization, Report
from store.reporting import ReportSchedule
from store.retention import AuditChainStart, AuditCheckpoint

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 200
MAX_FILTER_LENGTH = 64


@dataclass(frozen=True, slots=True)
class AuditFilter:
    actor_id: str | None = None
    action: str | None = None
    resource_type: str | None = None
    resource_id: str | None = None
    result: str | None = None
    request_id: str | None = None
    start: datetime | None = None
    end: datetime | None = None


AuditPage = Page[audit.ReadableEntry]


_FILTER_FIELDS = {
    "actor_id": "actorId",
    "action": "action",
    "resource_type": "resourceType",
    "resource_id": "resourceId",
    "result": "result",
    "request_id": "requestId",
}


def _check_filter(f: AuditFilter) -> None:
    for name, label in _FILTER_FIELDS.items():
        value = getattr(f, name)
        if value is not None and (len(value) > MAX_FILTER_LENGTH or "\x00" in value):
            raise BadUserInput(f"filter.{label} is not valid", field=f"filter.{label}")
    if f.action is not None and f.action not in ACTIONS:
        raise BadUserInput("filter.action is not a known audit action", field="filter.action")
    if f.result is not None and f.result not in RESULTS:
        raise BadUserInput("filter.result must be success, denied or error", field="filter.result")
    if f.start is not None and f.end is not None and given_time(f.start) >= given_time(f.end):
        raise BadUserInput("filter.from must be before filter.to", field="filter.from")


def readable_chain(principal: Principal) -> str | None:
    """The one chain the caller may read, or None for every chain (the platform operator)."""
    if Permission.PLATFORM_AUDIT_READ in principal.effective_permissions:
        return None
    return tenant_of(principal)


async def list_entries(
    ctx: RequestContext,
    f: AuditFilter | None,
    first: int | None = DEFAULT_PAGE_SIZE,
    after: str | None = None,
) -> AuditPage:
    """A page of the chain the caller may read (every chain for the platform operator), newest first."""
    return await query_entries(await ctx.db(), readable_chain(ctx.principal), f, first, after)


async def query_entries(
    db: AsyncSession,
    chain: str | None,
    f: AuditFilter | None,
    first: int | None = DEFAULT_PAGE_SIZE,
    after: str | None = None,
) -> AuditPage:
    """The query behind `list_entries`, on one chain (None: every chain)."""
    f = f or AuditFilter()
    size = DEFAULT_PAGE_SIZE if first is None else first
    if not 1 <= size <= MAX_PAGE_SIZE:
        raise BadUserInput(f"first must be between 1 and {MAX_PAGE_SIZE}", field="first")
    _check_filter(f)
    stmt = select(AuditEntry)
    # the audit log is chained per tenant: its tenant column is `chain` (the organization's id)
    if chain is not None:
        stmt = stmt.where(col(AuditEntry.chain) == chain)
    for name in ("actor_id", "action", "resource_type", "resource_id", "result", "request_id"):
        value = getattr(f, name)
        if value is not None:
            stmt = stmt.where(getattr(AuditEntry, name) == value)
    if f.result is not None and f.result != AuditResult.SUCCESS:
        # the predicate of the partial index that holds these entries (store.models.UNSUCCESSFUL)
        stmt = stmt.where(text(UNSUCCESSFUL))
    if f.start is not None:
        stmt = stmt.where(col(AuditEntry.at) >= given_time(f.start))
    if f.end is not None:
        stmt = stmt.where(col(AuditEntry.at) < given_time(f.end))
    if after is not None:
        try:
            at, ident = audit.decode_cursor(after)
        except CursorError:
            raise BadUserInput("after is not a valid cursor", field="after") from None
        stmt = stmt.where(or_(col(AuditEntry.at) < at, and_(col(AuditEntry.at) == at, col(AuditEntry.id) < ident)))
    stmt = stmt.order_by(col(AuditEntry.at).desc(), col(AuditEntry.id).desc()).limit(size + 1)
    rows = list((await db.execute(stmt)).scalars().all())
    # what a reader sees: personal fields opened while their person's key exists (store/audit/sealing.py)
    edges = [PageEdge(audit.encode_cursor(e), e) for e in await audit.readable_entries(db, rows[:size])]
    return Page(edges, len(rows) > size, edges[-1].cursor if edges else None)


async def verify_chains(
    ctx: RequestContext, start: datetime | None = None, end: datetime | None = None
) -> audit.VerificationReport:
    """The caller's chain (every chain for the platform operator) recomputed, within [start, end) if given.

    Its work grows with the chain: the entries it will read are counted first (the head rows, or an
    index-only count over the range) and their price taken from the tenant's cost budget before any is
    read (C-130); over budget, RATE_LIMITED and nothing is verified."""
    start = given_time(start) if start is not None else None
    end = given_time(end) if end is not None else None
    if start is not None and end is not None and start >= end:
        raise BadUserInput("from must be before to", field="from")
    chain = readable_chain(ctx.principal)
    chains = None if chain is None else [chain]
    db = await ctx.db()
    await charge_work(ctx, await audit.entries_to_verify(db, chains=chains, start=start, end=end), "verifyAuditChain")
    starts = await attested_starts(db, ctx.services.tokens.keys)
    return await audit.verify(db, chains=chains, start=start, end=end, starts=starts)


async def owning_tenants(ctx: RequestContext, resource_type: str, value: str) -> set[str]:
    """The organizations that hold `value` (an id, or a slug): to tell an id of another tenant from one
    that does not exist, for the audit log only; the caller's answer stays NOT_FOUND either way. Read in a
    transaction of its own: it runs once the request's own work is over (rolled back, or never opened).

    # tenant-scope: deliberately across tenants, and nothing found here reaches the caller
    """
    if not value or len(value) > 64 or "\x00" in value:
        return set()
    stmt: Any
    if resource_type == "api_key":
        stmt = select(col(ApiKey.organization_id)).where(col(ApiKey.id) == value)
    elif resource_type == "membership":
        stmt = select(col(Membership.organization_id)).where(col(Membership.id) == value)
    elif resource_type == "user":
        stmt = select(col(Membership.organization_id)).where(col(Membership.user_id) == value)
    elif resource_type == "report":
        stmt = select(col(Report.organization_id)).where(col(Report.id) == value)
    elif resource_type == "report_schedule":
        stmt = select(col(ReportSchedule.organization_id)).where(col(ReportSchedule.id) == value)
    elif resource_type == "invitation":
        stmt = select(col(Invitation.organization_id)).where(col(Invitation.id) == value)
    elif resource_type == "organization":
        stmt = select(col(Organization.id)).where(col(Organization.slug) == value)
    else:
        return set()
    async with ctx.services.db.transaction() as db:
        return {str(v) for v in (await db.execute(stmt.limit(10))).scalars().all()}


# --- checkpoints: chain heads signed and kept outside the database ------------------------------

CHECKPOINT_FORMAT = "portcullis-audit-checkpoint/1"


class CheckpointError(ValueError):
    pass


async def checkpoint(db: AsyncSession, keys: KeyRing, *, now: datetime) -> dict[str, Any]:
    """Each chain's head (sequence, hash), recomputed from the entries, signed with the gateway's key.

    Refused while a chain does not verify: a checkpoint vouches for what it records. Kept in the database
    too (`audit_checkpoints`), where the pruning job finds the checkpoints it may cut at."""
    heads, report = await audit.heads(db, verified=True, starts=await attested_starts(db, keys))
    if report is not None and not report.ok:
        raise CheckpointError(
            f"the audit log does not verify (first broken sequence "
            f"{report.first_broken_sequence}); no checkpoint written"
        )
    document = {
        "format": CHECKPOINT_FORMAT,
        "createdAt": audit.iso(now),
        "heads": [
            {"chain": h.chain, "sequence": h.sequence, "hash": h.hash} for h in sorted(heads, key=lambda h: h.chain)
        ],
    }
    signature = sign_document(keys, document)
    db.add(AuditCheckpoint(created_at=now, signature=signature))
    await db.flush()
    return {**document, "signature": signature}


def read_checkpoint(keys: KeyRing, text: str) -> list[audit.ChainHead]:
    """The heads of a checkpoint file, as signed: the readable copy beside the signature is ignored."""
    try:
        signature = json.loads(text)["signature"]
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"not a valid signed checkpoint: {exc}") from None
    return signed_heads(keys, signature)


def signed_heads(keys: VerifyingKeys, signature: Any) -> list[audit.ChainHead]:
    """The heads a checkpoint's signature holds, once the signature is checked."""
    try:
        document = verify_document(keys, signature)
    except (ValueError, KeyError, TypeError, TokenError) as exc:
        raise CheckpointError(f"not a valid signed checkpoint: {exc}") from None
    if document.get("format") != CHECKPOINT_FORMAT or not isinstance(document.get("heads"), list):
        raise CheckpointError("not a valid signed checkpoint: unknown format")
    try:
        return [audit.ChainHead(str(h["chain"]), int(h["sequence"]), str(h["hash"])) for h in document["heads"]]
    except (KeyError, TypeError, ValueError):
        raise CheckpointError("not a valid signed checkpoint: malformed heads") from None


async def attested_starts(db: AsyncSession, keys: KeyRing) -> dict[str, audit.ChainHead]:
    """Where each pruned chain starts (its last deleted entry), kept only when the signed checkpoint it
    names checks out and records that very entry as the chain's head: a start nobody signed is ignored, so
    the chain then verifies from its genesis and reports the missing entries."""
    rows = await db.execute(
        select(AuditChainStart, col(AuditCheckpoint.signature)).join(
            AuditCheckpoint, col(AuditCheckpoint.id) == col(AuditChainStart.checkpoint_id)
        )
    )
    starts: dict[str, audit.ChainHead] = {}
    for start, signature in rows.all():
        try:
            signed = signed_heads(keys, signature)
        except CheckpointError:
            continue
        point = audit.ChainHead(start.chain, start.sequence, start.hash)
        if point in signed:
            starts[start.chain] = point
    return starts
