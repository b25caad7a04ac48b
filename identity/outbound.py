"""Requests to URLs a tenant supplied (OIDC discovery, token, JWKS and userinfo endpoints; later webhooks and
stream destinations), refused when they would reach the gateway's own network (security.md C-132).

Policy. The host is resolved (every A and AAAA record, off the event loop) and refused when any of its
addresses is not public: loopback, private (RFC 1918, RFC 4193 unique local, 100.64/10 shared), link-local,
multicast, unspecified, reserved or documentation ranges, the cloud metadata addresses (169.254.169.254,
fd00:ec2::254, 100.100.100.200 and Azure's 168.63.129.16), or an IPv6 form that embeds one of those
(IPv4-mapped, NAT64, 6to4). A literal address in the URL is judged the same way. A name or an address
range on the operator's allow-list (`PORTCULLIS_OUTBOUND_ALLOWED_HOSTS`: on-premises identity providers)
passes. Only http and https, and only https when `require_https`.

Pinning. The check and the connection use the same answer: the request is sent to the checked address,
with the `Host` header and the TLS server name (SNI and certificate verification) still the host name, by
httpx's documented `sni_hostname` request extension. No second lookup happens, so a DNS answer that changes
between the check and the connection (rebinding) reaches nothing. Pooled connections are keyed by address,
so none is kept alive: a connection made for one name never carries a request for another.

Redirects. `GuardedTransport` sees every request its client sends, so a followed redirect is checked hop by
hop like the first request (the OIDC client follows none).

Timing. A refused URL is refused before any connection is attempted, with the same error whatever its port,
and a name that does not resolve is refused with the same error as a forbidden one: a caller learns neither
whether a port is open nor whether an internal name exists.

The guard is on in prod and off elsewhere unless turned on (tests and local development run identity
providers on loopback).
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import anyio
import httpx2

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], Awaitable[Sequence[str]]]

log = logging.getLogger("portcullis.outbound")

_LABEL_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-_")
# Ranges `ipaddress` does not mark as non-global on every supported Python, and the metadata services
_FORBIDDEN_NETWORKS: tuple[IPNetwork, ...] = tuple(
    ipaddress.ip_network(n)
    for n in (
        "0.0.0.0/8",
        "10.0.0.0/8",
        "100.64.0.0/10",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "172.16.0.0/12",
        "192.0.0.0/24",
        "192.0.2.0/24",
        "192.88.99.0/24",
        "192.168.0.0/16",
        "198.18.0.0/15",
        "198.51.100.0/24",
        "203.0.113.0/24",
        "224.0.0.0/4",
        "240.0.0.0/4",
        "168.63.129.16/32",
        "::/128",
        "::1/128",
        "64:ff9b:1::/48",
        "100::/64",
        "2001::/23",
        "2001:db8::/32",
        "fc00::/7",
        "fe80::/10",
        "fec0::/10",
        "ff00::/8",
    )
)
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


class OutboundRefused(Exception):
    """A URL the gateway will not fetch; `reason` is for logs only, the caller sees one generic refusal."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for (IPv4-mapped, NAT64 well-known prefix, 6to4), if any."""
    if isinstance(address, ipaddress.IPv4Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFF_FFFF)
    return address.sixtofour


def is_public_address(address: IPAddress) -> bool:
    """True for an address on the public internet, by the rules in the module docstring."""
    inner = embedded_ipv4(address)
    if inner is not None:
        return is_public_address(inner)
    if any(address in network for network in _FORBIDDEN_NETWORKS):
        return False
    return address.is_global and not (
        address.is_multicast
        or address.is_reserved
        or address.is_link_local
        or address.is_loopback
        or address.is_unspecified
        or address.is_private
    )


def parse_allowed_hosts(entries: Iterable[str]) -> tuple[frozenset[str], tuple[IPNetwork, ...]]:
    """Host names (ASCII, lowercased, without a trailing dot) and address ranges; ValueError on anything else."""
    names: set[str] = set()
    networks: list[IPNetwork] = []
    for raw in entries:
        entry = raw.strip().lower().removeprefix("[").removesuffix("]").rstrip(".")
        if not entry:
            continue
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
            continue
        except ValueError:
            pass
        labels = entry.split(".")
        if len(entry) > 253 or any(not label or len(label) > 63 or set(label) - _LABEL_CHARS for label in labels):
            raise ValueError(f"not a host name, an address or a CIDR range: {raw[:100]!r}")
        names.add(entry)
    return frozenset(names), tuple(networks)


async def system_resolver(host: str, port: int) -> list[str]:
    """Every address of `host` from the system resolver, looked up in a worker thread."""
    infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _parsed(address: str) -> IPAddress:
    found = ipaddress.ip_address(address.split("%", 1)[0])  # an IPv6 zone id says nothing about the range
    return (found.ipv4_mapped or found) if isinstance(found, ipaddress.IPv6Address) else found


@dataclass(frozen=True, slots=True)
class OutboundPolicy:
    """Which URLs the gateway may fetch on a tenant's say. Build with `OutboundPolicy.of(...)`."""

    enabled: bool = True
    require_https: bool = True
    allowed_names: frozenset[str] = frozenset()
    allowed_networks: tuple[IPNetwork, ...] = ()
    resolve_timeout_seconds: float = 5.0
    resolver: Resolver = system_resolver

    @classmethod
    def of(
        cls, *, enabled: bool, require_https: bool, allowed_hosts: Iterable[str] = (), **options: Any
    ) -> OutboundPolicy:
        names, networks = parse_allowed_hosts(allowed_hosts)
        return cls(
            enabled=enabled, require_https=require_https, allowed_names=names, allowed_networks=networks, **options
        )

    def address_allowed(self, address: IPAddress) -> bool:
        plain = (address.ipv4_mapped or address) if isinstance(address, ipaddress.IPv6Address) else address
        return any(plain in network for network in self.allowed_networks) or is_public_address(plain)

    async def addresses(self, url: str | httpx2.URL) -> list[IPAddress]:
        """The addresses a request to `url` may connect to (all of them checked), or `OutboundRefused`."""
        try:
            parsed = url if isinstance(url, httpx2.URL) else httpx2.URL(url)
        except (httpx2.InvalidURL, TypeError):
            raise OutboundRefused("outbound_invalid_url") from None
        if parsed.scheme not in ("http", "https") or (self.require_https and parsed.scheme != "https"):
            raise OutboundRefused("outbound_scheme_refused")
        host = parsed.raw_host.decode("ascii").lower()
        if not host:
            raise OutboundRefused("outbound_invalid_url")
        literal = _literal(host)
        found = (
            [literal]
            if literal is not None
            else await self._resolve(host, parsed.port or (443 if parsed.scheme == "https" else 80))
        )
        if literal is None and host.rstrip(".") in self.allowed_names:
            return found
        if not all(self.address_allowed(address) for address in found):
            log.info("outbound_refused", extra={"reason": "outbound_address_refused", "host": host[:253]})
            raise OutboundRefused("outbound_address_refused")
        return found

    async def check_url(self, url: str | httpx2.URL) -> None:
        """Refuse `url` now, without connecting, if a request to it would be refused (nothing when off)."""
        if self.enabled:
            await self.addresses(url)

    def transport(self, *, verify: Any = True) -> GuardedTransport:
        return GuardedTransport(self, verify=verify)

    async def _resolve(self, host: str, port: int) -> list[IPAddress]:
        try:
            with anyio.fail_after(self.resolve_timeout_seconds):
                answers = await self.resolver(host, port)
            found = list(dict.fromkeys(_parsed(a) for a in answers))
        except (OSError, TimeoutError, UnicodeError, ValueError):
            found = []
        if not found:
            log.info("outbound_refused", extra={"reason": "outbound_unresolvable", "host": host[:253]})
            # the same refusal as a forbidden address: whether an internal name exists is not told
            raise OutboundRefused("outbound_unresolvable")
        return found


class GuardedTransport(httpx2.AsyncBaseTransport):
    """An httpx transport that sends each request to an address `policy` allowed, and nowhere else.

    One transport serves every client made with it (Authlib opens and closes a client per request), so closing
    a client leaves it open; with no connection kept alive there is nothing to close.
    """

    def __init__(self, policy: OutboundPolicy, *, verify: Any = True) -> None:
        self.policy = policy
        self._pool = httpx2.AsyncHTTPTransport(verify=verify, limits=httpx2.Limits(max_keepalive_connections=0))

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        url = request.url
        if not self.policy.enabled:
            if url.scheme not in ("http", "https"):
                raise OutboundRefused("outbound_scheme_refused")
            return await self._pool.handle_async_request(request)
        addresses = await self.policy.addresses(url)
        host = url.raw_host.decode("ascii")
        extensions = dict(request.extensions)
        if url.scheme == "https" and _literal(host) is None:
            extensions["sni_hostname"] = host
        failure: httpx2.ConnectError | None = None
        for address in addresses:
            pinned = httpx2.Request(
                request.method,
                url.copy_with(host=str(address)),
                headers=request.headers,
                stream=request.stream,
                extensions=extensions,
            )
            try:
                return await self._pool.handle_async_request(pinned)
            except httpx2.ConnectError as exc:  # nothing was sent: the next checked address may answer
                failure = exc
        assert failure is not None
        raise failure

    async def aclose(self) -> None:
        return None
