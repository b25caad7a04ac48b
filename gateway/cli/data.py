"""`portcullis data export|erase --email`: a person's rights of access and erasure, run by the operator
(docs/privacy.md). Both go through the same registry and services as `exportMyData` and `eraseAccount`."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from typing import Any

from gateway.cli.common import as_operator, command_services, load_settings
from gateway.settings import Settings


async def _data_command(settings: Settings, args: argparse.Namespace) -> int:
    from authz.errors import Conflict, GatewayError, NotFound
    from resolvers import data_export, erasure

    async with command_services(settings) as services:
        ctx = as_operator(services)
        try:
            if args.data_command == "export":
                async with ctx.unit_of_work(writes=True):
                    document = await data_export.export_for_operator(ctx, args.email)
                text = json.dumps(document, indent=2, sort_keys=True) + "\n"
                if args.out:
                    # the file holds a person's data: readable by its owner only
                    fd = os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                    with os.fdopen(fd, "w", encoding="utf-8") as out:
                        out.write(text)
                    print(f"exported {args.email} to {args.out}", file=sys.stderr)
                else:
                    sys.stdout.write(text)
                return 0
            async with ctx.unit_of_work():
                user_id = await erasure.find_account(ctx, args.email)
                left = await erasure.erase_account(ctx, user_id, by="operator")
            print(f"erased {user_id} (left {len(left)} organization(s))")
            return 0
        except Conflict as exc:
            print(f"portcullis: {exc.message}", file=sys.stderr)
            return 1
        except NotFound as exc:
            print(f"portcullis: {exc.message}", file=sys.stderr)
            return 1
        except GatewayError as exc:
            print(f"portcullis: {exc.message}", file=sys.stderr)
            return 2


def cmd_data(args: argparse.Namespace) -> int:
    return asyncio.run(_data_command(load_settings(), args))


def add_parser(sub: Any) -> None:
    """`portcullis data ...` on the command's subparsers."""
    d = sub.add_parser("data", help="a person's data: export it (subject access request) or erase it")
    dsub = d.add_subparsers(dest="data_command", required=True)
    ex = dsub.add_parser("export", help="everything held about the account with this address, as JSON (audited)")
    ex.add_argument("--email", required=True)
    ex.add_argument("--out", metavar="FILE", help="write to FILE (mode 0600) instead of standard output")
    er = dsub.add_parser(
        "erase",
        help="erase the account with this address and its personal data in every organization (audited)",
        description="Refused for the only owner of an organization: transfer ownership or delete it first.",
    )
    er.add_argument("--email", required=True)
    d.set_defaults(func=cmd_data)
