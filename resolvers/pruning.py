"""The pruning job's work: delete what is past each tenant's retention, in batches (docs/retention.md).

Each batch (`batch` rows, 1,000 by default) is a transaction of its own, so no lock is held for long and
requests go on between batches. Kinds and what "past retention" means for each:

- SESSIONS: sessions that ended (revoked, or expired) more than the setting ago, with their refresh
  token families and tokens;
- USAGE: daily usage rows of days before the cut; REPORTS: reports created before it (with their rows;
  a schedule's run keeps its record, without the report); SENT_MAIL: outbox messages no longer pending
  created before it; SIGN_INS: sign-in attempts before it;
- AUDIT_ENTRIES: the tenant's chain, only up to the newest signed checkpoint made before the cut (so the
  chain then starts at an entry whose predecessor a checkpoint attests), and only entries every enabled
  audit stream has delivered (`streams_delivered_through`).

The job holds the `retention` lease (`job_leases`) while it runs, so one process at a time prunes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, or_, select, text, tuple_, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from authz.plans import RetentionKind, effective_retention
from identity.tokens import KeyRing
from resolvers.audit import CheckpointError, checkpoint, signed_heads
from resolvers.audit_streams import delivered_through
from resolvers.retention import stored_days
from store.db import Database
from store.models import (
    AuthSession,
    MailMessage,
    Organization,
    RefreshToken,
    RefreshTokenFamily,
    Report,
    ReportRow,
    UsageDaily,
)
from store.reporting import ReportScheduleRun
from store.retention import AuditChainStart, AuditCheckpoint, JobLease
from store.security import SignIn

log = logging.getLogger("portcullis.retention")

LEASE = "retention"
BATCH = 1_000


# --- the lease: one process at a time ------------------------------------------------------------------


async def take_lease(db: Database, holder: str, now: datetime, lease: timedelta, name: str = LEASE) -> bool:
    """Take (or renew) the job's lease with one UPDATE: True when this holder has it until now + lease."""
    try:
        async with db.transaction() as s:
            if await s.get(JobLease, name) is None:
                s.add(JobLease(name=name, holder="", lease_until=now - lease))
    except IntegrityError:
        pass  # another process made the row first
    async with db.transaction() as s:
        result: Any = await s.execute(
            update(JobLease)
            .where(col(JobLease.name) == name, or_(col(JobLease.lease_until) <= now, col(JobLease.holder) == holder))
            .values(holder=holder, lease_until=now + lease)
        )
        return int(result.rowcount) == 1


async def release_lease(db: Database, holder: str, now: datetime, name: str = LEASE) -> None:
    async with db.transaction() as s:
        await s.execute(
            update(JobLease).where(col(JobLease.name) == name, col(JobLease.holder) == holder).values(lease_until=now)
        )


# --- one kind, one tenant, one batch at a time ---------------------------------------------------------


async def _ids(s: AsyncSession, stmt: Any) -> list[Any]:
    return list((await s.execute(stmt)).scalars().all())


async def _sessions(s: AsyncSession, org: str, cut: datetime, batch: int) -> int:
    ended = or_(col(AuthSession.revoked_at) < cut, col(AuthSession.expires_at) < cut)
    ids = await _ids(s, select(col(AuthSession.id)).where(col(AuthSession.organization_id) == org, ended).limit(batch))
    if ids:
        families = select(col(RefreshTokenFamily.id)).where(col(RefreshTokenFamily.session_id).in_(ids))
        await s.execute(delete(RefreshToken).where(col(RefreshToken.family_id).in_(families)))
        await s.execute(delete(RefreshTokenFamily).where(col(RefreshTokenFamily.session_id).in_(ids)))
        await s.execute(delete(AuthSession).where(col(AuthSession.id).in_(ids)))
    return len(ids)


async def _usage(s: AsyncSession, org: str, cut: datetime, batch: int) -> int:
    key = (col(UsageDaily.day), col(UsageDaily.subject_type), col(UsageDaily.subject_id))
    rows = (
        await s.execute(
            select(*key).where(col(UsageDaily.organization_id) == org, col(UsageDaily.day) < cut.date()).limit(batch)
        )
    ).all()
    if rows:
        await s.execute(
            delete(UsageDaily).where(col(UsageDaily.organization_id) == org, tuple_(*key).in_([tuple(r) for r in rows]))
        )
    return len(rows)


async def _reports(s: AsyncSession, org: str, cut: datetime, batch: int) -> int:
    # a report carries its rows: a tenth of the batch of reports per transaction
    ids = await _ids(
        s,
        select(col(Report.id))
        .where(col(Report.organization_id) == org, col(Report.created_at) < cut)
        .limit(max(1, batch // 10)),
    )
    if ids:
        await s.execute(delete(ReportRow).where(col(ReportRow.report_id).in_(ids)))
        await s.execute(
            update(ReportScheduleRun).where(col(ReportScheduleRun.report_id).in_(ids)).values(report_id=None)
        )
        await s.execute(delete(Report).where(col(Report.id).in_(ids)))
    return len(ids)


async def _sent_mail(s: AsyncSession, org: str, cut: datetime, batch: int) -> int:
    ids = await _ids(
        s,
        select(col(MailMessage.id))
        .where(
            col(MailMessage.organization_id) == org,
            col(MailMessage.status) != "pending",
            col(MailMessage.created_at) < cut,
        )
        .limit(batch),
    )
    if ids:
        await s.execute(delete(MailMessage).where(col(MailMessage.id).in_(ids)))
    return len(ids)


async def _sign_ins(s: AsyncSession, org: str, cut: datetime, batch: int) -> int:
    ids = await _ids(
        s, select(col(SignIn.id)).where(col(SignIn.organization_id) == org, col(SignIn.at) < cut).limit(batch)
    )
    if ids:
        await s.execute(delete(SignIn).where(col(SignIn.id).in_(ids)))
    return len(ids)


_PRUNERS: dict[RetentionKind, Callable[[AsyncSession, str, datetime, int], Any]] = {
    RetentionKind.SESSIONS: _sessions,
    RetentionKind.USAGE: _usage,
    RetentionKind.REPORTS: _reports,
    RetentionKind.SENT_MAIL: _sent_mail,
    RetentionKind.SIGN_INS: _sign_ins,
}


# --- audit entries ---------------------------------------------------------------------------------------


async def streams_delivered_through(s: AsyncSession, chain: str) -> int | None:
    """The last sequence of `chain` every enabled audit stream has delivered; None when no stream is
    enabled. An entry is deleted only once each enabled stream has delivered it (the lowest of their
    cursors); a disabled stream holds nothing back."""
    return await delivered_through(s, chain)


async def _audit_cut_point(s: AsyncSession, keys: KeyRing, chain: str, cut: datetime) -> tuple[str, int, str] | None:
    """(checkpoint id, sequence, hash): the chain's head in the newest signed checkpoint made before `cut`."""
    stored = (
        await s.execute(
            select(AuditCheckpoint)
            .where(col(AuditCheckpoint.created_at) <= cut)
            .order_by(col(AuditCheckpoint.created_at).desc())
            .limit(20)
        )
    ).scalars()
    for point in stored:
        try:
            heads = signed_heads(keys, point.signature)
        except CheckpointError:
            log.warning("stored audit checkpoint %s does not verify; not cut at", point.id)
            continue
        for head in heads:
            if head.chain == chain and head.sequence > 0:
                return point.id, head.sequence, head.hash
    return None


async def _prune_audit(db: Database, keys: KeyRing, chain: str, cut: datetime, batch: int, now: datetime) -> int:
    async with db.transaction() as s:
        found = await _audit_cut_point(s, keys, chain, cut)
        if found is None:
            return 0
        checkpoint_id, through, hash_ = found
        delivered = await streams_delivered_through(s, chain)
        if delivered is not None and delivered < through:
            return 0  # cut only at a checkpointed entry that every stream has delivered
        start = await s.get(AuditChainStart, chain, with_for_update=True)
        if start is None or start.sequence < through:
            stored = (
                await s.execute(
                    text("SELECT hash FROM audit_log WHERE chain = :c AND sequence = :n"), {"c": chain, "n": through}
                )
            ).scalar_one_or_none()
            if stored != hash_:
                log.error("audit chain %s differs from its checkpoint at %s; not pruned", chain, through)
                return 0
            start = start or AuditChainStart(chain=chain, hash=hash_, checkpoint_id=checkpoint_id)
            start.sequence, start.hash, start.checkpoint_id, start.pruned_at = through, hash_, checkpoint_id, now
            s.add(start)
        through = start.sequence
    total = 0
    while True:
        async with db.transaction() as s:
            deleted = await _delete_audit_batch(s, chain, through, batch)
        total += deleted
        if deleted < batch:
            return total


async def _delete_audit_batch(s: AsyncSession, chain: str, through: int, batch: int) -> int:
    """The sanctioned path (migration 0015): the SECURITY DEFINER function on PostgreSQL; on SQLite the
    trigger lets go of entries at or before the chain's recorded start only."""
    params = {"c": chain, "n": through, "b": batch}
    if s.bind is not None and s.bind.dialect.name == "postgresql":
        return int((await s.execute(text("SELECT audit_log_prune(:c, :n, :b)"), params)).scalar_one())
    result: Any = await s.execute(
        text(
            "DELETE FROM audit_log WHERE chain = :c AND sequence IN (SELECT sequence FROM audit_log "
            "WHERE chain = :c AND sequence <= :n ORDER BY sequence LIMIT :b)"
        ),
        params,
    )
    return int(result.rowcount)


# --- a whole pass -----------------------------------------------------------------------------------------


async def ensure_checkpoint(db: Database, keys: KeyRing, now: datetime, every: timedelta) -> bool:
    """Sign and store a checkpoint when the newest stored one is older than `every`: the points later
    passes may cut at. False when none was needed, or the log does not verify (then none is written)."""
    async with db.transaction() as s:
        newest = (
            await s.execute(
                select(col(AuditCheckpoint.created_at)).order_by(col(AuditCheckpoint.created_at).desc()).limit(1)
            )
        ).scalar_one_or_none()
        if newest is not None and newest > now - every:
            return False
        try:
            await checkpoint(s, keys, now=now)
        except CheckpointError as exc:
            log.error("no audit checkpoint stored: %s", exc)
            return False
    return True


async def prune(
    db: Database,
    keys: KeyRing,
    now: datetime,
    *,
    batch: int = BATCH,
    still_held: Callable[[], Any] | None = None,
    organizations: list[str] | None = None,
) -> dict[str, int]:
    """Delete what is past retention for every tenant (or `organizations`); rows deleted per kind.
    `still_held()` (renewing the lease) is awaited before each tenant; False stops the pass."""
    async with db.transaction() as s:
        # tenant-scope: the job walks every tenant, each pruned with its own settings below
        stmt = select(col(Organization.id), col(Organization.plan)).order_by(col(Organization.id))
        if organizations is not None:
            stmt = stmt.where(col(Organization.id).in_(organizations))
        tenants = [(str(i), str(p)) for i, p in (await s.execute(stmt)).all()]
    counts = dict.fromkeys((k.value for k in RetentionKind), 0)
    for org_id, plan in tenants:
        if still_held is not None and not await still_held():
            break
        async with db.transaction() as s:
            days = effective_retention(plan, await stored_days(s, org_id))
        for kind, kept in days.items():
            cut = now - timedelta(days=kept)
            if kind is RetentionKind.AUDIT_ENTRIES:
                counts[kind.value] += await _prune_audit(db, keys, org_id, cut, batch, now)
                continue
            while True:
                async with db.transaction() as s:
                    deleted = int(await _PRUNERS[kind](s, org_id, cut, batch))
                counts[kind.value] += deleted
                if deleted < (max(1, batch // 10) if kind is RetentionKind.REPORTS else batch):
                    break
    return counts
