"""The block list's matcher (no I/O): merged ranges of both IP versions, tenants apart, expiry, allowlist."""

from __future__ import annotations

import ipaddress

import pytest

from identity.address_blocks import AddressBlocks, BlockRule, Ranges, address_key, normalized_network


def rule(cidr: str, org: str | None = None, expires_at: float | None = None, id: str = "r") -> BlockRule:
    return BlockRule(id, org, normalized_network(cidr), expires_at)


def test_address_key() -> None:
    assert address_key("203.0.113.7") == (4, int(ipaddress.ip_address("203.0.113.7")))
    assert address_key("::ffff:203.0.113.7") == address_key("203.0.113.7")
    assert address_key("2001:db8::1") == (6, int(ipaddress.ip_address("2001:db8::1")))
    for bad in (None, "", "not an address", "203.0.113", "1.2.3.4.5", "203.0.113.7 "):
        assert address_key(bad) is None


def test_normalized_network() -> None:
    assert str(normalized_network("203.0.113.9/24")) == "203.0.113.0/24"
    assert str(normalized_network("::ffff:203.0.113.0/120")) == "203.0.113.0/24"
    assert str(normalized_network("2001:db8::1")) == "2001:db8::1/128"
    with pytest.raises(ValueError):
        normalized_network("203.0.113.0/33")


def test_ranges_merge_and_match_each_version() -> None:
    nets = [normalized_network(c) for c in ("10.0.0.0/24", "10.0.1.0/24", "10.0.0.128/25", "2001:db8::/64")]
    ranges = Ranges(nets)
    assert ranges.count == 4
    inside = ["10.0.0.0", "10.0.0.255", "10.0.1.255", "2001:db8::ffff", "::ffff:10.0.1.2"]
    outside = ["9.255.255.255", "10.0.2.0", "2001:db8:0:1::", "::a00:1"]
    for ip in inside:
        assert address_key(ip) in ranges, ip
    for ip in outside:
        assert address_key(ip) not in ranges, ip
    assert not Ranges([])


def test_tenant_blocks_are_apart_from_each_other_and_from_the_platform() -> None:
    blocks = AddressBlocks(None, clock=lambda: 1000.0)  # type: ignore[arg-type]
    blocks.install([rule("203.0.113.0/24", "a"), rule("198.51.100.7", None)])
    assert blocks.tenant_refuses("a", "203.0.113.5")
    assert not blocks.tenant_refuses("b", "203.0.113.5")
    assert not blocks.platform_refuses("203.0.113.5")
    assert blocks.platform_refuses("198.51.100.7")
    assert blocks.refuses("b", "198.51.100.7") == "platform"
    assert blocks.refuses("a", "203.0.113.5") == "tenant"
    assert blocks.refuses(None, "203.0.113.5") is None
    assert not blocks.platform_refuses(None)


def test_an_expired_block_stops_refusing_at_once() -> None:
    now = [1000.0]
    blocks = AddressBlocks(None, clock=lambda: now[0])  # type: ignore[arg-type]
    blocks.install([rule("203.0.113.7", None, expires_at=1010.0), rule("203.0.113.0/24", "a", expires_at=1020.0)])
    assert blocks.platform_refuses("203.0.113.7")
    assert blocks.tenant_refuses("a", "203.0.113.7")
    now[0] = 1010.0
    assert not blocks.platform_refuses("203.0.113.7")
    assert not blocks.platform_active
    assert blocks.tenant_refuses("a", "203.0.113.7")
    now[0] = 1020.5
    assert not blocks.tenant_refuses("a", "203.0.113.7")
    assert blocks.tenants == {}


def test_the_allowlist_is_never_refused() -> None:
    blocks = AddressBlocks(None, allowlist=["203.0.113.0/28"], clock=lambda: 0.0)  # type: ignore[arg-type]
    blocks.install([rule("203.0.113.0/24"), rule("203.0.113.0/24", "a")])
    assert not blocks.platform_refuses("203.0.113.1")
    assert not blocks.tenant_refuses("a", "203.0.113.1")
    assert blocks.platform_refuses("203.0.113.16")
    assert blocks.allowed("203.0.113.15")
    assert not blocks.allowed("203.0.113.16")
    assert not blocks.allowed(None)


async def test_overlapping_reloads_share_a_read() -> None:
    import asyncio

    reads = 0
    gate = asyncio.Event()

    async def loader() -> list[BlockRule]:
        nonlocal reads
        reads += 1
        await gate.wait()
        return [rule("203.0.113.7")]

    blocks = AddressBlocks(None, loader=loader)  # type: ignore[arg-type]
    first = asyncio.create_task(blocks.reload())
    await asyncio.sleep(0)
    waiting = [asyncio.create_task(blocks.reload()) for _ in range(5)]
    await asyncio.sleep(0)
    gate.set()
    await asyncio.gather(first, *waiting)
    # the first read began before the others were asked for: one more read serves all five
    assert reads == 2
    assert blocks.platform_refuses("203.0.113.7")


def test_offender_network() -> None:
    from identity.address_blocks import offender_network

    assert str(offender_network("203.0.113.7")) == "203.0.113.7/32"
    assert str(offender_network("::ffff:203.0.113.7")) == "203.0.113.7/32"
    assert str(offender_network("2001:db8:0:7:1:2:3:4")) == "2001:db8:0:7::/64"
    assert offender_network("testclient") is None
    assert offender_network("") is None
