"""Crypto-shredding of the personal fields of audit entries (docs/audit.md, "Erasure and the chain").

An entry's personal fields (its `ip` and `user_agent`, and in `details` every email address and the values of
keys that name a person's address, device or agent) are sealed before the entry is chained: grouped by the
person they belong to, encrypted with that person's key (AES-256-GCM, `subject_keys`, a random 96-bit nonce,
the entry's id as associated data) and stored as envelopes in `details["_sealed"]`; the columns hold null and
the places in `details` the text `[sealed]`. The chain hashes what is stored, so it hashes the ciphertext.

Erasing a person deletes their keys: the ciphertext stays (the chain and the signed checkpoints still verify)
and nobody can read it again. `readable_entries` is the one way to read entries: it opens the envelopes whose
keys exist and marks the others `[erased]`.

Whose is a field: an email address belongs to the address (`email:<sha256>`); the rest to the entry's person,
the account that acted or was named as actor (`user:<id>`), or, without one, to the one address the entry
names. An entry with no person (a system job, an API key, an anonymous caller naming no address) is written as
it is.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from store.audit.vocabulary import ActorType
from store.models import AuditEntry, new_id, utcnow
from store.privacy import SubjectKey

SEALED = "_sealed"
ERASED_FLAG = "_erased"
SEALED_MARK = "[sealed]"
ERASED_MARK = "[erased]"
PERSON_COLUMNS = ("ip", "user_agent")

# keys of `details` whose values are a person's: their address, device or user agent
_PERSONAL_KEY = re.compile(r"e-?mail|device|user_?agent|^ip$|client_?ip|^address$|recipient", re.IGNORECASE)
_EMAIL = re.compile(r"[^\s@<>()\[\]\"',;:]+@[^\s@<>()\[\]\"',;:]+\.[^\s@<>()\[\]\"',;:]+")
_PERSONS = (ActorType.USER.value, ActorType.ANONYMOUS.value)

Path = tuple[str | int, ...]


def user_subject(user_id: str) -> str:
    return f"user:{user_id}"


def email_subject(email: str) -> str:
    return "email:" + hashlib.sha256(email.strip().casefold().encode()).hexdigest()


def entry_subject(values: dict[str, Any]) -> str | None:
    """The person an entry is about: its actor when that is an account (signed in, or named by a sign-in)."""
    if values.get("actor_type") in _PERSONS and values.get("actor_id"):
        return user_subject(str(values["actor_id"]))
    return None


@dataclass
class _Plan:
    fields: dict[str, dict[str, Any]] = field(default_factory=dict)  # owner -> column -> value
    details: dict[str, list[tuple[Path, Any]]] = field(default_factory=dict)  # owner -> [(path, value)]

    def owners(self) -> set[str]:
        return set(self.fields) | set(self.details)


def _walk(value: Any, path: Path, personal: bool, out: list[tuple[Path, Any, bool]]) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            if path == () and k == SEALED:
                continue
            _walk(v, (*path, k), personal or bool(_PERSONAL_KEY.search(str(k))), out)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _walk(v, (*path, i), personal, out)
    elif isinstance(value, str) and (personal or _EMAIL.search(value)):
        out.append((path, value, personal))


def _plan(values: dict[str, Any]) -> _Plan:
    found: list[tuple[Path, Any, bool]] = []
    _walk(values["details"], (), False, found)
    emails = {p: m.group(0) for p, v, _ in found if (m := _EMAIL.search(v))}
    person = entry_subject(values)
    if person is None:
        addresses = {email_subject(e) for e in emails.values()}
        person = next(iter(addresses)) if len(addresses) == 1 else None
    plan = _Plan()
    for path, value, _ in found:
        owner = email_subject(emails[path]) if path in emails else person
        if owner is not None:
            plan.details.setdefault(owner, []).append((path, value))
    if person is not None:
        for column in PERSON_COLUMNS:
            if values.get(column) is not None:
                plan.fields.setdefault(person, {})[column] = values[column]
    return plan


def _set(target: Any, path: Path, value: Any) -> None:
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value


def _get(target: Any, path: Path) -> Any:
    for step in path:
        target = target[step]
    return target


async def keys_for(session: AsyncSession, subjects: Iterable[str]) -> dict[str, tuple[str, bytes | None]]:
    """subject -> (key id, key, or None for an erased subject); a key is made for a subject that has none."""
    wanted = sorted(set(subjects))
    if not wanted:
        return {}
    stmt = select(col(SubjectKey.id), col(SubjectKey.subject), col(SubjectKey.key)).where(
        col(SubjectKey.subject).in_(wanted)
    )
    found = {s: (i, None if k is None else base64.b64decode(k)) for i, s, k in (await session.execute(stmt)).all()}
    missing = [s for s in wanted if s not in found]
    if missing:
        bind = session.bind
        insert_ = postgresql.insert if bind is not None and bind.dialect.name == "postgresql" else sqlite.insert
        table = SubjectKey.__table__  # type: ignore[attr-defined]
        rows = [
            {"id": new_id(), "subject": s, "key": base64.b64encode(os.urandom(32)).decode(), "created_at": utcnow()}
            for s in missing
        ]
        await session.execute(insert_(table).values(rows).on_conflict_do_nothing(index_elements=["subject"]))
        again = stmt.where(col(SubjectKey.subject).in_(missing))
        for i, s, k in (await session.execute(again)).all():
            found[s] = (i, None if k is None else base64.b64decode(k))
    return found


def owners_of(values: dict[str, Any]) -> set[str]:
    return _plan(values).owners()


def seal(values: dict[str, Any], keys: dict[str, tuple[str, bytes | None]]) -> dict[str, Any]:
    """`values` (an entry's cleaned columns) with its personal fields sealed under their owners' keys, or
    dropped (`[erased]`) for an owner already erased."""
    plan = _plan(values)
    if not plan.owners():
        return values
    out = dict(values)
    details = copy.deepcopy(values["details"])
    envelopes: list[dict[str, str]] = []
    for owner in sorted(plan.owners()):
        key_id, key = keys[owner]
        columns = plan.fields.get(owner, {})
        places = plan.details.get(owner, [])
        for column in columns:
            out[column] = None
        for path, _ in places:
            _set(details, path, SEALED_MARK if key is not None else ERASED_MARK)
        if key is None:
            continue
        body = json.dumps({"fields": columns, "details": [[list(p), v] for p, v in places]}, separators=(",", ":"))
        nonce = os.urandom(12)
        sealed = AESGCM(key).encrypt(nonce, body.encode(), str(values["id"]).encode())
        envelopes.append({"k": key_id, "n": base64.b64encode(nonce).decode(), "c": base64.b64encode(sealed).decode()})
    if envelopes:
        details[SEALED] = envelopes
    out["details"] = details
    return out


async def seal_all(session: AsyncSession, rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """`seal` for several entries' values, with one look-up of their owners' keys."""
    owners = [owners_of(v) for v in rows]
    keys = await keys_for(session, set().union(*owners)) if any(owners) else {}
    return [seal(v, keys) if o else v for v, o in zip(rows, owners, strict=True)]


@dataclass(frozen=True, slots=True)
class ReadableEntry:
    """An audit entry as a reader may see it: its personal fields opened where their keys exist, `[erased]`
    (and `erased`) where a person was erased. The stored row (what the chain hashes) is never changed."""

    id: str
    chain: str
    sequence: int
    organization_id: str | None
    at: datetime
    actor_type: str
    actor_id: str | None
    action: str
    resource_type: str | None
    resource_id: str | None
    result: str
    request_id: str
    ip: str | None
    user_agent: str | None
    details: dict[str, Any]
    previous_hash: str
    hash: str
    erased: bool = False


def _open(entry: AuditEntry, keys: dict[str, bytes]) -> ReadableEntry:
    details = copy.deepcopy(entry.details) if isinstance(entry.details, dict) else {}
    envelopes = details.pop(SEALED, None)
    columns: dict[str, Any] = {"ip": entry.ip, "user_agent": entry.user_agent}
    erased = False
    for envelope in envelopes if isinstance(envelopes, list) else []:
        key = keys.get(str(envelope.get("k")))
        body: dict[str, Any] | None = None
        if key is not None:
            try:
                nonce, sealed = base64.b64decode(envelope["n"]), base64.b64decode(envelope["c"])
                body = json.loads(AESGCM(key).decrypt(nonce, sealed, entry.id.encode()))
            except (InvalidTag, ValueError, KeyError, TypeError):
                body = None
        if body is None:
            erased = True
            continue
        columns.update(body.get("fields", {}))
        for path, value in body.get("details", []):
            try:
                _set(details, tuple(path), value)
            except (KeyError, IndexError, TypeError):
                continue
    if erased:
        details[ERASED_FLAG] = True
        _mark_erased(details)
    return ReadableEntry(
        id=entry.id,
        chain=entry.chain,
        sequence=entry.sequence,
        organization_id=entry.organization_id,
        at=entry.at,
        actor_type=entry.actor_type,
        actor_id=entry.actor_id,
        action=entry.action,
        resource_type=entry.resource_type,
        resource_id=entry.resource_id,
        result=entry.result,
        request_id=entry.request_id,
        ip=columns["ip"],
        user_agent=columns["user_agent"],
        details=details,
        previous_hash=entry.previous_hash,
        hash=entry.hash,
        erased=erased or ERASED_MARK in json.dumps(details),
    )


def _mark_erased(value: Any) -> None:
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for k, v in list(items):
        if v == SEALED_MARK:
            value[k] = ERASED_MARK
        else:
            _mark_erased(v)


async def readable_entries(session: AsyncSession, entries: Sequence[AuditEntry]) -> list[ReadableEntry]:
    """THE readable view of audit entries: every reader (the `auditLogs` field, reports, exports, streams)
    goes through it. One look-up of the keys the entries' envelopes name."""
    wanted = key_ids(entries)
    keys: dict[str, bytes] = {}
    if wanted:
        stmt = select(col(SubjectKey.id), col(SubjectKey.key)).where(
            col(SubjectKey.id).in_(sorted(wanted)), col(SubjectKey.key).is_not(None)
        )
        keys = {i: base64.b64decode(k) for i, k in (await session.execute(stmt)).all() if k is not None}
    return open_entries(entries, keys)


def key_ids(entries: Sequence[AuditEntry]) -> set[str]:
    """The ids of the keys the entries' envelopes were sealed under."""
    wanted: set[str] = set()
    for e in entries:
        envelopes = e.details.get(SEALED) if isinstance(e.details, dict) else None
        for envelope in envelopes if isinstance(envelopes, list) else []:
            if isinstance(envelope, dict) and "k" in envelope:
                wanted.add(str(envelope["k"]))
    return wanted


def open_entries(entries: Sequence[AuditEntry], keys: dict[str, bytes]) -> list[ReadableEntry]:
    """`readable_entries` given the keys (key id -> key) already read: what it returns, without I/O."""
    return [_open(e, keys) for e in entries]
