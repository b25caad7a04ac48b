"""`portcullis mail list|show`: the outbox, or the local mailbox when no SMTP server is configured."""

from __future__ import annotations

import argparse
import asyncio
import sys

from gateway.cli.common import load_settings
from gateway.settings import Settings


async def _mail_command(settings: Settings, args: argparse.Namespace) -> int:
    from gateway.mail import build_mailer
    from resolvers.mail import read_mail, read_mailbox
    from store.db import Database

    mailer = build_mailer(settings)
    db = Database(settings.database_url)
    try:
        async with db.transaction() as session:
            if args.mail_command == "list":
                messages = await read_mailbox(session, mailer, to=args.to, limit=args.limit)
            else:
                found = await read_mail(session, mailer, args.id)
                messages = [] if found is None else [found]
    finally:
        await db.dispose()
    if args.mail_command == "list":
        if not messages:
            print("no messages" + (f" to {args.to}" if args.to else ""), file=sys.stderr)
        for m in messages:
            subject = m.subject if m.readable else "(cannot be decrypted with the configured keys)"
            print(f"{m.id}  {m.created_at:%Y-%m-%d %H:%M:%S}  {m.status:<7}  {m.recipient}  {m.template}  {subject}")
        return 0
    if not messages:
        print(f"portcullis: no message {args.id!r}", file=sys.stderr)
        return 1
    m = messages[0]
    print(f"From: {mailer.from_address}")
    print(f"To: {m.recipient}")
    print(f"Subject: {m.subject}")
    print(f"Date: {m.created_at:%Y-%m-%d %H:%M:%S} UTC")
    print(f"Message-ID: {m.message_id}")
    print(f"Template: {m.template}")
    state = f"Status: {m.status}, {m.attempts} attempt(s)"
    if m.sent_at is not None:
        state += f", sent {m.sent_at:%Y-%m-%d %H:%M:%S} UTC"
    print(state)
    if m.last_error:
        print(f"Last error: {m.last_error}")
    print()
    if not m.readable:
        print("portcullis: the content cannot be decrypted with the configured keys", file=sys.stderr)
        return 1
    sys.stdout.write(m.text if m.text.endswith("\n") else m.text + "\n")
    return 0


def cmd_mail(args: argparse.Namespace) -> int:
    return asyncio.run(_mail_command(load_settings(), args))
