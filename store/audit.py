"""The audit writer and verifier: one append-only table, one hash chain per tenant.

Each tenant's entries (`chain` = the organization id, or `platform` for events outside any tenant) are
numbered 1, 2, 3, ... without gaps, and linked:

    hash_n = sha256(hash_{n-1} + "|" + n + "|" + canonical_json(entry_n))      hash_0 = "0" * 64

(the sha256 of the UTF-8 text, in lowercase hex; `n` in decimal) where the canonical JSON holds every
stored field of the entry except `id`, `sequence` and the hashes (sorted keys, no whitespace, ASCII only,
times as UTC ISO 8601 with microseconds and a `Z`). It is derived from the row's own columns, so the
verifier recomputes it from what is stored.

An entry is appended by ONE statement, `INSERT INTO audit_log ... SELECT ... FROM audit_chain_heads`,
which reads the chain's head row (its sequence and hash), numbers the entry, and computes the hash in
the database (PostgreSQL's `sha256`; on SQLite the `portcullis_sha256` function store.db registers on
each connection). A trigger on audit_log (migration 0008) then advances the head row in the same
statement. On PostgreSQL the SELECT locks the head row (`FOR UPDATE`), so concurrent appenders of one
chain, in one process or many, wait for each other and each reads the head its predecessor left; on
SQLite the insert takes the database's write lock. Only the first entry of a chain costs more: the head
row does not exist yet, so the insert adds nothing, the head row is created and the insert repeated.
Everything runs in the caller's transaction: an entry whose transaction rolls back leaves no trace, not
even a gap.

The verifier recomputes each chain from its first entry and names the first sequence where the stored
chain disagrees with itself (a changed row, a missing row, an inserted row). A truncated tail, or a
chain rewritten from scratch, agrees with itself: only a checkpoint kept outside the database (the
signed heads `portcullis audit checkpoint` writes) reveals it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import unicodedata
import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import String, Text, bindparam, cast, func, insert, literal, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from store.cursors import decode_position, encode_position
from store.db import SQLITE_SHA256, transaction_connection
from store.models import AuditChainHead, AuditEntry, new_ordered_id, utcnow

GENESIS_HASH = "0" * 64
PLATFORM_CHAIN = "platform"


class AuditResult(StrEnum):
    SUCCESS = "success"
    DENIED = "denied"
    ERROR = "error"


class ActorType(StrEnum):
    ANONYMOUS = "anonymous"
    USER = "user"
    API_KEY = "api_key"
    SYSTEM = "system"


class AuditAction(StrEnum):
    """The event vocabulary (OWASP Logging Vocabulary names where one exists)."""

    # authentication
    AUTHN_LOGIN_SUCCESS = "authn_login_success"
    AUTHN_LOGIN_FAIL = "authn_login_fail"
    AUTHN_LOGIN_LOCK = "authn_login_lock"
    AUTHN_LOGIN_UNLOCK = "authn_login_unlock"
    AUTHN_TOKEN_REFRESH = "authn_token_refresh"
    AUTHN_TOKEN_REUSE = "authn_token_reuse"
    AUTHN_LOGOUT = "authn_logout"
    AUTHN_SSO_SUCCESS = "authn_sso_success"
    AUTHN_SSO_FAIL = "authn_sso_fail"
    AUTHN_MFA_ENROLL = "authn_mfa_enroll"
    AUTHN_MFA_ENROLL_STARTED = "authn_mfa_enroll_started"
    AUTHN_MFA_FAIL = "authn_mfa_fail"
    AUTHN_MFA_DISABLE = "authn_mfa_disable"
    AUTHN_PASSWORD_CHANGE = "authn_password_change"
    AUTHN_INVITATION_ACCEPTED = "authn_invitation_accepted"
    AUTHN_PASSWORD_RESET_REQUESTED = "authn_password_reset_requested"
    AUTHN_PASSWORD_RESET = "authn_password_reset"
    AUTHN_EMAIL_VERIFIED = "authn_email_verified"
    AUTHN_EMAIL_CHANGE_REQUESTED = "authn_email_change_requested"
    AUTHN_EMAIL_CHANGED = "authn_email_changed"
    AUTHN_SSO_LINK_STARTED = "authn_sso_link_started"
    AUTHN_SSO_LINKED = "authn_sso_linked"
    # API keys
    APIKEY_CREATED = "apikey_created"
    APIKEY_ROTATED = "apikey_rotated"
    APIKEY_REVOKED = "apikey_revoked"
    APIKEY_USE_DENIED = "apikey_use_denied"
    # authorization
    AUTHZ_FAIL = "authz_fail"
    AUTHZ_CROSS_TENANT = "authz_cross_tenant"
    AUTHZ_CHANGE = "authz_change"
    PRIVILEGE_ROLE_CREATED = "privilege_role_created"
    PRIVILEGE_PERMISSIONS_CHANGED = "privilege_permissions_changed"
    PRIVILEGE_ROLE_DELETED = "privilege_role_deleted"
    # tenants and members
    ORG_CREATED = "org_created"
    ORG_UPDATED = "org_updated"
    PLAN_CHANGED = "plan_changed"
    USER_CREATED = "user_created"
    MEMBER_ADDED = "member_added"
    MEMBER_INVITED = "member_invited"
    INVITATION_RESENT = "invitation_resent"
    INVITATION_REVOKED = "invitation_revoked"
    DOMAIN_CLAIMED = "domain_claimed"
    DOMAIN_RELEASED = "domain_released"
    MEMBER_REMOVED = "member_removed"
    SSO_CONFIGURED = "sso_configured"
    REPORT_GENERATED = "report_generated"
    # limits
    EXCESS_RATE_LIMIT_EXCEEDED = "excess_rate_limit_exceeded"
    # a mutation the vocabulary does not name yet (recorded all the same)
    MUTATION = "mutation"


ACTIONS: frozenset[str] = frozenset(a.value for a in AuditAction)

# Column limits (store.models.AuditEntry); a value is truncated to them, never refused.
LIMITS = {"actor_type": 20, "actor_id": 64, "action": 64, "resource_type": 40, "resource_id": 64,
          "result": 10, "request_id": 64, "ip": 45, "user_agent": 256}
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
    return {k: {"old": old.get(k), "new": new.get(k)} for k in sorted(set(old) | set(new))
            if old.get(k) != new.get(k)}


def iso(moment: datetime) -> str:
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    return moment.isoformat(timespec="microseconds") + "Z"


@dataclass(slots=True)
class AuditEvent:
    """An entry before it is chained: what happened, to what, by whom, with what outcome."""

    action: str
    result: str = AuditResult.SUCCESS
    organization_id: str | None = None
    actor_type: str = ActorType.SYSTEM
    actor_id: str | None = None
    resource_type: str | None = None
    resource_id: str | None = None
    request_id: str | None = None
    ip: str | None = None
    user_agent: str | None = None
    details: Mapping[str, Any] = field(default_factory=dict)

    @property
    def chain(self) -> str:
        return self.organization_id or PLATFORM_CHAIN


_CANONICAL = ("chain", "organization_id", "actor_type", "actor_id", "action", "resource_type", "resource_id",
              "result", "request_id", "ip", "user_agent", "details")


# sorted keys, no whitespace, ASCII only, no NaN: one encoder for every entry
_CANONICAL_JSON = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def _canonical(values: Mapping[str, Any]) -> str:
    body = {name: values[name] for name in _CANONICAL}
    body["at"] = iso(values["at"])
    return _CANONICAL_JSON.encode(body)


def canonical_json(entry: AuditEntry) -> str:
    """The entry's stored fields but `id`, `sequence` and the hashes, as the chain hashes them."""
    return _canonical({name: getattr(entry, name) for name in (*_CANONICAL, "at")})


def link_hash(previous_hash: str, sequence: int, body: str) -> str:
    """sha256(previous_hash | sequence | body), hex: the same text the append statement hashes in SQL."""
    return hashlib.sha256(f"{previous_hash}|{sequence}|{body}".encode()).hexdigest()


def entry_hash(previous_hash: str, entry: AuditEntry) -> str:
    return link_hash(previous_hash, entry.sequence, canonical_json(entry))


RESULTS: frozenset[str] = frozenset(r.value for r in AuditResult)


def _values(event: AuditEvent, at: datetime) -> dict[str, Any]:
    """The entry's columns but the chain links, cleaned and bounded."""
    result = event.result
    if result not in RESULTS:
        raise ValueError(f"unknown audit result {result!r}")
    return {
        "id": new_ordered_id(), "chain": event.chain, "organization_id": event.organization_id, "at": at,
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
        "details": clean_details(dict(event.details)),
    }


def build_entry(event: AuditEvent, *, sequence: int, previous_hash: str, at: datetime) -> AuditEntry:
    """The entry to store, its values cleaned and bounded, linked to `previous_hash`."""
    values = _values(event, at)
    return AuditEntry(**values, sequence=sequence, previous_hash=previous_hash,
                      hash=link_hash(previous_hash, sequence, _canonical(values)))


# the columns the append statement binds (everything but the chain links, which come from the head row)
_BOUND = ("id", "chain", "organization_id", "at", "actor_type", "actor_id", "action", "resource_type",
          "resource_id", "result", "request_id", "ip", "user_agent", "details")
_APPEND: dict[str, Any] = {}


def _append_statement(dialect: str) -> Any:
    """INSERT INTO audit_log (...) SELECT :id, ..., h.sequence + 1, h.hash, <hash> FROM audit_chain_heads h
    WHERE h.chain = :chain [FOR UPDATE] RETURNING sequence, previous_hash, hash (built once per dialect)."""
    stmt = _APPEND.get(dialect)
    if stmt is not None:
        return stmt
    log_table = AuditEntry.__table__  # type: ignore[attr-defined]
    heads_table = AuditChainHead.__table__  # type: ignore[attr-defined]
    sequence = heads_table.c.sequence + 1
    text_ = (heads_table.c.hash + literal("|") + cast(sequence, Text) + literal("|")
             + bindparam("body", type_=Text))
    if dialect == "postgresql":
        digest = func.encode(func.sha256(func.convert_to(text_, literal("UTF8"))), literal("hex"))
    else:
        digest = getattr(func, SQLITE_SHA256)(text_, type_=String)
    columns = [bindparam(name, type_=log_table.c[name].type) for name in _BOUND]
    source = (select(*columns, sequence, heads_table.c.hash, digest)
              .where(heads_table.c.chain == bindparam("chain_key", type_=heads_table.c.chain.type)))
    if dialect == "postgresql":
        source = source.with_for_update()
    stmt = (insert(log_table).from_select([*_BOUND, "sequence", "previous_hash", "hash"], source)
            .returning(log_table.c.sequence, log_table.c.previous_hash, log_table.c.hash))
    _APPEND[dialect] = stmt
    return stmt


async def _create_head(session: AsyncSession, dialect: str, chain: str) -> None:
    """The chain's head row at the genesis, unless another transaction has just created it."""
    insert_ = postgresql.insert if dialect == "postgresql" else sqlite.insert
    table = AuditChainHead.__table__  # type: ignore[attr-defined]
    await session.execute(
        insert_(table).values(chain=chain, sequence=0, hash=GENESIS_HASH, updated_at=utcnow())
        .on_conflict_do_nothing(index_elements=["chain"])
    )


class _DriverAppend:
    """The append statement compiled once per engine (its dialect) and run on the driver connection under the
    session's transaction: one call (aiosqlite's `execute_fetchall`: the statement and its RETURNING rows
    in one trip to the connection's thread, where SQLAlchemy's cursor takes four; psycopg's `execute`:
    one round trip without SQLAlchemy's execution layer). The values go through the bind processors
    SQLAlchemy would apply (SQLite's DATETIME text, the JSON of the details), so the row reads back
    exactly as it would have."""

    def __init__(self, stmt: Any, dialect: Any) -> None:
        compiled = stmt.compile(dialect=dialect)
        self.sql = str(compiled)
        # the same statement without its RETURNING clause (the same parameters, in the same order)
        self.sql_unreturned = self.sql.rsplit(" RETURNING ", 1)[0]
        self.positional = compiled.positiontup is not None
        names = list(compiled.positiontup) if compiled.positiontup is not None else list(compiled.binds)
        # the statement's own literals ("|", the 1 of sequence + 1); everything else comes with the entry
        self.constants = {name: compiled.binds[name].effective_value for name in names
                          if name not in (*_BOUND, "chain_key", "body")}
        self.binds = [(name, compiled.binds[name].type.dialect_impl(dialect).bind_processor(dialect))
                      for name in names]

    def parameters(self, values: Mapping[str, Any]) -> list[Any] | dict[str, Any]:
        merged = {**self.constants, **values}
        if self.positional:
            return [merged[name] if process is None else process(merged[name]) for name, process in self.binds]
        return {name: merged[name] if process is None else process(merged[name]) for name, process in self.binds}

    async def run(self, driver: Any, values: Mapping[str, Any], *, commit: bool = False,
                  returning: bool = True) -> Any:
        """(sequence, previous_hash, hash), or None when the chain has no head row yet. `commit`: on
        aiosqlite, the transaction commits in the same trip when the entry was written (see `append`);
        there, without `returning`, the statement returns no row and the answer is only whether it wrote
        one (SQLite then keeps no table of the rows to return)."""
        if hasattr(driver, "execute_fetchall"):  # aiosqlite
            if commit and hasattr(driver, "_execute"):
                sql = self.sql if returning else self.sql_unreturned
                return await driver._execute(_append_and_commit, driver, sql, self.parameters(values), returning)
            rows = await driver.execute_fetchall(self.sql, self.parameters(values))
        else:  # psycopg
            rows = await (await driver.execute(self.sql, self.parameters(values))).fetchall()
        return rows[0] if rows else None


def _append_and_commit(driver: Any, sql: str, parameters: Any, returning: bool) -> Any:
    """On aiosqlite's connection thread: the append statement, then COMMIT if it wrote the entry."""
    connection = driver._conn
    cursor = connection.execute(sql, parameters)
    if returning:
        rows = cursor.fetchall()
        written = rows[0] if rows else None
    else:
        written = True if cursor.rowcount == 1 else None
    if written is not None:
        connection.commit()
    return written


# per dialect object, i.e. per engine: the bind processors are that engine's (its JSON serializer, say)
_DRIVER_APPEND: weakref.WeakKeyDictionary[Any, _DriverAppend] = weakref.WeakKeyDictionary()
_DRIVERS = ("aiosqlite", "psycopg")
_DRIVER_TYPES: dict[type, bool] = {}  # driver connection class: one this module can talk to directly


def _driver(session: AsyncSession) -> Any:
    """The driver connection (aiosqlite or psycopg) under the session's open transaction, or None."""
    connection = transaction_connection(session)
    if connection is None:
        return None
    # the transaction's connection is checked out and live: reading its DBAPI connection does no I/O
    driver = connection.connection.driver_connection
    kind = type(driver)
    known = _DRIVER_TYPES.get(kind)
    if known is None:
        known = _DRIVER_TYPES[kind] = kind.__module__.split(".")[0] in _DRIVERS
    return driver if known else None


async def _insert(session: AsyncSession, dialect: Any, params: dict[str, Any], *, commit: bool = False,
                  returning: bool = True) -> Any:
    """The append statement for one entry: its (sequence, previous_hash, hash), or None without a head row
    (`commit`: see `append`; without `returning`, a true value instead of the row when it was written)."""
    driver = _driver(session)
    if driver is None:
        await session.connection()  # begins the transaction, so that the driver call joins it
        driver = _driver(session)
    if driver is not None:
        prepared = _DRIVER_APPEND.get(dialect)
        if prepared is None:
            prepared = _DRIVER_APPEND[dialect] = _DriverAppend(_append_statement(dialect.name), dialect)
        return await prepared.run(driver, params, commit=commit, returning=returning)
    return (await session.execute(_append_statement(dialect.name), params)).first()


async def append(session: AsyncSession, events: Iterable[AuditEvent], *, now: datetime | None = None,
                 entries: bool = True, commit: bool = False) -> list[AuditEntry]:
    """Chain and insert `events` in the session's transaction; they commit (or roll back) with it.

    One statement per entry (two more for a chain's very first entry). Call it last in a unit of work,
    just before the commit: on PostgreSQL the chain's head row stays locked until then. Returns the
    entries as stored, unless `entries=False` (writers that do not read them skip building them).

    `commit=True` says the caller commits right after: on SQLite the transaction then commits in the
    same trip to the connection's thread as the last entry, once it is written, and the session's
    `commit()` that follows has nothing left to send (see `store.db.skip_idle_transaction_ends`). The
    caller must commit after it, never roll back; if the append fails, nothing was committed.
    """
    by_chain: dict[str, list[AuditEvent]] = {}
    for event in events:
        by_chain.setdefault(event.chain, []).append(event)
    if not by_chain:
        return []
    bind = session.bind
    if bind is None:
        raise RuntimeError("the audit log needs a session bound to the database")
    dialect = bind.dialect
    # what the unit of work has pending goes first, as it would before a statement through the session
    pending = session.sync_session
    if pending.new or pending.dirty or pending.deleted:
        await session.flush()
    written: list[AuditEntry] = []
    last = by_chain[max(by_chain)][-1]
    # one lock order for every transaction: no deadlock between two that append to the same two chains
    for chain in sorted(by_chain):
        at = now or utcnow()
        for event in by_chain[chain]:
            params = _values(event, at)
            params["chain_key"] = chain
            params["body"] = _canonical(params)
            row = await _insert(session, dialect, params, commit=commit and event is last, returning=entries)
            if row is None:  # the chain's first entry: no head row yet
                await _create_head(session, dialect.name, chain)
                row = await _insert(session, dialect, params, commit=commit and event is last, returning=entries)
                if row is None:
                    raise RuntimeError(f"audit chain {chain!r} has no head row")
            if entries:
                del params["chain_key"], params["body"]
                written.append(AuditEntry(**params, sequence=int(row[0]), previous_hash=str(row[1]),
                                          hash=str(row[2])))
    return written


# --- verification ------------------------------------------------------------------------------


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

    def _broken(self, sequence: int, problem: str) -> None:
        if self.first_broken_sequence is None or sequence < self.first_broken_sequence:
            self.first_broken_sequence = sequence
        if len(self.problems) < 20:
            self.problems.append(problem)

    def as_dict(self) -> dict[str, Any]:
        return {"chain": self.chain, "ok": self.ok, "checked": self.checked, "headSequence": self.head_sequence,
                "headHash": self.head_hash, "firstBrokenSequence": self.first_broken_sequence,
                "gaps": [list(g) for g in self.gaps], "problems": self.problems}


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
        return {"ok": self.ok, "checked": self.checked, "firstBrokenSequence": self.first_broken_sequence,
                "chains": [c.as_dict() for c in sorted(self.chains.values(), key=lambda c: c.chain)]}


class ChainVerifier:
    """Fed one chain's entries in sequence order; `start_sequence`/`start_hash` resume from a trusted
    point (1 and the genesis hash for a whole chain; for a partial range, the first entry's own link)."""

    def __init__(self, chain: str, *, whole: bool = True) -> None:
        self.report = ChainReport(chain)
        self._whole = whole
        self._expected_sequence: int | None = 1 if whole else None
        self._previous: str | None = GENESIS_HASH if whole else None

    def feed(self, entry: AuditEntry) -> None:
        self._link(entry.sequence, entry.previous_hash, entry.hash, entry_hash(entry.previous_hash, entry))

    def feed_row(self, row: Any) -> None:
        """One entry as `verify` reads it: its columns `VERIFIED_COLUMNS`, in that order."""
        self._link(row[_SEQUENCE], row[_PREVIOUS], row[_HASH], _row_hash(row))

    def _link(self, seq: int, previous_hash: str, hash_: str, recomputed: str) -> None:
        r = self.report
        r.checked += 1
        if self._expected_sequence is not None and seq != self._expected_sequence:
            if seq > self._expected_sequence:
                r.gaps.append((self._expected_sequence, seq - 1))
                r._broken(self._expected_sequence,
                          f"sequence gap: {self._expected_sequence}..{seq - 1} missing before {seq}")
            else:
                r._broken(seq, f"sequence {seq} out of order or duplicated")
        if self._previous is not None and previous_hash != self._previous:
            r._broken(seq, f"sequence {seq}: previous_hash does not match the hash of the entry before it")
        if recomputed != hash_:
            r._broken(seq, f"sequence {seq}: content does not match its hash")
        self._expected_sequence = seq + 1
        # continue from the stored hash, so one edited row is reported once, not for every row after it
        self._previous = hash_
        r.head_sequence, r.head_hash = seq, hash_

    def against_head(self, sequence: int, hash_: str, source: str) -> None:
        """Compare with a head recorded elsewhere (the head row, or a checkpoint)."""
        r = self.report
        if sequence > r.head_sequence:
            r._broken(r.head_sequence + 1,
                      f"chain ends at {r.head_sequence} but the {source} records sequence {sequence}: "
                      "entries were removed from the end")
        elif sequence == r.head_sequence and hash_ != r.head_hash:
            r._broken(sequence, f"head hash at {sequence} differs from the {source}")


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
VERIFIED_COLUMNS = (*_CANONICAL, "at", "sequence", "previous_hash", "hash")
_CHAIN, _AT, _SEQUENCE, _PREVIOUS, _HASH = (VERIFIED_COLUMNS.index(n)
                                            for n in ("chain", "at", "sequence", "previous_hash", "hash"))


def _row_hash(row: Any) -> str:
    """`entry_hash` of a row of VERIFIED_COLUMNS."""
    body = dict(zip(_CANONICAL, row, strict=False))
    body["at"] = iso(row[_AT])
    return link_hash(row[_PREVIOUS], row[_SEQUENCE], _CANONICAL_JSON.encode(body))


def _within(stmt: Any, chain: Any, at: Any, chains: list[str] | None, start: datetime | None = None,
            end: datetime | None = None) -> Any:
    if chains is not None:
        stmt = stmt.where(chain.in_(chains))
    if start is not None:
        stmt = stmt.where(at >= _naive(start))
    if end is not None:
        stmt = stmt.where(at < _naive(end))
    return stmt


async def entries_to_verify(session: AsyncSession, *, chains: Iterable[str] | None = None,
                            start: datetime | None = None, end: datetime | None = None) -> int:
    """How many entries `verify` with the same arguments reads, known without reading them: the sum of the
    chains' head sequences for whole chains (one row per chain), an index-only count over (chain, at) for
    a time range. What the work is priced by (C-130)."""
    wanted = None if chains is None else sorted(set(chains))
    if start is None and end is None:
        heads = _within(select(func.coalesce(func.sum(col(AuditChainHead.sequence)), 0)),
                        col(AuditChainHead.chain), None, wanted)
        return int((await session.execute(heads)).scalar_one())
    table = AuditEntry.__table__  # type: ignore[attr-defined]
    counted = _within(select(func.count()).select_from(table), table.c.chain, table.c.at, wanted, start, end)
    return int((await session.execute(counted)).scalar_one())


async def verify(
    session: AsyncSession, *, chains: Iterable[str] | None = None, checkpoint: Iterable[ChainHead] = (),
    start: datetime | None = None, end: datetime | None = None,
) -> VerificationReport:
    """Recompute the chains (all of them, or `chains`) and compare them with their head rows and with
    `checkpoint` (heads recorded outside the database). With `start`/`end`, only the entries in that
    time range are checked, each linked to the one before it."""
    report = VerificationReport()
    whole = start is None and end is None
    wanted = None if chains is None else sorted(set(chains))
    table = AuditEntry.__table__  # type: ignore[attr-defined]
    stmt = _within(select(*(table.c[name] for name in VERIFIED_COLUMNS)), table.c.chain, table.c.at, wanted,
                   start, end).order_by(table.c.chain, table.c.sequence)
    verifiers: dict[str, ChainVerifier] = {}
    current: ChainVerifier | None = None
    result = await session.stream(stmt.execution_options(yield_per=VERIFY_BATCH))
    async for batch in result.partitions():
        for row in batch:
            if current is None or current.report.chain != row[_CHAIN]:
                current = verifiers[row[_CHAIN]] = ChainVerifier(row[_CHAIN], whole=whole)
            current.feed_row(row)
        await asyncio.sleep(0)  # other requests run between batches
    if whole:
        head_stmt = select(AuditChainHead)
        if wanted is not None:
            head_stmt = head_stmt.where(col(AuditChainHead.chain).in_(wanted))
        for head in (await session.execute(head_stmt)).scalars():
            v = verifiers.setdefault(head.chain, ChainVerifier(head.chain))
            v.against_head(head.sequence, head.hash, "chain head row")
        for point in checkpoint:
            if wanted is not None and point.chain not in wanted:
                continue
            v = verifiers.setdefault(point.chain, ChainVerifier(point.chain))
            v.against_head(point.sequence, point.hash, "checkpoint")
    if wanted is not None:
        for chain in wanted:
            verifiers.setdefault(chain, ChainVerifier(chain))
    report.chains = {c: v.report for c, v in verifiers.items()}
    return report


async def heads(session: AsyncSession, *, verified: bool = True) -> tuple[list[ChainHead], VerificationReport | None]:
    """Each chain's head as the entries themselves give it (recomputed when `verified`)."""
    if verified:
        report = await verify(session)
        return [ChainHead(c.chain, c.head_sequence, c.head_hash) for c in report.chains.values()
                if c.head_sequence > 0], report
    rows = (await session.execute(select(AuditChainHead))).scalars()
    return [ChainHead(h.chain, h.sequence, h.hash) for h in rows], None


def _naive(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(tzinfo=None) if moment.tzinfo is not None else moment


# --- cursors -----------------------------------------------------------------------------------


CURSOR_VERSION = "a1"


def encode_cursor(entry: AuditEntry) -> str:
    return encode_position(CURSOR_VERSION, entry.at, entry.id)


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """The (at, id) after which the next page starts; `CursorError` when the cursor is not ours."""
    return decode_position(cursor, CURSOR_VERSION)


# --- writing outside a request's unit of work ----------------------------------------------------


class AuditTrail:
    """Entries that commit on their own: authentication events, denials and failures, which happen in
    requests that roll back or write nothing. Built once per process (`Services.audit`)."""

    def __init__(self, db: Any) -> None:
        self.db = db

    async def record(self, *events: AuditEvent) -> None:
        if not events:
            return
        async with self.db.transaction() as session:
            await append(session, events, entries=False)


@dataclass
class _Refusals:
    count: int
    first: AuditEvent


class RateLimitAudit:
    """Rate-limit refusals, one entry per (tenant, key, minute) with the count, not one per request.

    `refused(...)` only counts, in memory; `flush()` writes the minutes that have ended (and, with
    `everything=True` at shutdown, the current one too). Each process writes its own counts; in shared
    mode with Redis the counts of every process are added up under one key per (tenant, key, minute)
    and written by the process that saw the minute's first refusal, so one row per minute remains.
    """

    def __init__(self, trail: AuditTrail, *, redis: Any = None, clock: Any = None) -> None:
        import time

        self.trail = trail
        self.redis = redis
        self.clock = clock or time.time
        self._pending: dict[tuple[str, str, int], _Refusals] = {}
        self._task: Any = None

    @staticmethod
    def _redis_key(chain: str, key: str, minute: int) -> str:
        return f"portcullis:audit:ratelimit:{{{chain}}}:{key}:{minute}"

    async def refused(self, event: AuditEvent, *, key: str) -> None:
        """Count one refused request. `key` names the limited thing (`tenant`, `api_key:<id>`,
        `ip:<address>`); `event` carries who and where (its action and result are set here)."""
        event.action, event.result = AuditAction.EXCESS_RATE_LIMIT_EXCEEDED, AuditResult.DENIED
        minute = int(self.clock() // 60)
        slot = (event.chain, clean_text(key, 120), minute)
        if self.redis is not None:
            rkey = self._redis_key(*slot)
            pipe = self.redis.pipeline(transaction=False)
            pipe.incr(rkey)
            pipe.expire(rkey, 600)
            total, _ = await pipe.execute()
            if int(total) == 1:
                self._pending[slot] = _Refusals(0, event)
            return
        pending = self._pending.get(slot)
        if pending is None:
            self._pending[slot] = _Refusals(1, event)
        else:
            pending.count += 1

    def start(self, interval_seconds: float = 10.0) -> None:
        import asyncio

        if self._task is not None and not self._task.done():
            return

        async def run() -> None:
            while True:
                await asyncio.sleep(interval_seconds)
                try:
                    await self.flush()
                except Exception:
                    logging.getLogger("portcullis.audit").exception("rate-limit audit entries not written")

        self._task = asyncio.get_running_loop().create_task(run())

    async def stop(self) -> None:
        import asyncio
        import contextlib

        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.flush(everything=True)

    async def flush(self, *, everything: bool = False) -> int:
        """Write the finished minutes; the number of entries written."""
        current = int(self.clock() // 60)
        due = [s for s in self._pending if everything or s[2] < current]
        events = []
        for slot in sorted(due, key=lambda s: (s[2], s[0], s[1])):
            pending = self._pending.pop(slot)
            count = pending.count
            if self.redis is not None:
                count = int(await self.redis.getdel(self._redis_key(*slot)) or 0)
                if count == 0:
                    continue
            event = pending.first
            started = datetime.fromtimestamp(slot[2] * 60, UTC)
            event.details = {**dict(event.details), "key": slot[1], "refused": count, "minute": iso(started)}
            events.append(event)
        if events:
            await self.trail.record(*events)
        return len(events)
