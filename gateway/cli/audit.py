"""`portcullis audit verify|verify-stream|checkpoint`."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from gateway.cli.common import load_settings
from gateway.settings import Settings


async def _audit_in_database(settings: Settings, keys: Any, checkpoint_heads: list[Any] | None) -> Any:
    """The checkpoint document (when `checkpoint_heads` is None) or the verification report."""
    from datetime import UTC, datetime

    from resolvers.audit import attested_starts, checkpoint
    from store import audit
    from store.db import Database

    db = Database(settings.database_url)
    try:
        async with db.transaction() as session:
            if checkpoint_heads is None:
                return await checkpoint(session, keys, now=datetime.now(UTC))
            starts = await attested_starts(session, keys)
            return await audit.verify(session, checkpoint=checkpoint_heads, starts=starts)
    finally:
        await db.dispose()


def cmd_audit(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from identity.tokens import KeyRing
    from resolvers.audit import CheckpointError, read_checkpoint

    if args.audit_command == "verify-stream" and args.public_key:
        from identity.tokens import PublicKeys

        try:
            public = PublicKeys(Path(p).read_text() for p in args.public_key)
        except (OSError, ValueError) as exc:
            print(f"portcullis: --public-key: {exc}", file=sys.stderr)
            return 2
        return verify_stream(public, Path(args.file), as_json=args.json)
    settings = load_settings()
    keys = KeyRing(*settings.signing_key_pems())
    if args.audit_command == "verify-stream":
        return verify_stream(keys, Path(args.file), as_json=args.json)
    if args.audit_command == "checkpoint":
        try:
            document = asyncio.run(_audit_in_database(settings, keys, None))
        except CheckpointError as exc:
            print(f"portcullis: {exc}", file=sys.stderr)
            return 1
        out = Path(args.out)
        if args.out.endswith("/"):  # a directory, made when missing (never a file named like one)
            out.mkdir(parents=True, exist_ok=True)
        if out.is_dir():
            stamp = document["createdAt"].replace("-", "").replace(":", "").replace(".", "")
            out = out / f"audit-checkpoint-{stamp}.json"
        out.write_text(json.dumps(document, indent=2) + "\n")
        print(f"checkpoint of {len(document['heads'])} chain(s) written to {out}")
        return 0
    points = []
    if args.checkpoint:
        path = Path(args.checkpoint)
        if path.is_dir():
            found = sorted(path.glob("audit-checkpoint-*.json"))
            if not found:
                print(f"portcullis: no checkpoint in {path}", file=sys.stderr)
                return 2
            path = found[-1]
        try:
            points = read_checkpoint(keys, path.read_text())
        except (OSError, CheckpointError) as exc:
            print(f"portcullis: {exc}", file=sys.stderr)
            return 2
    report = asyncio.run(_audit_in_database(settings, keys, points))
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        for chain in sorted(report.chains.values(), key=lambda c: c.chain):
            state = "ok" if chain.ok else f"BROKEN at sequence {chain.first_broken_sequence}"
            print(f"{chain.chain}: {chain.checked} entries, head {chain.head_sequence}: {state}")
            for problem in chain.problems:
                print(f"  {problem}")
        print(
            f"{'ok' if report.ok else 'FAILED'}: {report.checked} entries in {len(report.chains)} chain(s)"
            + (f", checked against {len(points)} checkpointed head(s)" if points else "")
        )
    return 0 if report.ok else 1


def verify_stream(keys: Any, path: Any, *, as_json: bool = False) -> int:
    """`portcullis audit verify-stream FILE`: 0 when intact, 1 naming the first bad sequence, 2 when unreadable."""
    import json

    from identity.audit_stream_check import check, read_lines
    from resolvers.audit import CheckpointError, signed_heads

    def heads_of(signature: str) -> list[tuple[str, int, str]]:
        try:
            return [(h.chain, h.sequence, h.hash) for h in signed_heads(keys, signature)]
        except CheckpointError as exc:
            raise ValueError(str(exc)) from None

    try:
        report = check(list(read_lines(path.read_text())), heads_of)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        print(f"portcullis: {path}: {exc}", file=sys.stderr)
        return 2
    if as_json:
        print(
            json.dumps(
                {
                    "ok": report.ok,
                    "entries": report.entries,
                    "redelivered": report.redelivered,
                    "checkpoints": report.checkpoints,
                    "firstBadSequence": report.first_bad_sequence,
                    "problems": report.problems,
                },
                indent=2,
            )
        )
    elif report.ok:
        print(
            f"ok: {report.entries} entries in order and unaltered ({report.redelivered} redelivered), "
            f"{report.checkpoints} checkpoint(s) verified"
        )
    else:
        for problem in report.problems:
            print(problem, file=sys.stderr)
        where = f" at sequence {report.first_bad_sequence}" if report.first_bad_sequence is not None else ""
        print(f"FAILED{where}: {report.problems[0]}", file=sys.stderr)
    return 0 if report.ok else 1
