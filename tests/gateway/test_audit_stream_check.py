"""`portcullis audit verify-stream FILE` as a receiver runs it, with only the gateway's public key: real
entries of a chain and a real signed checkpoint, in each of the forms a receiver stores them."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from sqlalchemy import select
from sqlmodel import col

from gateway import cli
from identity import audit_streams as payloads
from identity.tokens import KeyRing, generate_private_key_pem
from resolvers.audit import checkpoint
from resolvers.audit_streams import chain_checkpoint
from store.audit import readable_entries
from store.db import Database
from store.models import AuditEntry
from tests.conftest import make_tenant
from tests.store.test_audit import event, write


def public_pem(private_pem: str, path: Path) -> str:
    key = serialization.load_pem_private_key(private_pem.encode(), password=None)
    path.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return str(path)


async def received_batch(database_url: str, signing_key: str) -> dict:
    org = (await make_tenant(database_url)).org_id
    await write(database_url, *(event(org) for _ in range(6)))
    keys = KeyRing(signing_key)
    db = Database(database_url)
    try:
        async with db.transaction() as s:
            await checkpoint(s, keys, now=datetime.now(UTC))
        async with db.transaction() as s:
            entries = list(
                (await s.execute(select(AuditEntry).where(col(AuditEntry.chain) == org).order_by("sequence"))).scalars()
            )
            views = await readable_entries(s, entries)
            point = await chain_checkpoint(s, keys, org)
    finally:
        await db.dispose()
    return payloads.batch("stream-1", org, entries, views, point)


@pytest.mark.parametrize("form", ["webhook", "json_lines", "splunk_hec", "syslog"])
async def test_a_receiver_checks_with_the_public_key_alone(
    database_url: str, signing_key: str, tmp_path: Path, form: str, capsys: pytest.CaptureFixture[str]
) -> None:
    batch = await received_batch(database_url, signing_key)
    if form == "webhook":
        text = payloads.webhook_body(batch).decode()
    elif form == "json_lines":
        text = payloads.ndjson_body(batch).decode()
    elif form == "splunk_hec":
        text = payloads.hec_body(batch).decode()
    else:  # what a syslog receiver keeps: each message's MSG
        frames = payloads.syslog_frames(batch).decode()
        text = "\n".join(line.split(" - ", 2)[2] for line in frames.split("<110>1 ")[1:])
        text = "\n".join(m[: m.rfind("}") + 1] for m in text.split("\n"))
    path = tmp_path / "received.jsonl"
    path.write_text(text + "\n")
    key = public_pem(signing_key, tmp_path / "gateway.pem")
    assert cli.main(["audit", "verify-stream", str(path), "--public-key", key]) == 0
    assert "ok: 6 entries in order and unaltered (0 redelivered), 1 checkpoint(s) verified" in capsys.readouterr().out

    # another gateway's key: the checkpoint does not verify
    other = public_pem(generate_private_key_pem(), tmp_path / "other.pem")
    assert cli.main(["audit", "verify-stream", str(path), "--public-key", other]) == 1
    assert "the checkpoint's signature does not verify" in capsys.readouterr().err


async def test_a_checkpoint_that_disagrees_with_an_entry_names_it(
    database_url: str, signing_key: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An entry rewritten together with its hash and every later link verifies as a chain, but not against
    the signed checkpoint."""
    batch = await received_batch(database_url, signing_key)
    last = batch["entries"][-1]
    assert batch["checkpoint"]["sequence"] == last["sequence"]
    altered = last["canonical"].replace('"request_id":"', '"request_id":"altered-')
    assert altered != last["canonical"]
    last["canonical"] = altered
    from store.audit import link_hash

    last["hash"] = link_hash(last["previousHash"], last["sequence"], last["canonical"])
    path = tmp_path / "received.jsonl"
    path.write_text(json.dumps(batch) + "\n")
    key = public_pem(signing_key, tmp_path / "gateway.pem")
    assert cli.main(["audit", "verify-stream", str(path), "--public-key", key]) == 1
    assert f"FAILED at sequence {last['sequence']}: " in capsys.readouterr().err


def test_an_unreadable_file_exits_2(tmp_path: Path, signing_key: str, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "received.jsonl"
    path.write_text("not json\n")
    key = public_pem(signing_key, tmp_path / "gateway.pem")
    assert cli.main(["audit", "verify-stream", str(path), "--public-key", key]) == 2
    assert "line 1" in capsys.readouterr().err
