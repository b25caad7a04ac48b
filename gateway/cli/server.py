"""Commands that run or describe the gateway: serve, migrate, schema, authz-report, keys generate."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.cli.common import check_signing_keys, load_settings
from gateway.settings import DatabaseSettings, InsecureSettingsError, Settings

if TYPE_CHECKING:
    from gateway.upstreams import LoadedUpstreams
    from schema import PortcullisSchema


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    settings = load_settings()  # refuse insecure configuration before binding a port
    check_signing_keys(settings)
    # what the configuration says first (the upstreams file), then what the database says
    if settings.upstreams_file is not None and _upstreams_problems(settings.upstreams_file):
        return 2
    refusal = serve_refusal(settings, args.workers)
    if refusal is not None:
        sys.exit(f"portcullis: refusing to start: {refusal}")
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


def serve_refusal(settings: Settings, workers: int) -> str | None:
    """Why `serve` does not start on these settings, with the command or setting that fixes it; None: it may."""
    from store.db import is_sqlite
    from store.migrate import migration_state

    if workers < 1:
        return "--workers must be at least 1"
    if workers > 1 and is_sqlite(settings.database_url):
        return (
            f"--workers {workers} on SQLite: one process writes an SQLite database; serve with --workers 1, or "
            "use PostgreSQL for several workers (PORTCULLIS_DATABASE_URL=postgresql+psycopg://..., "
            "docs/deployment.md)"
        )
    if workers > 1 and settings.metrics_port is not None:
        return (
            f"--workers {workers} with PORTCULLIS_METRICS_PORT: one process serves one metrics port; run one "
            "process per port, or scrape /metrics with PORTCULLIS_METRICS_TOKEN instead"
        )
    try:
        state = migration_state(settings.database_url)
    except Exception as exc:
        # not known to be unmigrated: start, and let /readyz answer 503 until the database answers at head
        print(
            f"portcullis: the database is unreachable ({type(exc).__name__}); starting anyway, /readyz answers 503 "
            "until it is reachable and migrated (check PORTCULLIS_DATABASE_URL)",
            file=sys.stderr,
        )
        return None
    if not state.at_head:
        return f"the database is {state.describe()}: run `portcullis migrate` first"
    return None


def cmd_migrate(_: argparse.Namespace) -> int:
    from sqlalchemy.engine import make_url

    from store.db import is_sqlite
    from store.migrate import upgrade

    try:
        settings = DatabaseSettings.load()
    except InsecureSettingsError as exc:
        sys.exit(f"portcullis: {exc}")
    if settings.migration_database_url and not is_sqlite(settings.database_url):
        # migrate as the owner; the application's role (the one in PORTCULLIS_DATABASE_URL) gets its grants
        app_role = make_url(settings.database_url).username
        upgrade(settings.migration_database_url, app_role=app_role)
        print(f"database migrated; privileges granted to {app_role}")
        return 0
    upgrade(settings.database_url)
    print("database migrated")
    return 0


def _upstreams_problems(path: Path) -> bool:
    """Prints every problem of the upstreams file to stderr; true when there is any."""
    from gateway.upstreams import UpstreamsFileError, load_upstreams

    try:
        load_upstreams(path)
    except UpstreamsFileError as exc:
        print(f"portcullis: {path}: {len(exc.problems)} problem(s):", file=sys.stderr)
        for problem in exc.problems:
            print(f"  - {problem}", file=sys.stderr)
        return True
    return False


def _composed_schema() -> tuple[PortcullisSchema, LoadedUpstreams | None]:
    """The gateway's schema with the upstreams of `PORTCULLIS_UPSTREAMS_FILE` mounted, if it names one."""
    from gateway.upstreams import load_upstreams
    from schema import build_schema

    path = load_settings().upstreams_file
    loaded = load_upstreams(path) if path is not None else None
    return build_schema(upstreams=loaded.composition if loaded is not None else None), loaded


def cmd_upstreams(args: argparse.Namespace) -> int:
    from gateway.upstreams import UpstreamsFileError, load_upstreams
    from schema import build_schema

    path = Path(args.file) if args.file else load_settings().upstreams_file
    if path is None:
        print("portcullis: no upstreams file (PORTCULLIS_UPSTREAMS_FILE or --file)", file=sys.stderr)
        return 2
    try:
        loaded = load_upstreams(path)
    except UpstreamsFileError as exc:
        print(f"portcullis: {path}: {len(exc.problems)} problem(s):", file=sys.stderr)
        for problem in exc.problems:
            print(f"  - {problem}", file=sys.stderr)
        return 1
    composition = loaded.composition
    sys.stdout.write(build_schema(upstreams=composition).as_str() + "\n")
    for http in loaded.http:
        for route in http.routes:
            print(f"# {http.name}: {' '.join(route.methods)} {http.prefix}{route.path} -> {http.url}{route.path}")
    for upstream, type_name, field_name in composition.unruled():
        print(f"portcullis: {upstream}: {type_name}.{field_name} has no rule: not mounted", file=sys.stderr)
    for name, mounted in composition.upstreams.items():
        for field_name in mounted.subscriptions:
            print(f"portcullis: {name}: Subscription.{field_name}: subscriptions are not forwarded", file=sys.stderr)
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    from gateway.upstreams import UpstreamsFileError
    from schema import export_sdl

    if args.without_upstreams:
        sys.stdout.write(export_sdl())
        return 0
    try:
        schema, _ = _composed_schema()
    except UpstreamsFileError as exc:
        print("portcullis: the upstreams file has problems; see `portcullis upstreams check`", file=sys.stderr)
        for problem in exc.problems:
            print(f"  - {problem}", file=sys.stderr)
        return 1
    sys.stdout.write(schema.as_str() + "\n")
    return 0


def cmd_authz_report(args: argparse.Namespace) -> int:
    import json

    from gateway.http_routes import route_table_rows
    from gateway.upstreams import UpstreamsFileError
    from schema.authorization import field_table

    try:
        schema, loaded = _composed_schema()
    except UpstreamsFileError:
        print("portcullis: the upstreams file has problems; see `portcullis upstreams check`", file=sys.stderr)
        return 1
    rows = field_table(schema.authorizer)
    if loaded is not None:
        # default deny: an upstream root field without a rule is not mounted, nor what only it reaches
        rows += [
            {"type": t, "field": f, "rule": f"unreachable: upstream {u} gives it no rule", "roles": []}
            for u, t, f in loaded.composition.unruled()
        ]
        rows += route_table_rows(loaded.http)
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


def cmd_keys_secret(_: argparse.Namespace) -> int:
    """A random secret for PORTCULLIS_API_KEY_PEPPER, _COOKIE_SECRET, _DATA_ENCRYPTION_KEY or _METRICS_TOKEN:
    48 random bytes, URL-safe base64 (64 characters)."""
    import secrets

    print(secrets.token_urlsafe(48))
    return 0
