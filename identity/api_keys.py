"""API keys: the format, the stored hash, verification and the per-process cache.

A key reads `ptc_<env>_<prefix>_<secret>`. `prefix` (12 base62 characters) is public: it finds the
row and is shown in listings. `secret` is 32 random base62 characters from `secrets` (190 bits)
followed by a 6-character base62 CRC32 of everything before it, so a typo, a truncated key or a
scanner's false match is refused before any database lookup. Only HMAC-SHA256(pepper, secret) is
stored; at ≥112 bits of entropy a fast keyed hash is enough (ASVS 5.0 6.5.2's reasoning), and the
pepper never lives in the database. Hashes are compared with `hmac.compare_digest`.

Rotation keeps the row and its prefix: the new secret's hash replaces the current one and the old
hash moves to `previous_secret_hash` until the grace period ends. A key acts for its holder
(`held_by`): the member who last received its secret, by creating it or by rotating it. Its permissions
are its scopes intersected with what the holder may do now, and once the holder is no longer an active
member of the organization the key is refused like an unknown one: nobody keeps access through a key
after losing membership, whoever created the key.

Verified keys are cached by hash for a few seconds per process. Revoking or rotating a key announces
`apikey:<id>` on the revocation bus, a holder's role change or removal `user:<id>`, a custom role
change `org:<id>`; each drops the matching entries, so the cache never outlives a change on any
process by more than the bus's delivery time. Expiry and the end of a grace period are checked on
every request against the clock, cached or not.
"""

from __future__ import annotations

import contextlib
import hmac
import ipaddress
import logging
import re
import secrets
import time
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from hashlib import sha256

from sqlalchemy import select as sa_select
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from authz import AuthMethod, Principal, PrincipalKind, is_permission
from identity.sessions import ORG_KEY, USER_KEY, role_permissions
from store.background import Every
from store.db import Database
from store.models import ApiKey, Membership, Organization, User

log = logging.getLogger("portcullis.api_keys")

ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
PREFIX_LENGTH = 12
RANDOM_LENGTH = 32  # 32 * log2(62) ≈ 190 bits
CHECKSUM_LENGTH = 6  # 62**6 > 2**32
MAX_KEY_LENGTH = 80
KEY_PREFIX = "ptc_"
APIKEY_KEY = "apikey:"
_FORMAT = re.compile(
    rf"ptc_([a-z]{{2,8}})_([0-9A-Za-z]{{{PREFIX_LENGTH}}})_([0-9A-Za-z]{{{RANDOM_LENGTH + CHECKSUM_LENGTH}}})"
)


class ApiKeyFormatError(ValueError):
    """Not one of our keys: malformed, truncated, or a checksum that does not match."""


def apikey_key(key_id: str) -> str:
    """The revocation key that drops a key from every process's cache."""
    return APIKEY_KEY + key_id


def _random(length: int) -> str:
    return "".join(secrets.choice(ALPHABET) for _ in range(length))


def _base62(value: int, width: int) -> str:
    out = []
    for _ in range(width):
        value, digit = divmod(value, 62)
        out.append(ALPHABET[digit])
    return "".join(reversed(out))


def checksum(body: str) -> str:
    return _base62(zlib.crc32(body.encode("ascii")), CHECKSUM_LENGTH)


@dataclass(frozen=True, slots=True)
class ParsedKey:
    env: str
    prefix: str
    secret: str


def new_prefix() -> str:
    return _random(PREFIX_LENGTH)


def new_secret(env: str, prefix: str) -> str:
    """A complete key for an existing prefix; the caller shows it once and keeps only its hash."""
    body = f"{KEY_PREFIX}{env}_{prefix}_{_random(RANDOM_LENGTH)}"
    return body + checksum(body)


def parse(presented: str) -> ParsedKey:
    """The parts of a well-formed key with a matching checksum; `ApiKeyFormatError` otherwise."""
    if len(presented) > MAX_KEY_LENGTH:
        raise ApiKeyFormatError("too long")
    match = _FORMAT.fullmatch(presented)
    if match is None:
        raise ApiKeyFormatError("malformed")
    body, given = presented[:-CHECKSUM_LENGTH], presented[-CHECKSUM_LENGTH:]
    if not hmac.compare_digest(checksum(body), given):
        raise ApiKeyFormatError("checksum mismatch")
    return ParsedKey(env=match.group(1), prefix=match.group(2), secret=match.group(3))


def hash_secret(pepper: bytes, secret: str) -> str:
    return hmac.new(pepper, secret.encode("ascii"), sha256).hexdigest()


def env_label(env: str) -> str:
    """The `<env>` part of new keys: `live` in production, the environment's name otherwise."""
    return "live" if env == "prod" else env


# -- verification -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ApiKeyInfo:
    key_id: str
    organization_id: str
    holder_id: str
    plan: str
    scopes: frozenset[str]
    permissions: frozenset[str]
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
    rate_limit_per_minute: int | None
    expires_at: float | None
    # set when the presented secret is the previous one of a rotation: it stops at this time
    valid_until: float | None = None

    def allows(self, client_ip: str | None) -> bool:
        """True without an allowlist; otherwise only for an address inside one of its networks."""
        if not self.networks:
            return True
        if client_ip is None:
            return False
        try:
            ip = ipaddress.ip_address(client_ip)
        except ValueError:
            return False
        return any(ip.version == net.version and ip in net for net in self.networks)

    def principal(self, *, client_ip: str | None, request_id: str | None) -> Principal:
        return Principal(
            kind=PrincipalKind.API_KEY,
            subject_id=self.key_id,
            organization_id=self.organization_id,
            permissions=self.permissions,
            scopes=self.scopes,
            auth_method=AuthMethod.API_KEY,
            plan=self.plan,
            client_ip=client_ip,
            request_id=request_id,
        )


def _epoch(value: datetime | None) -> float | None:
    return None if value is None else value.timestamp()


def _networks(cidrs: Iterable[str]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(c, strict=False) for c in cidrs)


async def load_api_key(db: AsyncSession, parsed: ParsedKey, digest: str, now: datetime) -> ApiKeyInfo | None:
    """The key if it still counts: the secret matches (current, or previous within its grace period),
    not revoked, its organization exists, and its holder is still an active member there."""
    row = (
        await db.execute(
            sa_select(ApiKey, col(Organization.plan), col(Membership.role), col(User.is_active))
            .join(Organization, col(Organization.id) == col(ApiKey.organization_id))
            .outerjoin(
                Membership,
                (col(Membership.organization_id) == col(ApiKey.organization_id))
                & (col(Membership.user_id) == col(ApiKey.held_by)),
            )
            .outerjoin(User, col(User.id) == col(ApiKey.held_by))
            .where(col(ApiKey.prefix) == parsed.prefix)
        )
    ).first()
    if row is None:
        return None
    key, plan, role, active = row
    valid_until: float | None = None
    if hmac.compare_digest(digest, key.secret_hash):
        pass
    elif (
        key.previous_secret_hash is not None
        and hmac.compare_digest(digest, key.previous_secret_hash)
        and key.previous_expires_at is not None
        and key.previous_expires_at > now
    ):
        valid_until = _epoch(key.previous_expires_at)
    else:
        return None
    if key.revoked_at is not None or role is None or not active:
        return None
    scopes = frozenset(s for s in key.scopes if is_permission(s))
    return ApiKeyInfo(
        key_id=key.id,
        organization_id=key.organization_id,
        holder_id=key.held_by,
        plan=plan,
        scopes=scopes,
        permissions=scopes & await role_permissions(db, key.organization_id, role),
        networks=_networks(key.allowed_ips),
        rate_limit_per_minute=key.rate_limit_per_minute,
        expires_at=_epoch(key.expires_at),
        valid_until=valid_until,
    )


class ApiKeyCache:
    """Verified keys by the hash of their secret, for `ttl` seconds, dropped on any announcement."""

    def __init__(
        self, ttl_seconds: float = 10.0, max_entries: int = 50_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.ttl = ttl_seconds
        self.max_entries = max_entries
        self.clock = clock
        self._entries: dict[str, tuple[float, ApiKeyInfo]] = {}
        self.epoch = 0

    def get(self, digest: str) -> ApiKeyInfo | None:
        entry = self._entries.get(digest)
        if entry is None:
            return None
        if self.clock() > entry[0]:
            self._entries.pop(digest, None)
            return None
        return entry[1]

    def put(self, digest: str, info: ApiKeyInfo, epoch: int) -> None:
        if epoch != self.epoch or self.ttl <= 0:
            return
        if len(self._entries) >= self.max_entries:
            self._entries.clear()
        self._entries[digest] = (self.clock() + self.ttl, info)

    def invalidate(self, keys: list[str]) -> None:
        """Drop by `apikey:<id>`, a holder's `user:<id>`, an `org:<id>`, or everything (`*`)."""
        self.epoch += 1
        if "*" in keys:
            self._entries.clear()
            return
        ids = {k.removeprefix(APIKEY_KEY) for k in keys if k.startswith(APIKEY_KEY)}
        users = {k.removeprefix(USER_KEY) for k in keys if k.startswith(USER_KEY)}
        orgs = {k.removeprefix(ORG_KEY) for k in keys if k.startswith(ORG_KEY)}
        if not (ids or users or orgs):
            return
        stale = [
            digest
            for digest, (_, info) in self._entries.items()
            if info.key_id in ids or info.holder_id in users or info.organization_id in orgs
        ]
        for digest in stale:
            self._entries.pop(digest, None)


class ApiKeyRejected(Exception):
    """The key does not authenticate; `reason` is for logs only."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ApiKeyVerifier:
    def __init__(
        self, db: Database, pepper: bytes, env: str, cache: ApiKeyCache, clock: Callable[[], float] = time.time
    ) -> None:
        self.db = db
        self.pepper = pepper
        self.env = env_label(env)
        self.cache = cache
        self.clock = clock

    async def verify(self, presented: str) -> ApiKeyInfo:
        try:
            parsed = parse(presented)
        except ApiKeyFormatError as exc:
            raise ApiKeyRejected(f"api key: {exc}") from None
        if parsed.env != self.env:
            raise ApiKeyRejected("api key: another environment's key")
        digest = hash_secret(self.pepper, parsed.secret)
        info = self.cache.get(digest)
        now = self.clock()
        if info is None:
            epoch = self.cache.epoch
            async with self.db.session() as db:
                info = await load_api_key(db, parsed, digest, datetime.fromtimestamp(now, UTC))
            if info is None:
                raise ApiKeyRejected("api key: unknown, revoked, or its holder left")
            self.cache.put(digest, info, epoch)
        if info.expires_at is not None and info.expires_at <= now:
            raise ApiKeyRejected("api key: expired")
        if info.valid_until is not None and info.valid_until <= now:
            raise ApiKeyRejected("api key: rotated secret past its grace period")
        return info


# -- lastUsedAt ---------------------------------------------------------------------------------------


class LastUsedRecorder:
    """Notes key use in memory, at most once per `interval` per key, and writes it in the background.

    The request path only touches a dict; `run()` (started by the lifespan) flushes every
    `flush_seconds`, and `stop()` flushes what is left, so a restart loses nothing already noted.
    """

    def __init__(
        self,
        db: Database,
        *,
        interval_seconds: float = 60.0,
        flush_seconds: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.db = db
        self.interval = interval_seconds
        self.flush_seconds = flush_seconds
        self.clock = clock
        self._noted: dict[str, float] = {}
        self._pending: dict[str, float] = {}
        self._every = Every(
            flush_seconds,
            self.flush,
            name="portcullis-apikey-last-used",
            failure="could not record api key use",
            logger=log,
        )

    def record(self, key_id: str) -> None:
        now = self.clock()
        if now - self._noted.get(key_id, float("-inf")) < self.interval:
            return
        if len(self._noted) > 100_000:
            self._noted.clear()
        self._noted[key_id] = now
        self._pending[key_id] = now

    @property
    def pending(self) -> dict[str, float]:
        return dict(self._pending)

    async def flush(self) -> int:
        pending, self._pending = self._pending, {}
        if not pending:
            return 0
        async with self.db.transaction() as db:
            for key_id, at in pending.items():
                when = datetime.fromtimestamp(at, UTC)
                await db.execute(
                    update(ApiKey)
                    .where(col(ApiKey.id) == key_id)
                    .where(col(ApiKey.last_used_at).is_(None) | (col(ApiKey.last_used_at) < when))
                    .values(last_used_at=when)
                )
        return len(pending)

    def start(self) -> None:
        self._every.start()

    async def stop(self) -> None:
        await self._every.stop()  # a flush under way finishes; then what is left is written
        with contextlib.suppress(Exception):
            await self.flush()
