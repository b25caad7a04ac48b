"""The receiver's check of what an audit stream delivered (`portcullis audit verify-stream FILE`).

The file holds what a receiver stored, one JSON value a line, each one of: an entry line (`audit.entry`, or
any object with `sequence`, `hash`, `previousHash` and `canonical`), a checkpoint line (`audit.checkpoint`),
a whole batch (`{"entries": [...], "checkpoint": ...}`), a webhook message (`{"type": "audit.entries",
"data": <batch>}`), or a Splunk HEC event (`{"event": <line>}`); a syslog receiver stores each message's MSG.

For each chain, in the order received: an entry whose `sequence` and `hash` were seen before is a redelivery
and skipped (delivery is at least once); otherwise its sequence must be the previous one plus 1 (else
entries were dropped), its `previousHash` the previous entry's `hash`, and its `hash` the chain's link
`sha256(previousHash | sequence | canonical)` (else it was altered). A checkpoint's signature is checked
with the gateway's keys, and the head it signs must match the received entry of that sequence.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from store.audit.chain import GENESIS_HASH, link_hash

# checks a checkpoint's signature: the (chain, sequence, hash) heads it signs, or ValueError
HeadsOf = Callable[[str], list[tuple[str, int, str]]]
_SUMMARY_FIELDS = ("action", "result", "resource_type", "resource_id", "actor_type")


@dataclass
class StreamReport:
    entries: int = 0
    redelivered: int = 0
    checkpoints: int = 0
    first_bad_sequence: int | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def bad(self, sequence: int | None, problem: str) -> None:
        if sequence is not None and self.first_bad_sequence is None:
            self.first_bad_sequence = sequence
        if len(self.problems) < 50:
            self.problems.append(problem)


def _lines(value: Any) -> Iterator[dict[str, Any]]:
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    if isinstance(value.get("event"), dict):
        yield from _lines(value["event"])
    elif isinstance(value.get("data"), dict) and value.get("type") == "audit.entries":
        yield from _lines(value["data"])
    elif isinstance(value.get("entries"), list):
        for r in value["entries"]:
            yield {"type": "audit.entry", "chain": value.get("chain"), **r}
        if value.get("checkpoint") is not None:
            yield {"type": "audit.checkpoint", "chain": value.get("chain"), "checkpoint": value["checkpoint"]}
    else:
        yield value


def read_lines(text: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, entry or checkpoint line) of a received file; ValueError naming a line not understood."""
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            for line in _lines(json.loads(raw)):
                yield number, line
        except ValueError as exc:
            raise ValueError(f"line {number}: {exc}") from None


def _chain_of(line: dict[str, Any]) -> str:
    chain = line.get("chain")
    if chain is None and isinstance(line.get("entry"), dict):
        canonical = line.get("canonical")
        chain = json.loads(canonical).get("chain") if isinstance(canonical, str) else None
    return str(chain or "")


@dataclass
class _Chain:
    last_sequence: int | None = None
    last_hash: str | None = None
    seen: dict[int, str] = field(default_factory=dict)


def check(lines: Iterable[tuple[int, dict[str, Any]]], heads_of: HeadsOf) -> StreamReport:
    report = StreamReport()
    chains: dict[str, _Chain] = {}
    checkpoints: list[tuple[int, str, dict[str, Any]]] = []
    for number, line in lines:
        if line.get("type") == "audit.checkpoint":
            checkpoints.append((number, _chain_of(line), line.get("checkpoint") or {}))
            continue
        try:
            seq, hash_, previous, canonical = (
                int(line["sequence"]),
                str(line["hash"]),
                str(line["previousHash"]),
                str(line["canonical"]),
            )
        except (KeyError, TypeError, ValueError):
            report.bad(None, f"line {number}: not an audit stream entry")
            continue
        chain = chains.setdefault(_chain_of(line), _Chain())
        if chain.seen.get(seq) == hash_:
            report.redelivered += 1
            continue
        report.entries += 1
        if chain.last_sequence is None:
            if seq == 1 and previous != GENESIS_HASH:
                report.bad(seq, f"sequence {seq}: the first entry does not start from the genesis hash")
        elif seq != chain.last_sequence + 1:
            if seq > chain.last_sequence + 1:
                report.bad(
                    chain.last_sequence + 1,
                    f"sequence {chain.last_sequence + 1}: missing (entries {chain.last_sequence + 1}..{seq - 1} "
                    f"were not received before {seq})",
                )
            else:
                report.bad(seq, f"sequence {seq}: out of order, or received twice with different content")
        elif previous != chain.last_hash:
            report.bad(seq, f"sequence {seq}: previousHash does not match the hash of entry {chain.last_sequence}")
        if link_hash(previous, seq, canonical) != hash_:
            report.bad(seq, f"sequence {seq}: altered (its content does not match its hash)")
        elif not _agrees(line, canonical):
            report.bad(seq, f"sequence {seq}: altered (its readable copy differs from the hashed content)")
        chain.seen[seq] = hash_
        chain.last_sequence, chain.last_hash = seq, hash_
    for number, chain_id, point in checkpoints:
        report.checkpoints += 1
        try:
            heads = heads_of(str(point.get("signature", "")))
        except ValueError as exc:
            report.bad(None, f"line {number}: the checkpoint's signature does not verify ({exc})")
            continue
        for head_chain, sequence, hash_ in heads:
            received = chains.get(head_chain) or chains.get(chain_id)
            if received is None or head_chain != (chain_id or head_chain):
                continue
            got = received.seen.get(sequence)
            if got is not None and got != hash_:
                report.bad(sequence, f"sequence {sequence}: differs from the signed checkpoint of line {number}")
    return report


def _agrees(line: dict[str, Any], canonical: str) -> bool:
    """The readable copy names the same action, result and resource as the hashed text (when it is there)."""
    entry = line.get("entry")
    if not isinstance(entry, dict):
        return True
    try:
        hashed = json.loads(canonical)
    except ValueError:
        return False
    for name in _SUMMARY_FIELDS:
        camel = name.split("_")[0] + "".join(p.capitalize() for p in name.split("_")[1:])
        if camel in entry and entry[camel] != hashed.get(name):
            return False
    return True
