"""`portcullis api-key create|list|revoke`."""

from __future__ import annotations

import argparse
import asyncio
import sys

from gateway.cli.common import command_services, load_settings, operator_context_for_slug
from gateway.settings import Settings


async def _api_key_command(settings: Settings, args: argparse.Namespace) -> int:
    from datetime import datetime

    from authz.errors import GatewayError, NotFound
    from resolvers import api_keys

    async with command_services(settings) as services:
        ctx = await operator_context_for_slug(services, args.org)
        if ctx is None:
            return 1
        org_id = ctx.principal.organization_id
        assert org_id is not None
        try:
            if args.api_key_command == "list":
                async with ctx.unit_of_work(writes=False):
                    keys = await api_keys.list_api_keys(ctx, org_id)
                for k in keys:
                    state = "revoked" if k.revoked_at else "active"
                    print(f"{k.id}  ptc_{k.env}_{k.prefix}  {state}  {k.name}  {','.join(k.scopes)}")
                return 0
            if args.api_key_command == "revoke":
                # announced to every running gateway once committed (over Redis in shared mode)
                async with ctx.unit_of_work():
                    key = await api_keys.revoke_api_key(ctx, args.id)
                print(f"revoked {key.id}")
                return 0
            try:
                expires = datetime.fromisoformat(args.expires_at) if args.expires_at else None
            except ValueError:
                print(f"portcullis: --expires-at is not an ISO 8601 time: {args.expires_at!r}", file=sys.stderr)
                return 2
            new = api_keys.NewApiKey(
                name=args.name, scopes=list(args.scope), expires_at=expires, allowed_ips=list(args.allowed_ip)
            )
            async with ctx.unit_of_work():
                issued = await api_keys.create_api_key(ctx, new)
        except NotFound as exc:
            print(f"portcullis: {exc.message}", file=sys.stderr)
            return 1
        except GatewayError as exc:
            print(f"portcullis: {exc.message}", file=sys.stderr)
            return 2
    print(f"API key {issued.key.id} created; its secret (shown once, store it now):")
    print(issued.secret)
    return 0


def cmd_api_key(args: argparse.Namespace) -> int:
    return asyncio.run(_api_key_command(load_settings(), args))
