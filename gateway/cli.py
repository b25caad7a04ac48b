"""The `portcullis` command."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import secrets
import sys
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from gateway.settings import Environment, InsecureSettingsError, Settings

if TYPE_CHECKING:
    from resolvers.deps import RequestContext, Services
    from resolvers.provisioning import Provisioned

DEMO_ORG = "acme"
DEMO_OWNER = "owner@acme.test"
DEMO_PASSWORD = "portcullis-demo"


def _settings() -> Settings:
    try:
        return Settings()
    except (InsecureSettingsError, ValidationError) as exc:
        sys.exit(f"portcullis: {exc}")


def _check_signing_keys(settings: Settings) -> None:
    """A signing key that does not load (not a PEM, not RSA, under 2048 bits, an unreadable file)
    stops the command with one line, before any worker starts and fails with a traceback."""
    from identity.tokens import KeyRing

    try:
        KeyRing(*settings.signing_key_pems())
    except (OSError, ValueError, TypeError) as exc:
        sys.exit(f"portcullis: refusing to start: unusable signing key: {exc}")


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    settings = _settings()  # refuse insecure configuration before binding a port
    _check_signing_keys(settings)
    uvicorn.run(
        "gateway.app:create_app", factory=True, host=args.host, port=args.port, workers=args.workers,
        loop="uvloop", http="httptools", proxy_headers=False, server_header=False, access_log=False,
    )
    return 0


def cmd_migrate(_: argparse.Namespace) -> int:
    from sqlalchemy.engine import make_url

    from store.db import is_sqlite
    from store.migrate import upgrade

    settings = _settings()
    if settings.migration_database_url and not is_sqlite(settings.database_url):
        # migrate as the owner; the application's role (the one in PORTCULLIS_DATABASE_URL) gets its grants
        app_role = make_url(settings.database_url).username
        upgrade(settings.migration_database_url, app_role=app_role)
        print(f"database migrated; privileges granted to {app_role}")
        return 0
    upgrade(settings.database_url)
    print("database migrated")
    return 0


async def _audit_in_database(settings: Settings, keys: Any, checkpoint_heads: list[Any] | None) -> Any:
    """The checkpoint document (when `checkpoint_heads` is None) or the verification report."""
    from datetime import UTC, datetime

    from resolvers.audit import checkpoint
    from store import audit
    from store.db import Database

    db = Database(settings.database_url)
    try:
        async with db.transaction() as session:
            if checkpoint_heads is None:
                return await checkpoint(session, keys, now=datetime.now(UTC))
            return await audit.verify(session, checkpoint=checkpoint_heads)
    finally:
        await db.dispose()


def cmd_audit(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from identity.tokens import KeyRing
    from resolvers.audit import CheckpointError, read_checkpoint

    settings = _settings()
    keys = KeyRing(*settings.signing_key_pems())
    if args.audit_command == "checkpoint":
        try:
            document = asyncio.run(_audit_in_database(settings, keys, None))
        except CheckpointError as exc:
            print(f"portcullis: {exc}", file=sys.stderr)
            return 1
        out = Path(args.out)
        if out.is_dir():
            stamp = document["createdAt"].replace("-", "").replace(":", "").replace(".", "")
            out = out / f"audit-checkpoint-{stamp}.json"
        out.write_text(json.dumps(document, indent=2) + "\n")
        print(f"checkpoint of {len(document['heads'])} chain(s) written to {out}")
        return 0
    points = []
    if args.checkpoint:
        path = Path(args.checkpoint)
        if path.is_dir():
            found = sorted(path.glob("audit-checkpoint-*.json"))
            if not found:
                print(f"portcullis: no checkpoint in {path}", file=sys.stderr)
                return 2
            path = found[-1]
        try:
            points = read_checkpoint(keys, path.read_text())
        except (OSError, CheckpointError) as exc:
            print(f"portcullis: {exc}", file=sys.stderr)
            return 2
    report = asyncio.run(_audit_in_database(settings, keys, points))
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        for chain in sorted(report.chains.values(), key=lambda c: c.chain):
            state = "ok" if chain.ok else f"BROKEN at sequence {chain.first_broken_sequence}"
            print(f"{chain.chain}: {chain.checked} entries, head {chain.head_sequence}: {state}")
            for problem in chain.problems:
                print(f"  {problem}")
        print(f"{'ok' if report.ok else 'FAILED'}: {report.checked} entries in {len(report.chains)} chain(s)"
              + (f", checked against {len(points)} checkpointed head(s)" if points else ""))
    return 0 if report.ok else 1


def cmd_schema(_: argparse.Namespace) -> int:
    from schema import export_sdl

    sys.stdout.write(export_sdl())
    return 0


def _operator() -> str:
    """Who runs the command: the actor of its audit entries."""
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return "operator"


@contextlib.asynccontextmanager
async def _services(settings: Settings) -> AsyncIterator[Services]:
    """The gateway's own services, for one command: the same database, mailer and revocation bus (Redis in
    shared mode, so that running gateways hear at once what the command changed)."""
    from gateway.app import build_services

    services = build_services(settings)
    try:
        yield services
    finally:
        if services.redis is not None:
            await services.redis.aclose()
        await services.db.dispose()


def _as_operator(services: Services, organization_id: str | None = None) -> RequestContext:
    """A command acts through the service functions as the platform operator (resolvers/deps.py)."""
    from resolvers.deps import RequestContext

    return RequestContext.for_operator(services, _operator(), organization_id=organization_id)


async def _tenant(services: Services, slug: str) -> RequestContext | None:
    """The operator's context in the organization `slug` names; None (and a message) when there is none."""
    from authz.errors import NotFound
    from resolvers.organizations import find_organization

    lookup = _as_operator(services)
    try:
        async with lookup.unit_of_work(writes=False):
            org = await find_organization(lookup, slug)
    except NotFound as exc:
        print(f"portcullis: {exc.message}", file=sys.stderr)
        return None
    return _as_operator(services, org.id)


async def _provision(settings: Settings, *, slug: str, name: str, plan: str, email: str,
                     password: str | None) -> Provisioned | None:
    """The tenant and its owner, or the owner's invitation (an address that has an account) and its email,
    audited with the operator as actor; None when the slug is taken."""
    from authz.errors import Conflict
    from resolvers.organizations import bootstrap_organization

    async with _services(settings) as services:
        ctx = _as_operator(services)
        try:
            async with ctx.unit_of_work():
                return await bootstrap_organization(ctx, slug=slug, name=name, plan=plan, owner_email=email,
                                                    password=password)
        except Conflict:
            return None


def cmd_bootstrap(args: argparse.Namespace) -> int:
    from authz.errors import GatewayError

    settings = _settings()
    password = secrets.token_urlsafe(18)
    try:
        done = asyncio.run(_provision(
            settings, slug=args.org, name=args.name, plan=args.plan.lower(), email=args.admin_email,
            password=password,
        ))
    except GatewayError as exc:
        print(f"portcullis: {exc.message}", file=sys.stderr)
        return 2
    if done is None:
        print(f"portcullis: an organization with the slug {args.org!r} already exists", file=sys.stderr)
        return 1
    print(f"organization {args.org} created (plan {args.plan.lower()})")
    if done.user_created:
        print(f"owner {args.admin_email} created; one-time password (shown once, change it after signing in):")
        print(password)
    else:
        # an existing account becomes the owner only by its holder's act (C-124)
        print(f"{args.admin_email} already has an account: it was invited as the owner and becomes the owner "
              "when it accepts. The invitation was emailed; its link (single use, 7 days):")
        print(done.invitation_url)
    return 0


async def _domains(settings: Settings, command: str, domain: str | None, slug: str | None) -> list[str]:
    from resolvers.domains import all_claims, assign_domain

    async with _services(settings) as services:
        ctx = _as_operator(services)
        async with ctx.unit_of_work(writes=command != "list"):
            if command == "list":
                return [f"{d}\t{s}" for d, s in await all_claims(ctx)]
            assert domain is not None
            name, owner = await assign_domain(ctx, domain, slug if command == "assign" else None)
            return [f"{name} is claimed by {owner}" if owner else f"{name} is claimed by no organization"]


def cmd_domains(args: argparse.Namespace) -> int:
    from authz.errors import GatewayError

    settings = _settings()
    try:
        lines = asyncio.run(_domains(settings, args.domains_command, getattr(args, "domain", None),
                                     getattr(args, "org", None)))
    except GatewayError as exc:
        print(f"portcullis: {exc.message}", file=sys.stderr)
        return 2
    for line in lines:
        print(line)
    return 0


def cmd_seed_demo(_: argparse.Namespace) -> int:
    settings = _settings()
    if settings.env is not Environment.DEV:
        print("portcullis: seed-demo runs only with PORTCULLIS_ENV=dev", file=sys.stderr)
        return 2
    done = asyncio.run(_provision(
        settings, slug=DEMO_ORG, name="Acme Corporation", plan="professional", email=DEMO_OWNER,
        password=DEMO_PASSWORD,
    ))
    if done is not None:
        print(f"demo tenant {DEMO_ORG} created: sign in as {DEMO_OWNER} / {DEMO_PASSWORD}")
    else:
        print(f"demo tenant {DEMO_ORG} already exists")
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


async def _api_key_command(settings: Settings, args: argparse.Namespace) -> int:
    from datetime import datetime

    from authz.errors import GatewayError, NotFound
    from resolvers import api_keys

    async with _services(settings) as services:
        ctx = await _tenant(services, args.org)
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
            new = api_keys.NewApiKey(name=args.name, scopes=list(args.scope), expires_at=expires,
                                     allowed_ips=list(args.allowed_ip))
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
    return asyncio.run(_api_key_command(_settings(), args))


def parse_limit_settings(values: list[str]) -> dict[str, int | None]:
    """`RESOURCE=N|unlimited` settings as stored overrides (resource name -> int, None for unlimited).
    ValueError names the first bad one."""
    from authz.plans import QuotaResource
    from resolvers.quotas import MAX_LIMIT

    out: dict[str, int | None] = {}
    for value in values:
        name, sep, raw = value.partition("=")
        resource = name.strip().upper()
        if not sep or not resource:
            raise ValueError(f"{value!r}: expected RESOURCE=N or RESOURCE=unlimited")
        if resource not in QuotaResource.__members__:
            raise ValueError(f"unknown resource {name.strip()!r}; one of {', '.join(QuotaResource.__members__)}")
        raw = raw.strip()
        if raw.lower() == "unlimited":
            out[resource] = None
            continue
        if not raw.isascii() or not raw.isdigit():
            raise ValueError(f"{resource}: the limit must be a whole number from 0 to {MAX_LIMIT}, or unlimited "
                             f"(got {raw!r})")
        limit = int(raw)
        if limit > MAX_LIMIT:
            raise ValueError(f"{resource}: the limit must be a whole number from 0 to {MAX_LIMIT}, or unlimited")
        out[resource] = limit
    return out


def _limit_text(limit: int | None) -> str:
    return "unlimited" if limit is None else f"{limit:,}"


async def _org_limits_command(settings: Settings, args: argparse.Namespace, changes: dict[str, int | None]) -> int:
    from authz.errors import GatewayError
    from authz.plans import PLAN_LIMITS, QuotaResource
    from resolvers.quotas import COUNTED, get_limits, override_limits

    async with _services(settings) as services:
        ctx = await _tenant(services, args.slug)
        if ctx is None:
            return 1
        changing = args.reset or bool(changes)
        try:
            # a change is announced to every running gateway once committed (over Redis in shared mode)
            async with ctx.unit_of_work(writes=changing):
                view = await (override_limits(ctx, changes, reset=args.reset) if changing else get_limits(ctx))
        except GatewayError as exc:
            print(f"portcullis: {exc.message}; nothing changed", file=sys.stderr)
            return 2
    org = view.organization
    plan = PLAN_LIMITS.get(org.plan, {})
    print(f"organization {org.slug} (plan {org.plan})")
    print(f"{'resource':<22}{'plan':>12}{'override':>12}{'limit':>12}{'used':>10}")
    for r in QuotaResource:
        override = _limit_text(view.overrides[r]) if r in view.overrides else "-"
        count = str(view.used[r]) if r in COUNTED else "-"
        print(f"{r.value:<22}{_limit_text(plan.get(r)):>12}{override:>12}{_limit_text(view.limits[r]):>12}"
              f"{count:>10}")
    return 0


def cmd_org_limits(args: argparse.Namespace) -> int:
    try:
        changes = parse_limit_settings(args.set or [])
    except ValueError as exc:
        print(f"portcullis: {exc}; nothing changed", file=sys.stderr)
        return 2
    return asyncio.run(_org_limits_command(_settings(), args, changes))


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
    return asyncio.run(_mail_command(_settings(), args))


def cmd_keys_generate(_: argparse.Namespace) -> int:
    from identity.tokens import generate_private_key_pem

    sys.stdout.write(generate_private_key_pem())
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="portcullis", description="GraphQL API gateway with edge authentication")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run the gateway with uvicorn")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--workers", type=int, default=1)
    s.set_defaults(func=cmd_serve)

    sub.add_parser("migrate", help="apply database migrations").set_defaults(func=cmd_migrate)
    sub.add_parser("schema", help="print the GraphQL SDL").set_defaults(func=cmd_schema)

    b = sub.add_parser("bootstrap", help="create a tenant and its owner")
    b.add_argument("--org", required=True)
    b.add_argument("--name", required=True)
    b.add_argument("--plan", default="free", choices=["free", "starter", "professional", "enterprise",
                                                      "FREE", "STARTER", "PROFESSIONAL", "ENTERPRISE"])
    b.add_argument("--admin-email", required=True)
    b.set_defaults(func=cmd_bootstrap)

    sub.add_parser("seed-demo", help="create the demo tenant (dev only)").set_defaults(func=cmd_seed_demo)

    a = sub.add_parser("authz-report", help="every schema field with its rule and the built-in roles allowed")
    a.add_argument("--format", choices=["table", "json"], default="table")
    a.set_defaults(func=cmd_authz_report)

    ak = sub.add_parser("api-key", help="create, list and revoke API keys")
    aksub = ak.add_subparsers(dest="api_key_command", required=True)
    c = aksub.add_parser("create", help="create a key acting for the organization's owner; prints the secret once")
    c.add_argument("--org", required=True)
    c.add_argument("--name", required=True)
    c.add_argument("--scope", nargs="+", action="extend", required=True, metavar="SCOPE",
                   help="a permission the key carries; repeat the option or list several")
    c.add_argument("--expires-at", metavar="ISO8601")
    c.add_argument("--allowed-ip", nargs="+", action="extend", default=[], metavar="CIDR")
    lst = aksub.add_parser("list", help="list an organization's keys (never their secrets)")
    lst.add_argument("--org", required=True)
    r = aksub.add_parser("revoke", help="revoke a key")
    r.add_argument("--org", required=True)
    r.add_argument("id")
    ak.set_defaults(func=cmd_api_key)

    o = sub.add_parser("org", help="a tenant's settings kept by the operator")
    osub = o.add_subparsers(dest="org_command", required=True)
    lim = osub.add_parser(
        "limits", help="show, override or reset one tenant's plan limits",
        description="Without options, shows the tenant's limits. --set overrides limits of its plan "
                    "(RESOURCE is a QuotaResource name; 0 is a real limit, unlimited lifts it); --reset "
                    "removes every override first.",
    )
    lim.add_argument("slug")
    lim.add_argument("--set", nargs="+", action="extend", metavar="RESOURCE=N|unlimited")
    lim.add_argument("--reset", action="store_true", help="back to the plan's limits")
    lim.set_defaults(func=cmd_org_limits)
    au = sub.add_parser("audit", help="verify the audit log's hash chains; write signed checkpoints")
    ausub = au.add_subparsers(dest="audit_command", required=True)
    v = ausub.add_parser("verify", help="recompute every chain; exit 1 when one is broken")
    v.add_argument("--checkpoint", help="a checkpoint file (or a directory: its latest) to check truncation against")
    v.add_argument("--json", action="store_true", help="the full report as JSON")
    cp = ausub.add_parser("checkpoint", help="write each chain's head, signed with the gateway's key")
    cp.add_argument("--out", required=True, help="a file, or a directory to add a new file to")
    au.set_defaults(func=cmd_audit)

    ml = sub.add_parser("mail", help="read the outbox: the local mailbox when no SMTP server is configured")
    mlsub = ml.add_subparsers(dest="mail_command", required=True)
    mll = mlsub.add_parser("list", help="the latest messages, newest first: id, created, status, recipient, "
                                        "template, subject")
    mll.add_argument("--to", metavar="EMAIL", help="only the messages to this address")
    mll.add_argument("--limit", type=int, default=50, metavar="N")
    mls = mlsub.add_parser("show", help="one message: its headers and its text part")
    mls.add_argument("id")
    ml.set_defaults(func=cmd_mail)

    dm = sub.add_parser("domains", help="organizations' claimed email domains (the operator reassigns claims)")
    dmsub = dm.add_subparsers(dest="domains_command", required=True)
    dmsub.add_parser("list", help="every claim: domain and organization")
    da = dmsub.add_parser("assign", help="give a domain to an organization, taking it from any other")
    da.add_argument("domain")
    da.add_argument("--org", required=True, metavar="SLUG")
    dr = dmsub.add_parser("release", help="drop a domain's claim, whoever holds it")
    dr.add_argument("domain")
    dm.set_defaults(func=cmd_domains)

    k = sub.add_parser("keys", help="signing keys")
    ksub = k.add_subparsers(dest="keys_command", required=True)
    ksub.add_parser("generate", help="print a new RSA signing key (PEM)").set_defaults(func=cmd_keys_generate)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
