"""Blocked addresses, held in memory on every process and checked on the request path.

The active rows of `address_blocks` (not lifted, not expired) are read into a `BlockMatcher`: per IP
version, the blocked ranges merged and sorted, so that a check is one `bisect` over integers. Platform-wide
blocks are one such list; a tenant's blocks one list per organization, looked up by the caller's
organization once it is known. With no block at all a check costs nothing but an attribute read.

`AddressBlocks` owns the current matcher and replaces it whole when the rows change: a change is announced
on the revocation bus as `blocks:changed` (every process hears it within a second in shared mode), a
lost subscription (`*`) reloads too, and a periodic reload is the safety net. A block whose expiry has
passed stops refusing at once: a matcher that finds a match after its earliest expiry is rebuilt first.
Addresses on the allowlist are never refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import logging
import socket
import time
from bisect import bisect_right
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from sqlalchemy import or_, select
from sqlmodel import col

from store.background import Every
from store.db import Database
from store.models import utcnow
from store.security import AddressBlock

log = logging.getLogger("portcullis.blocks")

BLOCKS_KEY = "blocks:changed"
# what a refused caller is told, whichever block it was: the reason is the blocker's business
BLOCKED_MESSAGE = "Requests from this address are blocked."
_MAPPED_PREFIX = b"\x00" * 10 + b"\xff\xff"

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
AddressKey = tuple[int, int]  # (IP version, the address as an integer)


def address_key(text: str | None) -> AddressKey | None:
    """The address as (version, integer); an IPv4-mapped IPv6 address counts as its IPv4 address. None for
    anything that is not an address."""
    if not text:
        return None
    return _parsed(text)


@functools.lru_cache(maxsize=8192)
def _parsed(text: str) -> AddressKey | None:
    # the same few client addresses come back request after request: each is parsed once while it does
    try:
        return 4, int.from_bytes(socket.inet_pton(socket.AF_INET, text), "big")
    except OSError:
        pass
    try:
        packed = socket.inet_pton(socket.AF_INET6, text)
    except OSError:
        return None
    if packed[:12] == _MAPPED_PREFIX:
        return 4, int.from_bytes(packed[12:], "big")
    return 6, int.from_bytes(packed, "big")


def normalized_network(text: str) -> IPNetwork:
    """A CIDR or single address as a network (host bits dropped); an IPv4-mapped IPv6 range as its IPv4
    range. `ValueError` when it is neither."""
    net = ipaddress.ip_network(text.strip(), strict=False)
    if isinstance(net, ipaddress.IPv6Network) and net.prefixlen >= 96:
        mapped = net.network_address.ipv4_mapped
        if mapped is not None:
            return ipaddress.IPv4Network((int(mapped), net.prefixlen - 96))
    return net


def offender_network(client_ip: str) -> IPNetwork | None:
    """What an automatic block covers for an address: the address itself (IPv4), or its /64 (IPv6, where one
    subscriber holds a whole /64 and can rotate through it). None for anything that is not an address."""
    key = address_key(client_ip)
    if key is None:
        return None
    version, value = key
    if version == 4:
        return ipaddress.IPv4Network((value, 32))
    return ipaddress.IPv6Network((value >> 64 << 64, 64))


class Ranges:
    """Networks of both IP versions as merged, sorted integer ranges: `key in ranges` is one bisect."""

    __slots__ = ("_tables", "count")

    def __init__(self, networks: Iterable[IPNetwork]) -> None:
        spans: dict[int, list[tuple[int, int]]] = {4: [], 6: []}
        self.count = 0
        for net in networks:
            spans[net.version].append((int(net.network_address), int(net.broadcast_address)))
            self.count += 1
        # per version: the ranges' starts (sorted) and their ends, overlapping and adjacent ranges merged
        self._tables: dict[int, tuple[list[int], list[int]]] = {}
        for version, items in spans.items():
            starts: list[int] = []
            ends: list[int] = []
            for start, end in sorted(items):
                if ends and start <= ends[-1] + 1:
                    ends[-1] = max(ends[-1], end)
                else:
                    starts.append(start)
                    ends.append(end)
            self._tables[version] = (starts, ends)

    def __contains__(self, key: AddressKey) -> bool:
        starts, ends = self._tables[key[0]]
        value = key[1]
        i = bisect_right(starts, value) - 1
        return i >= 0 and value <= ends[i]

    def __bool__(self) -> bool:
        return self.count > 0


@dataclass(frozen=True, slots=True)
class BlockRule:
    """One active block as the matcher needs it: its tenant (None: platform-wide), range and expiry."""

    id: str
    organization_id: str | None
    network: IPNetwork
    expires_at: float | None  # epoch seconds


class BlockMatcher:
    """The active blocks at one moment: platform ranges, and each tenant's ranges by organization."""

    __slots__ = ("next_expiry", "platform", "rules", "tenants")

    def __init__(self, rules: Sequence[BlockRule], now: float) -> None:
        self.rules = [r for r in rules if r.expires_at is None or r.expires_at > now]
        self.platform = Ranges(r.network for r in self.rules if r.organization_id is None)
        by_org: dict[str, list[IPNetwork]] = {}
        for r in self.rules:
            if r.organization_id is not None:
                by_org.setdefault(r.organization_id, []).append(r.network)
        self.tenants = {org: Ranges(nets) for org, nets in by_org.items()}
        self.next_expiry = min((r.expires_at for r in self.rules if r.expires_at is not None), default=float("inf"))

    @property
    def tenant_count(self) -> int:
        return sum(r.count for r in self.tenants.values())


class AbuseSignals(Protocol):
    """What counts abuse per address towards an automatic block (gateway/address_blocks.py)."""

    async def sign_in_failed(self, client_ip: str | None, account: str, organization_id: str | None) -> None:
        """A failed password sign-in naming `account` (aimed at `organization_id`, when known)."""
        ...

    async def refused(self, client_ip: str | None, status: int, organization_id: str | None) -> None:
        """A request answered 401 (an invalid credential) or 429 (a rate limit)."""
        ...


RuleLoader = Callable[[], Awaitable[list[BlockRule]]]


async def load_rules(db: Database) -> list[BlockRule]:
    """Every active block (all tenants and the platform's): what each process holds in memory."""
    now = utcnow()
    async with db.session() as session:
        rows = (
            await session.execute(
                # tenant-scope: the edge's block list spans every tenant (each rule keeps its organization)
                select(AddressBlock).where(
                    col(AddressBlock.lifted_at).is_(None),
                    or_(col(AddressBlock.expires_at).is_(None), col(AddressBlock.expires_at) > now),
                )
            )
        ).scalars()
        return [rule_of(row) for row in rows]


def rule_of(row: AddressBlock) -> BlockRule:
    expires = row.expires_at.timestamp() if isinstance(row.expires_at, datetime) else None
    return BlockRule(row.id, row.organization_id, normalized_network(row.cidr), expires)


class AddressBlocks:
    """The process's block list: checked on the request path, reloaded when the rows change."""

    def __init__(
        self,
        db: Database,
        *,
        allowlist: Iterable[str] = (),
        reload_seconds: float = 30.0,
        loader: RuleLoader | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.db = db
        self.allowlist = Ranges(normalized_network(c) for c in allowlist)
        self.reload_seconds = reload_seconds
        self.loader: RuleLoader = loader or (lambda: load_rules(db))
        self.clock = clock
        self.matcher = BlockMatcher([], clock())
        # what the edge reads on every request: no work at all while there is no block of that kind
        self.platform_active = False
        self.tenants: dict[str, Ranges] = {}
        # set by the gateway: counts failed sign-ins towards an automatic block
        self.signals: AbuseSignals | None = None
        self.on_refused: Callable[[str], None] = lambda _scope: None
        self.on_installed: Callable[[BlockMatcher], None] = lambda _m: None
        self._requested = 0
        self._loaded = 0
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self._periodic: Every | None = None

    # the request path

    def platform_refuses(self, client_ip: str | None) -> bool:
        """Whether a platform-wide block covers `client_ip` (and the allowlist does not)."""
        key = address_key(client_ip)
        if key is None or key not in self.matcher.platform:
            return False
        return self._confirmed(key, None)

    def tenant_refuses(self, organization_id: str, client_ip: str | None) -> bool:
        """Whether one of the organization's blocks covers `client_ip` (and the allowlist does not)."""
        ranges = self.tenants.get(organization_id)
        if ranges is None:
            return False
        key = address_key(client_ip)
        if key is None or key not in ranges:
            return False
        return self._confirmed(key, organization_id)

    def refuses(self, organization_id: str | None, client_ip: str | None) -> str | None:
        """The scope of a block covering a sign-in into `organization_id` from `client_ip`: `platform`,
        `tenant`, or None."""
        if self.platform_active and self.platform_refuses(client_ip):
            return "platform"
        if organization_id is not None and self.tenant_refuses(organization_id, client_ip):
            return "tenant"
        return None

    def allowed(self, client_ip: str | None) -> bool:
        """On the allowlist: never blocked, neither by hand nor automatically."""
        key = address_key(client_ip)
        return key is not None and bool(self.allowlist) and key in self.allowlist

    def _confirmed(self, key: AddressKey, organization_id: str | None) -> bool:
        if self.allowlist and key in self.allowlist:
            return False
        if self.clock() < self.matcher.next_expiry:
            return True
        # a block has expired since the matcher was built: rebuilt without it, then asked again
        self.install(self.matcher.rules)
        ranges = self.matcher.platform if organization_id is None else self.tenants.get(organization_id)
        return ranges is not None and key in ranges

    # keeping the list current

    def install(self, rules: Sequence[BlockRule]) -> None:
        matcher = BlockMatcher(rules, self.clock())
        self.matcher = matcher
        self.tenants = matcher.tenants
        self.platform_active = bool(matcher.platform)
        self.on_installed(matcher)

    async def reload(self) -> None:
        """Read the active blocks now. Calls that overlap share one read that started after each of them."""
        self._requested += 1
        wanted = self._requested
        async with self._lock:
            if self._loaded >= wanted:
                return
            started = self._requested
            rules = await self.loader()
            self.install(rules)
            self._loaded = started

    def invalidate(self, keys: list[str]) -> None:
        """A revocation-bus subscriber: `blocks:changed` (or `*`, a lost subscription) reloads."""
        if any(k == BLOCKS_KEY or k == "*" for k in keys):
            self._spawn()

    def _spawn(self) -> None:
        try:
            task = asyncio.get_running_loop().create_task(self._reload_logged())
        except RuntimeError:
            return  # no event loop: nothing is held in memory to refresh
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _reload_logged(self) -> None:
        try:
            await self.reload()
        except Exception:
            log.exception("address blocks not reloaded; the periodic reload tries again")

    async def start(self) -> None:
        """Load the list before the first request, then reload it every `reload_seconds`."""
        await self._reload_logged()
        self._periodic = Every(
            self.reload_seconds,
            self.reload,
            name="portcullis-address-blocks",
            failure="address blocks not reloaded; the periodic reload tries again",
            logger=log,
        )
        self._periodic.start()

    async def stop(self, grace_seconds: float = 5.0) -> None:
        """Stop reloading. A reload under way finishes first (within `grace_seconds`, then it is cancelled), as
        do the reloads the bus asked for (store/background.py)."""
        if self._periodic is not None:
            await self._periodic.stop(grace_seconds)
            self._periodic = None
        tasks = list(self._tasks)
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=grace_seconds)
            for task in late:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
