"""What may be written to an entry: one line of printable text per value, cut to its column, and `details`
that are JSON-safe, bounded and free of secrets (C-094, C-095).

A value is truncated to its column, never refused: an entry that records a refusal must not itself be
refused. Control characters (newlines, ANSI escapes) and invalid UTF-8 become visible escapes, so a
forged "second record" cannot be planted in a value. A `details` key that names a secret has its value
replaced, and strings that look like credentials are redacted wherever they appear.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from store.audit.vocabulary import RESULTS, AuditEvent
from store.models import new_ordered_id

# Column limits (store.models.AuditEntry); a value is truncated to them, never refused.
LIMITS = {
    "actor_type": 20,
    "actor_id": 64,
    "action": 64,
    "resource_type": 40,
    "resource_id": 64,
    "result": 10,
    "request_id": 64,
    "ip": 45,
    "user_agent": 256,
}
MAX_DETAIL_STRING = 1000
MAX_DETAIL_ITEMS = 50
MAX_DETAIL_DEPTH = 4
REDACTED = "[redacted]"

# Keys whose values are never written to an entry, whatever the caller passes (C-095).
_SECRET_KEY = re.compile(
    r"pass(word)?|secret|token|api_?key|private|credential|authorization|cookie|otp|totp|recovery|"
    r"pepper|signature|assertion|saml_?response|(^|_)code$|^code",
    re.IGNORECASE,
)
# Strings that look like credentials wherever they appear: JWTs, our API keys, bearer values.
_SECRET_VALUE = re.compile(
    r"eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*|\b(ptc|gw)_[a-z]+_[A-Za-z0-9_]{6,}|"
    r"(?i:bearer)\s+\S+"
)


def clean_text(value: object, limit: int) -> str:
    """One line of printable text: control characters (newlines, ANSI escapes) and invalid UTF-8 become
    visible escapes, NUL included (PostgreSQL text cannot hold it), then the result is cut to `limit`."""
    text = value.decode("utf-8", "backslashreplace") if isinstance(value, bytes) else str(value)
    if text.isprintable():  # no control, format, separator (but space) or surrogate character
        return text[:limit]
    out: list[str] = []
    for ch in text:
        code = ord(ch)
        if 0xD800 <= code <= 0xDFFF:
            out.append(f"\\u{code:04x}")
        elif unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp"):
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
        else:
            out.append(ch)
        if len(out) > limit:
            break
    return "".join(out)[:limit]


def _text(value: object, limit: int) -> str:
    """clean_text, with its common case (a printable str) decided without a call."""
    return value[:limit] if type(value) is str and value.isprintable() else clean_text(value, limit)


def _optional(value: object, limit: int) -> str | None:
    return None if value is None else _text(value, limit)


def _clean_detail_text(value: str | bytes) -> str:
    return _SECRET_VALUE.sub(REDACTED, _text(value, MAX_DETAIL_STRING))


# key -> whether it names a secret: the keys of `details` come from a small set, checked once each
_SECRET_KEYS: dict[str, bool] = {}


def _secret_key(key: str) -> bool:
    known = _SECRET_KEYS.get(key)
    if known is None:
        known = _SECRET_KEY.search(key) is not None
        if len(_SECRET_KEYS) < 4096:
            _SECRET_KEYS[key] = known
    return known


def _clean_mapping(value: Mapping[Any, Any], depth: int) -> dict[str, Any]:
    cleaned: dict[str, Any] = {}
    for i, (k, v) in enumerate(value.items()):
        if i >= MAX_DETAIL_ITEMS:
            cleaned["_truncated"] = True
            break
        key = _text(k, 64)
        cleaned[key] = REDACTED if _secret_key(key) else clean_details(v, depth + 1)
    return cleaned


def clean_details(value: Any, depth: int = 0) -> Any:
    """JSON-safe, bounded and free of secrets: what may go into `details`."""
    kind = type(value)
    if kind is str:  # the common cases first, by exact type
        return _clean_detail_text(value)
    if kind is dict:
        return "[nested]" if depth >= MAX_DETAIL_DEPTH else _clean_mapping(value, depth)
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return value if value == value and value not in (float("inf"), float("-inf")) else None
    if isinstance(value, datetime):
        return iso(value)
    if isinstance(value, StrEnum):
        return value.value
    if isinstance(value, str | bytes):
        return _clean_detail_text(value)
    if depth >= MAX_DETAIL_DEPTH:
        return "[nested]"
    if isinstance(value, Mapping):
        return _clean_mapping(value, depth)
    if isinstance(value, list | tuple | set | frozenset):
        items = sorted(value, key=str) if isinstance(value, set | frozenset) else list(value)
        return [clean_details(v, depth + 1) for v in items[:MAX_DETAIL_ITEMS]]
    return clean_text(value, MAX_DETAIL_STRING)


def changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The fields that differ, as `{"field": {"old": ..., "new": ...}}` (for `details["changes"]`)."""
    return {k: {"old": old.get(k), "new": new.get(k)} for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)}


def iso(moment: datetime) -> str:
    """UTC ISO 8601 with microseconds and a `Z` (`2026-01-02T03:04:05.000006Z`): how times are written in
    entries and in the chain. An entry's hash covers this text, so it must not change for an instant."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise TypeError(f"an audit time must be an aware datetime, not {moment!r}")
    return moment.astimezone(UTC).isoformat(timespec="microseconds").removesuffix("+00:00") + "Z"


def entry_values(event: AuditEvent, at: datetime) -> dict[str, Any]:
    """The entry's columns but the chain links, cleaned and bounded."""
    result = event.result
    if result not in RESULTS:
        raise ValueError(f"unknown audit result {result!r}")
    return {
        "id": new_ordered_id(),
        "chain": event.chain,
        "organization_id": event.organization_id,
        "at": at,
        "actor_type": _text(event.actor_type, LIMITS["actor_type"]),
        "actor_id": _optional(event.actor_id, LIMITS["actor_id"]),
        "action": _text(event.action, LIMITS["action"]),
        "resource_type": _optional(event.resource_type, LIMITS["resource_type"]),
        "resource_id": _optional(event.resource_id, LIMITS["resource_id"]),
        "result": str(result),
        "request_id": _text(event.request_id or "-", LIMITS["request_id"]),
        "ip": _optional(event.ip, LIMITS["ip"]),
        "user_agent": _optional(event.user_agent, LIMITS["user_agent"]),
        # clean_details gives JSON values only (str keys, lists, finite numbers): what the database gives back
        "details": clean_details(_with_trace(event)),
    }


def _with_trace(event: AuditEvent) -> dict[str, Any]:
    details = dict(event.details)
    if event.trace_id is not None and "traceId" not in details:
        details["traceId"] = event.trace_id
    return details
