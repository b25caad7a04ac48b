"""The `portcullis` command: its parser, and the dispatch to the command modules beside it."""

from __future__ import annotations

import argparse

from authz.plans import PLANS, Plan
from gateway.cli.api_keys import cmd_api_key
from gateway.cli.audit import cmd_audit
from gateway.cli.blocks import add_parser as add_blocks_parser
from gateway.cli.data import add_parser as add_data_parser
from gateway.cli.mail import cmd_mail
from gateway.cli.server import (
    cmd_authz_report,
    cmd_keys_generate,
    cmd_keys_secret,
    cmd_migrate,
    cmd_schema,
    cmd_serve,
    cmd_upstreams,
)
from gateway.cli.tenants import (
    DEMO_ORG,
    DEMO_OWNER,
    DEMO_PASSWORD,
    cmd_bootstrap,
    cmd_domains,
    cmd_org_limits,
    cmd_org_plan,
    cmd_seed_demo,
    parse_limit_settings,
)

__all__ = ["DEMO_ORG", "DEMO_OWNER", "DEMO_PASSWORD", "main", "parse_limit_settings", "parser"]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="portcullis", description="GraphQL API gateway with edge authentication")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run the gateway with uvicorn")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--workers", type=int, default=1)
    s.set_defaults(func=cmd_serve)

    sub.add_parser("migrate", help="apply database migrations").set_defaults(func=cmd_migrate)
    sch = sub.add_parser("schema", help="print the GraphQL SDL, with the upstreams mounted")
    sch.add_argument(
        "--without-upstreams", action="store_true", help="the gateway's own schema only (what schema.graphql holds)"
    )
    sch.set_defaults(func=cmd_schema)

    up = sub.add_parser("upstreams", help="the team's upstream services (PORTCULLIS_UPSTREAMS_FILE)")
    upsub = up.add_subparsers(dest="upstreams_command", required=True)
    chk = upsub.add_parser(
        "check", help="validate the upstreams file, load every schema, print the composed SDL or every problem"
    )
    chk.add_argument("--file", help="the upstreams file (default: PORTCULLIS_UPSTREAMS_FILE)")
    up.set_defaults(func=cmd_upstreams)

    b = sub.add_parser("bootstrap", help="create a tenant and its owner")
    b.add_argument("--org", required=True)
    b.add_argument("--name", required=True)
    b.add_argument("--plan", default=Plan.FREE.value, choices=[*PLANS, *(p.upper() for p in PLANS)])
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
    c.add_argument(
        "--scope",
        nargs="+",
        action="extend",
        required=True,
        metavar="SCOPE",
        help="a permission the key carries; repeat the option or list several",
    )
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
        "limits",
        help="show, override or reset one tenant's plan limits",
        description="Without options, shows the tenant's limits. --set overrides limits of its plan "
        "(RESOURCE is a QuotaResource name; 0 is a real limit, unlimited lifts it); --reset "
        "removes every override first.",
    )
    lim.add_argument("slug")
    lim.add_argument("--set", nargs="+", action="extend", metavar="RESOURCE=N|unlimited")
    lim.add_argument("--reset", action="store_true", help="back to the plan's limits")
    lim.set_defaults(func=cmd_org_limits)
    pl = osub.add_parser(
        "plan",
        help="change one tenant's plan",
        description="Sets the organization's plan, audited with the operator as actor. A child organization "
        "never goes above its parent's plan; lowering a plan lowers every organization below it that is above.",
    )
    pl.add_argument("slug")
    pl.add_argument("plan", choices=[*PLANS, *(p.upper() for p in PLANS)])
    pl.set_defaults(func=cmd_org_plan)
    au = sub.add_parser("audit", help="verify the audit log's hash chains; write signed checkpoints")
    ausub = au.add_subparsers(dest="audit_command", required=True)
    v = ausub.add_parser("verify", help="recompute every chain; exit 1 when one is broken")
    v.add_argument("--checkpoint", help="a checkpoint file (or a directory: its latest) to check truncation against")
    v.add_argument("--json", action="store_true", help="the full report as JSON")
    vs = ausub.add_parser(
        "verify-stream",
        help="check what an audit stream's receiver stored; exit 1 naming the first dropped or altered sequence",
        description="FILE holds JSON lines as a receiver stored them: entry lines, checkpoint lines, whole "
        'batches, webhook messages or Splunk HEC events (docs/audit.md, "Streaming"). Checkpoint signatures '
        "are checked with the gateway's signing keys, or with --public-key.",
    )
    vs.add_argument("file")
    vs.add_argument(
        "--public-key",
        action="append",
        metavar="PEM",
        help="a PEM file of the gateway's public key (repeatable: current and previous keys); without it, the "
        "keys the gateway is configured with",
    )
    vs.add_argument("--json", action="store_true", help="the report as JSON")
    cp = ausub.add_parser("checkpoint", help="write each chain's head, signed with the gateway's key")
    cp.add_argument("--out", required=True, help="a file, or a directory to add a new file to")
    au.set_defaults(func=cmd_audit)

    ml = sub.add_parser("mail", help="read the outbox: the local mailbox when no SMTP server is configured")
    mlsub = ml.add_subparsers(dest="mail_command", required=True)
    mll = mlsub.add_parser(
        "list", help="the latest messages, newest first: id, created, status, recipient, template, subject"
    )
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

    add_blocks_parser(sub)
    add_data_parser(sub)

    k = sub.add_parser("keys", help="signing keys")
    ksub = k.add_subparsers(dest="keys_command", required=True)
    ksub.add_parser("generate", help="print a new RSA signing key (PEM)").set_defaults(func=cmd_keys_generate)
    ksub.add_parser(
        "secret", help="print a new random secret (API key pepper, cookie secret, data encryption key, metrics token)"
    ).set_defaults(func=cmd_keys_secret)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return int(args.func(args))
