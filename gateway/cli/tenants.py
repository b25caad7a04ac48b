"""Commands about tenants: bootstrap, seed-demo, domains, org limits, org plan."""

from __future__ import annotations

import argparse
import asyncio
import secrets
import sys
from typing import TYPE_CHECKING

from gateway.cli.common import as_operator, command_services, load_settings, operator_context_for_slug
from gateway.settings import Environment, Settings

if TYPE_CHECKING:
    from resolvers.provisioning import Provisioned

DEMO_ORG = "acme"
DEMO_OWNER = "owner@acme.test"
DEMO_PASSWORD = "portcullis-demo"


async def _provision(
    settings: Settings, *, slug: str, name: str, plan: str, email: str, password: str | None
) -> Provisioned | None:
    """The tenant and its owner, or the owner's invitation (an address that has an account) and its email,
    audited with the operator as actor; None when the slug is taken."""
    from authz.errors import Conflict
    from resolvers.organizations import bootstrap_organization

    async with command_services(settings) as services:
        ctx = as_operator(services)
        try:
            async with ctx.unit_of_work():
                return await bootstrap_organization(
                    ctx, slug=slug, name=name, plan=plan, owner_email=email, password=password
                )
        except Conflict:
            return None


def cmd_bootstrap(args: argparse.Namespace) -> int:
    from authz.errors import GatewayError

    settings = load_settings()
    password = secrets.token_urlsafe(18)
    try:
        done = asyncio.run(
            _provision(
                settings,
                slug=args.org,
                name=args.name,
                plan=args.plan.lower(),
                email=args.admin_email,
                password=password,
            )
        )
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
        print(
            f"{args.admin_email} already has an account: it was invited as the owner and becomes the owner "
            "when it accepts. The invitation was emailed; its link (single use, 7 days):"
        )
        print(done.invitation_url)
    return 0


def cmd_seed_demo(_: argparse.Namespace) -> int:
    settings = load_settings()
    if settings.env is not Environment.DEV:
        print("portcullis: seed-demo runs only with PORTCULLIS_ENV=dev", file=sys.stderr)
        return 2
    done = asyncio.run(
        _provision(
            settings,
            slug=DEMO_ORG,
            name="Acme Corporation",
            plan="professional",
            email=DEMO_OWNER,
            password=DEMO_PASSWORD,
        )
    )
    if done is not None:
        print(f"demo tenant {DEMO_ORG} created: sign in as {DEMO_OWNER} / {DEMO_PASSWORD}")
    else:
        print(f"demo tenant {DEMO_ORG} already exists")
    return 0


async def _domains(settings: Settings, command: str, domain: str | None, slug: str | None) -> list[str]:
    from resolvers.domains import all_claims, assign_domain

    async with command_services(settings) as services:
        ctx = as_operator(services)
        async with ctx.unit_of_work(writes=command != "list"):
            if command == "list":
                return [f"{d}\t{s}" for d, s in await all_claims(ctx)]
            assert domain is not None
            name, owner = await assign_domain(ctx, domain, slug if command == "assign" else None)
            return [f"{name} is claimed by {owner}" if owner else f"{name} is claimed by no organization"]


def cmd_domains(args: argparse.Namespace) -> int:
    from authz.errors import GatewayError

    settings = load_settings()
    try:
        lines = asyncio.run(
            _domains(settings, args.domains_command, getattr(args, "domain", None), getattr(args, "org", None))
        )
    except GatewayError as exc:
        print(f"portcullis: {exc.message}", file=sys.stderr)
        return 2
    for line in lines:
        print(line)
    return 0


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
            raise ValueError(
                f"{resource}: the limit must be a whole number from 0 to {MAX_LIMIT}, or unlimited (got {raw!r})"
            )
        limit = int(raw)
        if limit > MAX_LIMIT:
            raise ValueError(f"{resource}: the limit must be a whole number from 0 to {MAX_LIMIT}, or unlimited")
        out[resource] = limit
    return out


def _limit_text(limit: int | None) -> str:
    return "unlimited" if limit is None else f"{limit:,}"


async def _org_limits_command(settings: Settings, args: argparse.Namespace, changes: dict[str, int | None]) -> int:
    from authz.errors import GatewayError
    from authz.plans import PLAN_QUOTAS, QuotaResource
    from resolvers.quotas import COUNTED, get_limits, override_limits

    async with command_services(settings) as services:
        ctx = await operator_context_for_slug(services, args.slug)
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
    plan = PLAN_QUOTAS.get(org.plan, {})
    print(f"organization {org.slug} (plan {org.plan})")
    print(f"{'resource':<22}{'plan':>12}{'override':>12}{'limit':>12}{'used':>10}")
    for r in QuotaResource:
        override = _limit_text(view.overrides[r]) if r in view.overrides else "-"
        count = str(view.used[r]) if r in COUNTED else "-"
        print(f"{r.value:<22}{_limit_text(plan.get(r)):>12}{override:>12}{_limit_text(view.limits[r]):>12}{count:>10}")
    return 0


def cmd_org_limits(args: argparse.Namespace) -> int:
    try:
        changes = parse_limit_settings(args.set or [])
    except ValueError as exc:
        print(f"portcullis: {exc}; nothing changed", file=sys.stderr)
        return 2
    return asyncio.run(_org_limits_command(load_settings(), args, changes))


async def _org_plan_command(settings: Settings, slug: str, plan: str) -> int:
    """The operator's change of a tenant's plan: the same service as `changePlan`, with the operator's
    authority over a child's plan (still never above its parent's); lowering a plan lowers its children."""
    from authz.errors import GatewayError
    from resolvers.organizations import change_plan

    async with command_services(settings) as services:
        ctx = await operator_context_for_slug(services, slug)
        if ctx is None:
            return 1
        try:
            async with ctx.unit_of_work():
                org = await change_plan(ctx, plan)
        except GatewayError as exc:
            print(f"portcullis: {exc.message}; nothing changed", file=sys.stderr)
            return 2
    print(f"organization {org.slug}: plan {org.plan}")
    return 0


def cmd_org_plan(args: argparse.Namespace) -> int:
    return asyncio.run(_org_plan_command(load_settings(), args.slug, args.plan.lower()))
