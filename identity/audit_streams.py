"""Audit streams: where a tenant's audit chain is sent, and what each destination receives.

Kinds and URLs (docs/audit.md, "Streaming"):

- `WEBHOOK`: an http(s) URL; each batch is one Standard Webhooks message (identity/webhooks.py signs it),
  type `audit.entries`, its `data` the batch below.
- `SPLUNK_HEC`: the collector's base URL (`https://splunk.example.com:8088`; the path
  `/services/collector/event` is added when none is given) and a token, sent as `Authorization: Splunk
  <token>`; each entry line (and the checkpoint line) is one HEC event.
- `JSON_LINES`: an http(s) URL; a POST of `application/x-ndjson`, one line per entry, then the checkpoint line.
- `SYSLOG`: `syslog://host[:port]` (TCP, port 514) or `syslog+tls://host[:port]` (TLS, port 6514), RFC 5424
  messages framed by octet counting (RFC 6587, 3.4.1): facility 13 (log audit), severity 6, APP-NAME
  `portcullis`, MSGID `audit` (or `checkpoint`), the MSG the entry line's JSON.

A batch: `{"format": "portcullis-audit-stream/1", "stream", "chain", "entries": [record...], "checkpoint"}`;
a record `{"sequence", "hash", "previousHash", "canonical", "entry"}` where `canonical` is the exact text the
chain hashes (store/audit/chain.py) and `entry` the readable view (store/audit/view.py). The checkpoint is the
chain's head in the latest signed audit checkpoint, signed again for this chain alone (a receiver never
learns other tenants' heads).
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Sequence
from datetime import datetime
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

import orjson

from store.audit.chain import canonical_json
from store.audit.cleaning import iso
from store.audit.sealing import ReadableEntry
from store.audit.view import entry_view
from store.models import AuditEntry

STREAM_FORMAT = "portcullis-audit-stream/1"
HEC_PATH = "/services/collector/event"
SYSLOG_PORT, SYSLOG_TLS_PORT = 514, 6514
# <PRI> = facility 13 (log audit) * 8 + severity 6 (informational)
SYSLOG_PRI = 13 * 8 + 6


class StreamKind(StrEnum):
    WEBHOOK = "webhook"
    SPLUNK_HEC = "splunk_hec"
    JSON_LINES = "json_lines"
    SYSLOG = "syslog"


class DestinationError(ValueError):
    """A URL that does not suit its kind; the message names what is wrong, never the URL's secrets."""


def destination_url(kind: StreamKind, raw: str) -> str:
    """The URL as stored: checked for its kind's scheme, host and port, no credentials in it; Splunk's
    collector path added when none is given."""
    url = raw.strip()
    if not url or len(url) > 2048 or "\x00" in url or any(c.isspace() for c in url):
        raise DestinationError("url must be a URL of at most 2048 characters")
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError:
        raise DestinationError("url is not a valid URL") from None
    if not host or parts.username is not None or parts.password is not None:
        raise DestinationError("url needs a host and takes no credentials (a token is given apart)")
    scheme = parts.scheme.lower()
    if kind is StreamKind.SYSLOG:
        if scheme not in ("syslog", "syslog+tls"):
            raise DestinationError("a SYSLOG stream's url is syslog://host:port or syslog+tls://host:port")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise DestinationError("a syslog url takes no path or query")
        return f"{scheme}://{parts.netloc}"
    if scheme not in ("http", "https"):
        raise DestinationError(f"a {kind.name} stream's url is an http(s) URL")
    if port == 0:
        raise DestinationError("url has no valid port")
    if kind is StreamKind.SPLUNK_HEC and parts.path in ("", "/"):
        return f"{scheme}://{parts.netloc}{HEC_PATH}"
    return url


def syslog_target(url: str) -> tuple[str, int, bool]:
    """(host, port, tls) of a stored syslog URL."""
    parts = urlsplit(url)
    tls = parts.scheme == "syslog+tls"
    return parts.hostname or "", parts.port or (SYSLOG_TLS_PORT if tls else SYSLOG_PORT), tls


def check_url(url: str) -> str:
    """The http(s) URL the outbound guard checks for a destination (a syslog host as https://host:port/)."""
    if url.startswith("syslog"):
        host, port, _ = syslog_target(url)
        return f"https://{'[' + host + ']' if ':' in host else host}:{port}/"
    return url


# --- what is sent --------------------------------------------------------------------------------------------


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p.capitalize() for p in rest)


def readable(view: ReadableEntry) -> dict[str, Any]:
    """The entry as the API shows it (`AuditLogEntry`'s fields in their GraphQL names), times in ISO 8601."""
    return {_camel(k): iso(v) if isinstance(v, datetime) else v for k, v in entry_view(view).items()}


def record(entry: AuditEntry, view: ReadableEntry) -> dict[str, Any]:
    """One entry as sent: what the chain hashes (the stored row) and what a reader is shown (`view`, from
    `store.audit.readable_entries`: a person's sealed fields opened, or `[erased]`)."""
    return {
        "sequence": entry.sequence,
        "hash": entry.hash,
        "previousHash": entry.previous_hash,
        "canonical": canonical_json(entry),
        "entry": readable(view),
    }


def batch(
    stream_id: str,
    chain: str,
    entries: Sequence[AuditEntry],
    views: Sequence[ReadableEntry],
    checkpoint: dict[str, Any] | None,
) -> dict[str, Any]:
    """A batch of `entries` in chain order, each with its readable view (`views`, in the same order)."""
    return {
        "format": STREAM_FORMAT,
        "stream": stream_id,
        "chain": chain,
        "entries": [record(e, v) for e, v in zip(entries, views, strict=True)],
        "checkpoint": checkpoint,
    }


def lines(b: dict[str, Any]) -> list[dict[str, Any]]:
    """A batch as JSON-lines objects: one `audit.entry` per entry, then an `audit.checkpoint` if any."""
    out = [{"type": "audit.entry", "stream": b["stream"], "chain": b["chain"], **r} for r in b["entries"]]
    if b["checkpoint"] is not None:
        out.append(
            {"type": "audit.checkpoint", "stream": b["stream"], "chain": b["chain"], "checkpoint": b["checkpoint"]}
        )
    return out


def dumps(value: Any) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def webhook_body(b: dict[str, Any]) -> bytes:
    last = b["entries"][-1]["entry"]["at"] if b["entries"] else None
    return dumps({"type": "audit.entries", "timestamp": last, "data": b})


def webhook_id(b: dict[str, Any]) -> str:
    """The same for every attempt at the same entries: a receiver recognises a batch it has seen."""
    first, last = b["entries"][0]["sequence"], b["entries"][-1]["sequence"]
    return f"audit_{b['stream']}_{first}_{last}"


def ndjson_body(b: dict[str, Any]) -> bytes:
    return b"".join(dumps(line) + b"\n" for line in lines(b))


def hec_body(b: dict[str, Any]) -> bytes:
    events = []
    for line in lines(b):
        at = line["entry"]["at"] if line["type"] == "audit.entry" else line["checkpoint"]["createdAt"]
        moment = datetime.fromisoformat(at.replace("Z", "+00:00"))
        events.append(
            {
                "time": round(moment.timestamp(), 6),
                "source": "portcullis",
                "sourcetype": "portcullis:audit",
                "event": line,
            }
        )
    return b"\n".join(dumps(e) for e in events)


def syslog_frames(b: dict[str, Any], hostname: Callable[[], str] = socket.gethostname) -> bytes:
    """Each line as an RFC 5424 message, octet-counted (RFC 6587 3.4.1: `MSG-LEN SP SYSLOG-MSG`)."""
    host = "".join(c for c in hostname() if 33 <= ord(c) <= 126)[:255] or "-"
    frames = []
    for line in lines(b):
        msgid, at = (
            ("audit", line["entry"]["at"])
            if line["type"] == "audit.entry"
            else ("checkpoint", line["checkpoint"]["createdAt"])
        )
        message = f"<{SYSLOG_PRI}>1 {at} {host} portcullis - {msgid} - ".encode() + dumps(line)
        frames.append(str(len(message)).encode() + b" " + message)
    return b"".join(frames)
