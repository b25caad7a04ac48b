"""`portcullis blocks add|list|remove`: the operator's platform-wide address blocks."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from gateway.cli.common import as_operator, command_services, load_settings
from gateway.settings import Settings


async def _blocks_command(settings: Settings, args: argparse.Namespace) -> int:
    from datetime import datetime

    from authz.errors import GatewayError, NotFound
    from resolvers import address_blocks

    async with command_services(settings) as services:
        ctx = as_operator(services)
        try:
            if args.blocks_command == "list":
                async with ctx.unit_of_work(writes=False):
                    rows = await address_blocks.platform_blocks(ctx, every_tenant=args.all)
                for row in rows:
                    scope = row.organization_id or "platform"
                    until = row.expires_at.isoformat() if row.expires_at else "until lifted"
                    print(f"{row.id}  {row.cidr}  {scope}  {row.source}  {until}  {row.reason}")
                return 0
            if args.blocks_command == "remove":
                # announced to every running gateway once committed (over Redis in shared mode)
                async with ctx.unit_of_work():
                    lifted = await address_blocks.unblock_platform(ctx, args.id)
                print(f"lifted {args.id}" if lifted else f"{args.id} was no longer in force")
                return 0
            try:
                expires = datetime.fromisoformat(args.expires_at) if args.expires_at else None
            except ValueError:
                print(f"portcullis: --expires-at is not an ISO 8601 time: {args.expires_at!r}", file=sys.stderr)
                return 2
            async with ctx.unit_of_work():
                row = await address_blocks.block_platform(ctx, args.cidr, args.reason, expires)
        except NotFound as exc:
            print(f"portcullis: {exc.message}", file=sys.stderr)
            return 1
        except GatewayError as exc:
            print(f"portcullis: {exc.message}", file=sys.stderr)
            return 2
    print(f"blocked {row.cidr} platform-wide: {row.id}")
    return 0


def cmd_blocks(args: argparse.Namespace) -> int:
    return asyncio.run(_blocks_command(load_settings(), args))


def add_parser(sub: Any) -> None:
    """`portcullis blocks ...` on the command's subparsers."""
    bl = sub.add_parser(
        "blocks",
        help="platform-wide address blocks: refused before any other work on every request",
        description="In shared mode running gateways apply a change within a second; in embedded mode within "
        "PORTCULLIS_BLOCK_RELOAD_SECONDS.",
    )
    blsub = bl.add_subparsers(dest="blocks_command", required=True)
    add = blsub.add_parser("add", help="block an address or CIDR range platform-wide")
    add.add_argument("cidr")
    add.add_argument("--reason", required=True)
    add.add_argument("--expires-at", metavar="ISO8601", help="when the block ends (default: until removed)")
    lst = blsub.add_parser("list", help="the platform-wide blocks in force (automatic ones included)")
    lst.add_argument("--all", action="store_true", help="the tenants' blocks too")
    rm = blsub.add_parser("remove", help="lift a block (platform-wide, automatic, or a tenant's)")
    rm.add_argument("id")
    bl.set_defaults(func=cmd_blocks)
