"""The gateway with a populated block list, to measure what the block check costs on the request path.

The same settings, services, middleware and extensions as `gateway.app:create_app`, composed from the same
parts (`gateway.app.gateway_parts`); only the block list reads, beside the database's blocks, 1,000
platform-wide ranges and 1,000 blocks of the benchmark's own tenant, none of which holds the load's address
(the loopback): every request is checked against both lists and passes.
"""

from __future__ import annotations

import ipaddress
import random

from starlette.applications import Starlette

from bench.apps.common import read_organization
from gateway.app import assemble, gateway_parts
from gateway.settings import Settings
from identity.address_blocks import BlockRule, load_rules

PLATFORM_RANGES = 1000
TENANT_BLOCKS = 1000
SEED = 7


def synthetic_rules(organization_id: str) -> list[BlockRule]:
    """Half single addresses, half /24s (IPv4) and /64s (IPv6), from the public space: never the loopback."""
    rng = random.Random(SEED)
    rules: list[BlockRule] = []
    for n in range(PLATFORM_RANGES + TENANT_BLOCKS):
        org = organization_id if n >= PLATFORM_RANGES else None
        if n % 4 == 3:
            net: ipaddress.IPv4Network | ipaddress.IPv6Network = ipaddress.IPv6Network(
                ((0x2001_0DB8 << 96) | (rng.getrandbits(32) << 64), 64)
            )
        else:
            address = ipaddress.IPv4Address(rng.randrange(int(ipaddress.IPv4Address("11.0.0.0")), 0xDF000000))
            if address.is_loopback:
                address += 1 << 24
            net = ipaddress.IPv4Network((int(address), 32 if n % 2 else 24), strict=False)
        rules.append(BlockRule(f"bench-{n}", org, net, None))
    return rules


def create_app() -> Starlette:
    parts = gateway_parts(Settings())
    blocks = parts.services.address_blocks
    assert blocks is not None
    db = parts.services.db
    extra: list[BlockRule] = []

    async def loader() -> list[BlockRule]:
        if not extra:
            extra.extend(synthetic_rules((await read_organization()).id))
        return [*await load_rules(db), *extra]

    blocks.loader = loader
    return assemble(parts)
