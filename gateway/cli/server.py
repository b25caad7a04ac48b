"""Commands that run or describe the gateway: serve, migrate, schema, authz-report, keys generate."""

from __future__ import annotations

import argparse
import sys

from gateway.cli.common import check_signing_keys, load_settings


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    settings = load_settings()  # refuse insecure configuration before binding a port
    check_signing_keys(settings)
    uvicorn.run(
        "gateway.app:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        loop="uvloop",
        http="httptools",
        proxy_headers=False,
        server_header=False,
        access_log=False,
    )
    return 0


def cmd_migrate(_: argparse.Namespace) -> int:
    from sqlalchemy.engine import make_url

    from store.db import is_sqlite
    from store.migrate import upgrade

    settings = load_settings()
    if settings.migration_database_url and not is_sqlite(settings.database_url):
        # migrate as the owner; the application's role (the one in PORTCULLIS_DATABASE_URL) gets its grants
        app_role = make_url(settings.database_url).username
        upgrade(settings.migration_database_url, app_role=app_role)
        print(f"database migrated; privileges granted to {app_role}")
        return 0
    upgrade(settings.database_url)
    print("database migrated")
    return 0


def cmd_schema(_: argparse.Namespace) -> int:
    from schema import export_sdl

    sys.stdout.write(export_sdl())
    return 0


def cmd_authz_report(args: argparse.Namespace) -> int:
    import json

    from schema import build_schema
    from schema.authorization import field_table

    rows = field_table(build_schema().authorizer)
    if args.format == "json":
        print(json.dumps(rows, indent=2))
    else:
        width = max(len(f"{r['type']}.{r['field']}") for r in rows)
        rule_width = max(len(r["rule"]) for r in rows)
        print(f"{'field':<{width}}  {'rule':<{rule_width}}  roles")
        for r in rows:
            print(f"{r['type'] + '.' + r['field']:<{width}}  {r['rule']:<{rule_width}}  {', '.join(r['roles'])}")
    unruled = [f"{r['type']}.{r['field']}" for r in rows if r["rule"] == "UNRULED"]
    if unruled:
        print(f"portcullis: fields without a rule: {', '.join(unruled)}", file=sys.stderr)
        return 1
    return 0


def cmd_keys_generate(_: argparse.Namespace) -> int:
    from identity.tokens import generate_private_key_pem

    sys.stdout.write(generate_private_key_pem())
    return 0
