"""Verification: each chain recomputed from its first entry, and compared with its head row and with
heads recorded outside the database.

The verifier names the first sequence where the stored chain disagrees with itself (a changed row, a
missing row, an inserted row). A truncated tail, or a chain rewritten from scratch, agrees with itself:
only a checkpoint kept outside the database (the signed heads `portcullis audit checkpoint` writes)
reveals it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from store.audit.chain import CANONICAL_FIELDS, GENESIS_HASH, canonical_of_row, link_hash
from store.models import AuditChainHead, AuditEntry
from store.retention import AuditChainStart


@dataclass
class ChainReport:
    chain: str
    checked: int = 0
    head_sequence: int = 0
    head_hash: str = GENESIS_HASH
    first_broken_sequence: int | None = None
    problems: list[str] = field(default_factory=list)
    gaps: list[tuple[int, int]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.first_broken_sequence is None and not self.problems

    def broken(self, sequence: int, problem: str) -> None:
        if self.first_broken_sequence is None or sequence < self.first_broken_sequence:
            self.first_broken_sequence = sequence
        if len(self.problems) < 20:
            self.problems.append(problem)

    def as_dict(self) -> dict[str, Any]:
        return {
            "chain": self.chain,
            "ok": self.ok,
            "checked": self.checked,
            "headSequence": self.head_sequence,
            "headHash": self.head_hash,
            "firstBrokenSequence": self.first_broken_sequence,
            "gaps": [list(g) for g in self.gaps],
            "problems": self.problems,
        }


@dataclass
class VerificationReport:
    chains: dict[str, ChainReport] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.chains.values())

    @property
    def checked(self) -> int:
        return sum(c.checked for c in self.chains.values())

    @property
    def first_broken_sequence(self) -> int | None:
        broken = [c.first_broken_sequence for c in self.chains.values() if c.first_broken_sequence is not None]
        return min(broken) if broken else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "checked": self.checked,
            "firstBrokenSequence": self.first_broken_sequence,
            "chains": [c.as_dict() for c in sorted(self.chains.values(), key=lambda c: c.chain)],
        }


class ChainVerifier:
    """Fed one chain's entries in sequence order, resuming from a trusted point: the genesis for a whole
    chain, or `start` (a pruned chain's last deleted entry, attested by a signed checkpoint); for a partial
    range, the first entry's own link."""

    def __init__(self, chain: str, *, whole: bool = True, start: ChainHead | None = None) -> None:
        self.report = ChainReport(chain)
        self._whole = whole
        # entries at or before the start are attested by the checkpoint (a pruning still under way)
        self._skip_through = start.sequence if whole and start is not None else 0
        self._expected_sequence: int | None = 1 if whole else None
        self._previous: str | None = GENESIS_HASH if whole else None
        if whole and start is not None:
            self._expected_sequence, self._previous = start.sequence + 1, start.hash
            self.report.head_sequence, self.report.head_hash = start.sequence, start.hash

    def feed_row(self, row: Any) -> None:
        """One entry as `verify` reads it: its columns `VERIFIED_COLUMNS`, in that order."""
        if row[_SEQUENCE] <= self._skip_through:
            return
        self._link(row[_SEQUENCE], row[_PREVIOUS], row[_HASH], _row_hash(row))

    def _link(self, seq: int, previous_hash: str, hash_: str, recomputed: str) -> None:
        r = self.report
        r.checked += 1
        if self._expected_sequence is not None and seq != self._expected_sequence:
            if seq > self._expected_sequence:
                r.gaps.append((self._expected_sequence, seq - 1))
                r.broken(
                    self._expected_sequence, f"sequence gap: {self._expected_sequence}..{seq - 1} missing before {seq}"
                )
            else:
                r.broken(seq, f"sequence {seq} out of order or duplicated")
        if self._previous is not None and previous_hash != self._previous:
            r.broken(seq, f"sequence {seq}: previous_hash does not match the hash of the entry before it")
        if recomputed != hash_:
            r.broken(seq, f"sequence {seq}: content does not match its hash")
        self._expected_sequence = seq + 1
        # continue from the stored hash, so one edited row is reported once, not for every row after it
        self._previous = hash_
        r.head_sequence, r.head_hash = seq, hash_

    def against_head(self, sequence: int, hash_: str, source: str) -> None:
        """Compare with a head recorded elsewhere (the head row, or a checkpoint)."""
        r = self.report
        if sequence > r.head_sequence:
            r.broken(
                r.head_sequence + 1,
                f"chain ends at {r.head_sequence} but the {source} records sequence {sequence}: "
                "entries were removed from the end",
            )
        elif sequence == r.head_sequence and hash_ != r.head_hash:
            r.broken(sequence, f"head hash at {sequence} differs from the {source}")


@dataclass(frozen=True, slots=True)
class ChainHead:
    chain: str
    sequence: int
    hash: str


# Entries read and checked per batch. The check runs on the event loop (measured: reading and hashing an
# entry costs ~25 µs there, and a worker thread gains nothing while the GIL is shared), which is handed
# back between batches: a batch of 200 holds it for ~5-10 ms, where batches of 2,000 ORM objects held it
# for 150-250 ms (docs/audit.md).
VERIFY_BATCH = 200
# what `verify` reads of each entry, in this order: plain rows by position, no ORM object per entry
VERIFIED_COLUMNS = (*CANONICAL_FIELDS, "at", "sequence", "previous_hash", "hash")
_CHAIN, _SEQUENCE, _PREVIOUS, _HASH = (
    VERIFIED_COLUMNS.index(n) for n in ("chain", "sequence", "previous_hash", "hash")
)


def _row_hash(row: Any) -> str:
    """`entry_hash` of a row of VERIFIED_COLUMNS."""
    return link_hash(row[_PREVIOUS], row[_SEQUENCE], canonical_of_row(row))


def _within(
    stmt: Any, chain: Any, at: Any, chains: list[str] | None, start: datetime | None = None, end: datetime | None = None
) -> Any:
    if chains is not None:
        stmt = stmt.where(chain.in_(chains))
    if start is not None:
        stmt = stmt.where(at >= start)
    if end is not None:
        stmt = stmt.where(at < end)
    return stmt


async def entries_to_verify(
    session: AsyncSession,
    *,
    chains: Iterable[str] | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
) -> int:
    """How many entries `verify` with the same arguments reads, known without reading them: the sum of the
    chains' head sequences, less the entries pruned from them, for whole chains (one row per chain), an
    index-only count over (chain, at) for a time range. What the work is priced by (C-130)."""
    wanted = None if chains is None else sorted(set(chains))
    if start is None and end is None:
        heads = _within(
            select(func.coalesce(func.sum(col(AuditChainHead.sequence)), 0)), col(AuditChainHead.chain), None, wanted
        )
        pruned = _within(
            select(func.coalesce(func.sum(col(AuditChainStart.sequence)), 0)), col(AuditChainStart.chain), None, wanted
        )
        total = int((await session.execute(heads)).scalar_one()) - int((await session.execute(pruned)).scalar_one())
        return max(total, 0)
    table = AuditEntry.__table__  # type: ignore[attr-defined]
    counted = _within(select(func.count()).select_from(table), table.c.chain, table.c.at, wanted, start, end)
    return int((await session.execute(counted)).scalar_one())


async def verify(
    session: AsyncSession,
    *,
    chains: Iterable[str] | None = None,
    checkpoint: Iterable[ChainHead] = (),
    start: datetime | None = None,
    end: datetime | None = None,
    starts: Mapping[str, ChainHead] | None = None,
) -> VerificationReport:
    """Recompute the chains (all of them, or `chains`) and compare them with their head rows and with
    `checkpoint` (heads recorded outside the database). With `start`/`end`, only the entries in that
    time range are checked, each linked to the one before it. `starts`: where pruned chains begin (each
    the last deleted entry, as a signed checkpoint attests it; the caller checks the signature)."""
    starts = starts or {}

    def verifier(chain: str) -> ChainVerifier:
        return ChainVerifier(chain, whole=whole, start=starts.get(chain))

    report = VerificationReport()
    whole = start is None and end is None
    wanted = None if chains is None else sorted(set(chains))
    table = AuditEntry.__table__  # type: ignore[attr-defined]
    stmt = _within(
        select(*(table.c[name] for name in VERIFIED_COLUMNS)), table.c.chain, table.c.at, wanted, start, end
    ).order_by(table.c.chain, table.c.sequence)
    verifiers: dict[str, ChainVerifier] = {}
    current: ChainVerifier | None = None
    result = await session.stream(stmt.execution_options(yield_per=VERIFY_BATCH))
    async for batch in result.partitions():
        for row in batch:
            if current is None or current.report.chain != row[_CHAIN]:
                current = verifiers[row[_CHAIN]] = verifier(row[_CHAIN])
            current.feed_row(row)
        await asyncio.sleep(0)  # other requests run between batches
    if whole:
        head_stmt = select(AuditChainHead)
        if wanted is not None:
            head_stmt = head_stmt.where(col(AuditChainHead.chain).in_(wanted))
        for head in (await session.execute(head_stmt)).scalars():
            v = verifiers.get(head.chain) or verifiers.setdefault(head.chain, verifier(head.chain))
            v.against_head(head.sequence, head.hash, "chain head row")
        for point in checkpoint:
            if wanted is not None and point.chain not in wanted:
                continue
            v = verifiers.get(point.chain) or verifiers.setdefault(point.chain, verifier(point.chain))
            v.against_head(point.sequence, point.hash, "checkpoint")
    if wanted is not None:
        for chain in wanted:
            verifiers.setdefault(chain, verifier(chain))
    report.chains = {c: v.report for c, v in verifiers.items()}
    return report


async def heads(
    session: AsyncSession, *, verified: bool = True, starts: Mapping[str, ChainHead] | None = None
) -> tuple[list[ChainHead], VerificationReport | None]:
    """Each chain's head as the entries themselves give it (recomputed when `verified`, pruned chains from
    their attested `starts`)."""
    if verified:
        report = await verify(session, starts=starts)
        return [
            ChainHead(c.chain, c.head_sequence, c.head_hash) for c in report.chains.values() if c.head_sequence > 0
        ], report
    rows = (await session.execute(select(AuditChainHead))).scalars()
    return [ChainHead(h.chain, h.sequence, h.hash) for h in rows], None
