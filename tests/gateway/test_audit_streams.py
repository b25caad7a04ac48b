"""Audit streams sent by the gateway's worker to real destinations on loopback ports: an HTTP receiver
(uvicorn in a thread) for webhooks (verified with the `standardwebhooks` library), Splunk HEC and JSON
lines, and asyncio syslog servers over TCP and TLS. Every entry arrives in chain order with the text the
chain hashes, a destination that is down catches up from its cursor, and one that is misconfigured is
disabled with a security event (C-132, C-143)."""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from pathlib import Path
from typing import Any

import pytest

from gateway.app import create_app
from gateway.audit_streams import StreamRetry
from gateway.cli.audit import verify_stream
from identity.outbound import OutboundPolicy
from identity.tokens import KeyRing
from store.audit import link_hash
from tests.audit_stream_helpers import (
    ENABLE,
    FAST,
    create_stream,
    head,
    make_entries,
    stream_gateway,
    streams,
    write_checkpoint,
)
from tests.audit_stream_receivers import StreamReceiver, syslog_server
from tests.conftest import Tenant, gql, login, make_settings, running, sql
from tests.http_upstreams import serving
from tests.listeners import Answer, http_server, tls_contexts
from tests.webhook_helpers import eventually


def caught_up(received: list[int], database_url: str, chain: str) -> bool:
    return bool(received) and received[-1] >= head(database_url, chain)


async def settled(client: Any, owner: str, database_url: str, chain: str) -> list[dict[str, Any]]:
    """The streams, once every one has recorded the chain's head as delivered."""
    found = await streams(client, owner)
    return found if all(f["deliveredSequence"] >= head(database_url, chain) for f in found) else []


def stored_file(tmp_path: Path, lines: list[str]) -> Path:
    path = tmp_path / "received.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


async def test_c143_a_webhook_stream_delivers_every_entry_signed_and_in_order(
    database_url: str, signing_key: str, tenant: Tenant, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    r = StreamReceiver(kind="webhook")
    with serving(r, lifespan="off") as base:
        async with stream_gateway(database_url, signing_key) as (_, client):
            owner = (await login(client, tenant))["accessToken"]
            await make_entries(client, owner, 5)
            await write_checkpoint(database_url, signing_key)
            stream_id, r.secret = await create_stream(client, owner, "WEBHOOK", base + "/audit")
            await make_entries(client, owner, 10, "more")
            await eventually(lambda: caught_up(r.sequences(), database_url, tenant.org_id))
            [listed] = await eventually(lambda: settled(client, owner, database_url, tenant.org_id))
    assert r.secret is not None
    assert r.secret.startswith("whsec_")
    assert r.rejected == []
    # from the oldest stored entry, each exactly once, in order
    assert r.sequences() == list(range(1, head(database_url, tenant.org_id) + 1))
    assert len(set(r.webhook_ids)) == len(r.webhook_ids)  # a unique id per batch
    assert listed["state"] == "ACTIVE"
    assert listed["deliveredSequence"] == r.sequences()[-1]
    assert listed["lastDeliveredAt"] is not None
    assert "whsec_" not in json.dumps(listed)
    message = json.loads(r.stored[0])
    assert message["type"] == "audit.entries"
    batch = message["data"]
    assert batch["format"] == "portcullis-audit-stream/1"
    assert batch["stream"] == stream_id
    assert batch["chain"] == tenant.org_id
    first = batch["entries"][0]
    assert first["hash"] == link_hash(first["previousHash"], first["sequence"], first["canonical"])
    assert first["entry"]["sequence"] == first["sequence"]
    assert "actorType" in first["entry"]
    assert batch["checkpoint"]["chain"] == tenant.org_id
    assert [h["chain"] for h in _signed_heads(signing_key, batch["checkpoint"]["signature"])] == [tenant.org_id]
    # the receiver's check passes on what it stored
    path = stored_file(tmp_path, r.stored)
    assert verify_stream(KeyRing(signing_key), path) == 0
    assert "checkpoint(s) verified" in capsys.readouterr().out


def _signed_heads(signing_key: str, signature: str) -> list[dict[str, Any]]:
    from resolvers.audit import signed_heads

    return [{"chain": h.chain, "sequence": h.sequence} for h in signed_heads(KeyRing(signing_key), signature)]


async def test_verify_stream_names_the_first_dropped_or_altered_entry(
    database_url: str, signing_key: str, tenant: Tenant, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    r = StreamReceiver(kind="json_lines")
    with serving(r, lifespan="off") as base:
        async with stream_gateway(database_url, signing_key) as (_, client):
            owner = (await login(client, tenant))["accessToken"]
            await make_entries(client, owner, 6)
            await write_checkpoint(database_url, signing_key)
            await create_stream(client, owner, "JSON_LINES", base + "/ndjson")
            await eventually(lambda: caught_up(r.sequences(), database_url, tenant.org_id))
    keys = KeyRing(signing_key)
    lines = list(r.stored)
    entries = [i for i, line in enumerate(lines) if json.loads(line)["type"] == "audit.entry"]
    assert verify_stream(keys, stored_file(tmp_path, lines + lines[:3])) == 0  # redeliveries are fine
    capsys.readouterr()

    dropped = [line for i, line in enumerate(lines) if i != entries[4]]
    assert verify_stream(keys, stored_file(tmp_path, dropped)) == 1
    assert "FAILED at sequence 5: sequence 5: missing" in capsys.readouterr().err

    altered = list(lines)
    line = json.loads(altered[entries[2]])
    line["canonical"] = line["canonical"].replace('"result":"success"', '"result":"failure"')
    line["entry"]["result"] = "failure"
    altered[entries[2]] = json.dumps(line)
    assert verify_stream(keys, stored_file(tmp_path, altered)) == 1
    assert "FAILED at sequence 3: sequence 3: altered" in capsys.readouterr().err

    forged = list(lines)
    cp = next(i for i, line in enumerate(lines) if json.loads(line)["type"] == "audit.checkpoint")
    point = json.loads(forged[cp])
    point["checkpoint"]["signature"] = point["checkpoint"]["signature"][:-4] + "AAAA"
    forged[cp] = json.dumps(point)
    assert verify_stream(keys, stored_file(tmp_path, forged)) == 1
    assert "signature does not verify" in capsys.readouterr().err


async def test_splunk_hec_gets_its_token_and_events(database_url: str, signing_key: str, tenant: Tenant) -> None:
    r = StreamReceiver(kind="splunk_hec")
    with serving(r, lifespan="off") as base:
        async with stream_gateway(database_url, signing_key) as (_, client):
            owner = (await login(client, tenant))["accessToken"]
            _, secret = await create_stream(client, owner, "SPLUNK_HEC", base, token="hec-token-1")
            await make_entries(client, owner, 3)
            await eventually(lambda: caught_up(r.sequences(), database_url, tenant.org_id))
            [listed] = await eventually(lambda: settled(client, owner, database_url, tenant.org_id))
    assert secret is None
    assert listed["url"] == base + "/services/collector/event"
    path, headers, _ = r.requests[0]
    assert path == "/services/collector/event"
    assert headers["authorization"] == "Splunk hec-token-1"
    event = json.loads(r.stored[0])
    assert event["sourcetype"] == "portcullis:audit"
    assert event["event"]["type"] == "audit.entry"
    assert r.sequences() == list(range(1, head(database_url, tenant.org_id) + 1))
    assert "hec-token-1" not in sql(database_url, "SELECT secret_encrypted FROM audit_streams")[0][0]


async def test_json_lines_are_ndjson(database_url: str, signing_key: str, tenant: Tenant) -> None:
    r = StreamReceiver(kind="json_lines")
    with serving(r, lifespan="off") as base:
        async with stream_gateway(database_url, signing_key) as (_, client):
            owner = (await login(client, tenant))["accessToken"]
            await create_stream(client, owner, "JSON_LINES", base + "/in", start="HEAD")
            before = head(database_url, tenant.org_id)
            await make_entries(client, owner, 2)
            await eventually(lambda: caught_up(r.sequences(), database_url, tenant.org_id))
    assert r.requests[0][1]["content-type"] == "application/x-ndjson"
    # from the head on: the creation's own entry is the first
    assert r.sequences()[0] == before
    assert json.loads(r.stored[0])["entry"]["action"] == "audit_stream_created"


async def test_a_destination_down_catches_up_from_its_cursor(
    database_url: str, signing_key: str, tenant: Tenant, tmp_path: Path
) -> None:
    """500s, then timeouts: the stream is FAILING and keeps its cursor; back up, it sends the rest in order."""
    r = StreamReceiver(kind="json_lines", mode="fail")
    with serving(r, lifespan="off") as base:
        async with stream_gateway(database_url, signing_key) as (_, client):
            owner = (await login(client, tenant))["accessToken"]
            await create_stream(client, owner, "JSON_LINES", base + "/in")
            await make_entries(client, owner, 4)
            await eventually(lambda: len(r.requests) >= 3)
            [failing] = await streams(client, owner)
            r.mode, r.delay = "slow", 3.0
            await eventually(lambda: len(r.requests) >= 5, within=20)
            [slow] = await eventually(lambda: _with_error(client, owner, "no answer"), within=20)
            r.mode = "ok"
            await make_entries(client, owner, 3, "later")
            await eventually(lambda: caught_up(r.sequences(), database_url, tenant.org_id), within=20)
            [back] = await eventually(lambda: settled(client, owner, database_url, tenant.org_id))
    assert failing["state"] == "FAILING"
    assert failing["lastError"] == "HTTP 500"
    assert failing["deliveredSequence"] == 0
    assert failing["consecutiveFailures"] >= 1
    assert slow["state"] == "FAILING"
    assert back["state"] == "ACTIVE"
    assert back["consecutiveFailures"] == 0
    sequences = r.sequences()
    # the slow answers were accepted by the receiver after the gateway gave up: those batches came twice
    assert sorted(set(sequences)) == list(range(1, head(database_url, tenant.org_id) + 1))
    # in order, every redelivered entry the same as the first time
    assert verify_stream(KeyRing(signing_key), stored_file(tmp_path, r.stored)) == 0


async def _with_error(client: Any, owner: str, text: str) -> list[dict[str, Any]]:
    found = await streams(client, owner)
    return found if (found[0]["lastError"] or "").startswith(text) else []


@pytest.mark.parametrize("answer", ["redirect", "401", "tls"])
async def test_a_misconfigured_destination_is_disabled_with_an_event(
    database_url: str, signing_key: str, tenant: Tenant, answer: str
) -> None:
    """C-132: a redirect is never followed (here to a loopback port), and is a permanent error, like a 4xx
    other than 408/429 an untrusted (self-signed) TLS certificate:
    permanent errors disable the stream at once, with a security event and an audit entry; enabling it
    resumes from its cursor."""
    server_tls, _ = tls_contexts("127.0.0.1")
    with http_server(tls=server_tls if answer == "tls" else None) as server:
        server.routes["/in"] = Answer.redirect("http://127.0.0.1:1/") if answer == "redirect" else Answer(401, {})
        async with stream_gateway(database_url, signing_key) as (_, client):
            owner = (await login(client, tenant))["accessToken"]
            stream_id, _ = await create_stream(client, owner, "JSON_LINES", server.url() + "/in")
            [disabled] = await eventually(lambda: _disabled(client, owner))
            await asyncio.sleep(0.3)
            attempts = len(server.requests)
            await asyncio.sleep(0.3)
            assert len(server.requests) == attempts  # no attempt while disabled
            events = sql(database_url, "SELECT kind, severity, subject_id FROM security_events")
            body = (await gql(client, ENABLE, {"id": stream_id}, token=owner)).json()
    expected = {"redirect": "HTTP 302: redirects are not followed", "401": "HTTP 401", "tls": "TLS error"}[answer]
    assert disabled["lastError"].startswith(expected), disabled
    assert disabled["consecutiveFailures"] == 1
    assert [tuple(e) for e in events] == [("audit_stream_disabled", "high", stream_id)]
    actions = sql(database_url, "SELECT action, actor_type FROM audit_log WHERE resource_id = :s", s=stream_id)
    assert [tuple(a) for a in actions][:2] == [("audit_stream_created", "user"), ("audit_stream_disabled", "system")]
    assert body["data"]["enableAuditStream"] == {"state": "ACTIVE", "deliveredSequence": 0, "consecutiveFailures": 0}


async def _disabled(client: Any, owner: str) -> list[dict[str, Any]]:
    found = await streams(client, owner)
    return found if found[0]["state"] == "DISABLED" else []


async def test_a_stream_failing_too_often_is_disabled(database_url: str, signing_key: str, tenant: Tenant) -> None:
    r = StreamReceiver(kind="json_lines", mode="503")
    with serving(r, lifespan="off") as base:
        async with stream_gateway(database_url, signing_key, audit_stream_disable_after_failures=3) as (_, client):
            owner = (await login(client, tenant))["accessToken"]
            await create_stream(client, owner, "JSON_LINES", base + "/in")
            [disabled] = await eventually(lambda: _disabled(client, owner))
    assert disabled["consecutiveFailures"] == 3
    assert disabled["lastError"] == "HTTP 503"
    assert len(r.requests) == 3


async def test_syslog_over_tcp_in_octet_counted_frames(database_url: str, signing_key: str, tenant: Tenant) -> None:
    """RFC 5424 messages in RFC 6587 framing; a server that closes the connection has not taken the batch."""
    async with syslog_server() as server, stream_gateway(database_url, signing_key) as (_, client):
        server.mode = "close"
        owner = (await login(client, tenant))["accessToken"]
        await create_stream(client, owner, "SYSLOG", f"syslog://127.0.0.1:{server.port}")
        await make_entries(client, owner, 3)
        [failing] = await eventually(lambda: _with_error(client, owner, "the syslog server closed"))
        assert server.stored == []
        server.mode = "ok"
        await eventually(lambda: caught_up(server.sequences(), database_url, tenant.org_id), within=20)
        [back] = await eventually(lambda: settled(client, owner, database_url, tenant.org_id))
    assert failing["state"] == "FAILING"
    assert failing["deliveredSequence"] == 0
    assert back["state"] == "ACTIVE"
    assert server.sequences() == list(range(1, head(database_url, tenant.org_id) + 1))
    first = server.messages[0]
    assert first.startswith("<110>1 ")
    assert " portcullis - audit - {" in first


async def test_syslog_over_tls(database_url: str, signing_key: str, tenant: Tenant, tmp_path: Path) -> None:
    server_tls, client_tls = tls_contexts("127.0.0.1")
    ca_file = tmp_path / "ca.pem"
    ca_file.write_text("".join(ssl.DER_cert_to_PEM_cert(c) for c in client_tls.get_ca_certs(binary_form=True)))
    async with (
        syslog_server(server_tls) as server,
        stream_gateway(database_url, signing_key, audit_stream_ca_file=str(ca_file)) as (_, client),
    ):
        owner = (await login(client, tenant))["accessToken"]
        await create_stream(client, owner, "SYSLOG", f"syslog+tls://127.0.0.1:{server.port}")
        await make_entries(client, owner, 2)
        await eventually(lambda: caught_up(server.sequences(), database_url, tenant.org_id), within=20)
    assert server.sequences() == list(range(1, head(database_url, tenant.org_id) + 1))


async def test_syslog_tls_with_an_untrusted_certificate_is_disabled(
    database_url: str, signing_key: str, tenant: Tenant
) -> None:
    server_tls, _ = tls_contexts("127.0.0.1")
    async with syslog_server(server_tls) as server, stream_gateway(database_url, signing_key) as (_, client):
        owner = (await login(client, tenant))["accessToken"]
        await create_stream(client, owner, "SYSLOG", f"syslog+tls://127.0.0.1:{server.port}")
        [disabled] = await eventually(lambda: _disabled(client, owner))
    assert disabled["lastError"].startswith("TLS error")
    assert server.stored == []


async def test_c143_a_slow_destination_never_slows_a_request(
    database_url: str, signing_key: str, tenant: Tenant
) -> None:
    r = StreamReceiver(kind="json_lines", mode="slow", delay=3.0)
    with serving(r, lifespan="off") as base:
        async with stream_gateway(database_url, signing_key, audit_stream_timeout_seconds=1.5) as (_, client):
            owner = (await login(client, tenant))["accessToken"]
            await create_stream(client, owner, "JSON_LINES", base + "/in")
            timings = []
            for i in range(8):
                started = time.perf_counter()
                await make_entries(client, owner, 1, f"key {i}")
                timings.append(time.perf_counter() - started)
            await eventually(lambda: len(r.requests) >= 2, within=10)
            timings_after = []
            for i in range(3):
                started = time.perf_counter()
                await make_entries(client, owner, 1, f"more {i}")
                timings_after.append(time.perf_counter() - started)
            [slow] = await eventually(lambda: _with_error(client, owner, "no answer"), within=10)
    # every mutation answered in request time, never in the destination's (1.5 s timeout, 3 s answer)
    assert max(timings + timings_after) < 0.9, (timings, timings_after)
    assert slow["lastError"] == "no answer within 1.5s"


def test_retries_back_off_with_jitter() -> None:
    retry = StreamRetry(retry_seconds=5, retry_max_seconds=600)
    assert [retry.delay(n, rand=lambda: 1.0) for n in (1, 2, 3, 8, 9, 50)] == [5, 10, 20, 600, 600, 600]
    assert [retry.delay(n, rand=lambda: 0.0) for n in (1, 2, 3)] == [2.5, 5, 10]  # half of it is random
    delays = {retry.delay(4) for _ in range(20)}
    assert len(delays) > 1
    assert all(20 <= d <= 40 for d in delays)
    # an hour of a destination's absence stays well below the default 50 failures in a row, even with the
    # shortest delays the jitter allows
    elapsed, failures = 0.0, 0
    while elapsed < 3600:
        failures += 1
        elapsed += retry.delay(failures, rand=lambda: 0.0)
    assert failures < StreamRetry().disable_after_failures


async def test_c132_an_address_refused_after_dns_is_never_contacted(
    database_url: str, signing_key: str, tenant: Tenant
) -> None:
    """A name public when the stream is created that later resolves to loopback (rebinding): every attempt is
    refused before connecting, and retried (a name that does not resolve is refused alike, and a DNS outage
    must not disable a stream)."""
    r = StreamReceiver(kind="json_lines")
    answers = iter([["93.184.216.34"]])

    async def resolver(host: str, _port: int) -> list[str]:
        assert host == "stream.customer.test"
        return next(answers, ["127.0.0.1"])

    with serving(r, lifespan="off") as base:
        port = int(base.rsplit(":", 1)[1])
        app = create_app(make_settings(database_url, signing_key, **FAST))
        app.state.services.webhooks.outbound = OutboundPolicy.of(enabled=True, require_https=False, resolver=resolver)
        async with running(app) as client:
            owner = (await login(client, tenant))["accessToken"]
            await create_stream(client, owner, "JSON_LINES", f"http://stream.customer.test:{port}/in")
            [failing] = await eventually(lambda: _with_error(client, owner, "the URL's address"))
            await eventually(lambda: _failures_at_least(client, owner, 3))
    assert failing["state"] == "FAILING"
    assert failing["deliveredSequence"] == 0
    assert r.requests == []


async def _failures_at_least(client: Any, owner: str, n: int) -> bool:
    return bool((await streams(client, owner))[0]["consecutiveFailures"] >= n)
