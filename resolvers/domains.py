"""Email domains an organization claims: where its identity providers may provision accounts.

An IdP configured by a tenant vouches for whoever its administrator says. So a tenant's IdP may create an
account (just-in-time provisioning) only at an address of a domain that tenant has claimed, and it signs in
only accounts it created that way or that their holders linked to it themselves (resolvers/sso_login.py). A
domain has at most one claimant: the first claim wins, and only a platform operator (`portcullis domains
assign|release`) moves a claim from one organization to another. Domains of public mailbox providers
cannot be claimed by anyone: their addresses belong to people, not to an organization.
"""

from __future__ import annotations

from sqlalchemy import delete
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col, select

from authz import Permission, Principal
from authz.errors import BadUserInput, Conflict, Forbidden, NotFound
from resolvers.common import tenant_of
from resolvers.deps import RequestContext
from store.audit import PLATFORM_CHAIN, AuditAction
from store.models import EmailDomain, Organization
from store.scoping import tenant_filter, tenant_select

MAX_DOMAINS = 100
_LABEL_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-")

# Mailbox providers whose addresses belong to individuals: no organization speaks for them.
PUBLIC_MAIL_DOMAINS = frozenset(
    {
        "gmail.com",
        "googlemail.com",
        "outlook.com",
        "hotmail.com",
        "hotmail.co.uk",
        "live.com",
        "msn.com",
        "yahoo.com",
        "yahoo.co.uk",
        "yahoo.fr",
        "yahoo.de",
        "ymail.com",
        "aol.com",
        "icloud.com",
        "me.com",
        "mac.com",
        "proton.me",
        "protonmail.com",
        "pm.me",
        "gmx.com",
        "gmx.de",
        "gmx.net",
        "web.de",
        "mail.com",
        "zoho.com",
        "yandex.com",
        "yandex.ru",
        "mail.ru",
        "qq.com",
        "163.com",
        "126.com",
        "fastmail.com",
        "tutanota.com",
        "tuta.io",
        "hey.com",
        "orange.fr",
        "free.fr",
        "t-online.de",
        "libero.it",
        "naver.com",
        "seznam.cz",
    }
)


def checked_domain(raw: str, field: str = "domain") -> str:
    """The domain, lowercased; BAD_USER_INPUT when it is not a plain DNS name of two labels or more."""
    domain = raw.strip().lower().rstrip(".")
    labels = domain.split(".")
    if (
        not domain
        or len(domain) > 253
        or len(labels) < 2
        or any(
            not label or len(label) > 63 or label[0] == "-" or label[-1] == "-" or set(label) - _LABEL_CHARS
            for label in labels
        )
        or labels[-1].isdigit()
    ):
        raise BadUserInput("not a domain name", field=field)
    return domain


def domain_of(email: str) -> str:
    return email.rsplit("@", 1)[-1].strip().lower().rstrip(".")


async def claimant(db: AsyncSession, email: str) -> str | None:
    """The organization that has claimed the domain of `email`, if any."""
    # tenant-scope: a domain's claim is looked up by the domain, to know which tenant (if any) holds it
    row = await db.get(EmailDomain, domain_of(email))
    return row.organization_id if row is not None else None


async def list_domains(ctx: RequestContext, organization_id: str) -> list[EmailDomain]:
    if organization_id != tenant_of(ctx.principal):
        return []
    db = await ctx.db()
    rows = await db.execute(tenant_select(EmailDomain, organization_id).order_by(col(EmailDomain.domain)))
    return list(rows.scalars().all())


async def claim_domain(ctx: RequestContext, raw: str) -> EmailDomain:
    org_id = tenant_of(ctx.principal)
    domain = checked_domain(raw)
    if domain in PUBLIC_MAIL_DOMAINS:
        raise BadUserInput(
            "addresses at a public mailbox provider cannot be claimed by an organization", field="domain"
        )
    db = await ctx.db()
    existing = await db.get(EmailDomain, domain)  # tenant-scope: first claim wins, whoever holds it
    if existing is not None:
        if existing.organization_id == org_id:
            ctx.audit(
                AuditAction.DOMAIN_CLAIMED,
                resource_type="email_domain",
                resource_id=domain,
                details={"alreadyClaimed": True},
            )
            return existing
        raise Conflict("This domain is claimed by another organization.")
    count = len((await db.execute(select(col(EmailDomain.domain)).where(tenant_filter(EmailDomain, org_id)))).all())
    if count >= MAX_DOMAINS:
        raise BadUserInput(f"an organization claims at most {MAX_DOMAINS} domains", field="domain")
    row = EmailDomain(
        domain=domain, organization_id=org_id, claimed_by=_user(ctx.principal), claimed_at=ctx.services.now()
    )
    db.add(row)
    try:
        await db.flush()
    except IntegrityError:
        raise Conflict("This domain is claimed by another organization.") from None
    ctx.audit(AuditAction.DOMAIN_CLAIMED, resource_type="email_domain", resource_id=domain)
    return row


async def release_domain(ctx: RequestContext, raw: str) -> bool:
    org_id = tenant_of(ctx.principal)
    domain = checked_domain(raw)
    db = await ctx.db()
    result = await db.execute(
        delete(EmailDomain).where(tenant_filter(EmailDomain, org_id), col(EmailDomain.domain) == domain)
    )
    if (getattr(result, "rowcount", 0) or 0) != 1:
        raise NotFound("This organization has not claimed that domain.")
    ctx.audit(AuditAction.DOMAIN_RELEASED, resource_type="email_domain", resource_id=domain)
    return True


def _check_operator(ctx: RequestContext, permission: Permission) -> None:
    if permission not in ctx.principal.effective_permissions:
        raise Forbidden(
            "Every organization's claims are the platform operator's to see and move.",
            requiredScopes=[[permission.value]],
        )


async def assign_domain(ctx: RequestContext, raw: str, organization_slug: str | None) -> tuple[str, str | None]:
    """A platform operator's reassignment (`portcullis domains assign|release`): the domain and the slug of
    the organization it now belongs to (None: released). Works on a public mailbox domain only to release it.
    Recorded in the platform's chain."""
    _check_operator(ctx, Permission.PLATFORM_ORGANIZATIONS_MANAGE)
    domain = checked_domain(raw)
    db = await ctx.db()
    # tenant-scope: the operator's command acts on any tenant's claim
    await db.execute(delete(EmailDomain).where(col(EmailDomain.domain) == domain))
    if organization_slug is None:
        _audit_assignment(ctx, domain, None)
        return domain, None
    if domain in PUBLIC_MAIL_DOMAINS:
        raise BadUserInput(
            "addresses at a public mailbox provider cannot be claimed by an organization", field="domain"
        )
    org = (
        await db.execute(select(Organization).where(col(Organization.slug) == organization_slug))
    ).scalar_one_or_none()
    if org is None:
        raise NotFound(f"no organization with the slug {organization_slug!r}")
    db.add(EmailDomain(domain=domain, organization_id=org.id))
    await db.flush()
    _audit_assignment(ctx, domain, org.slug)
    return domain, org.slug


def _audit_assignment(ctx: RequestContext, domain: str, slug: str | None) -> None:
    ctx.audit(
        AuditAction.DOMAIN_CLAIMED if slug else AuditAction.DOMAIN_RELEASED,
        organization_id=PLATFORM_CHAIN,
        resource_type="email_domain",
        resource_id=domain,
        details={"organization": slug},
    )


async def all_claims(ctx: RequestContext) -> list[tuple[str, str]]:
    """Every claim, as (domain, organization slug), for the operator's `portcullis domains list`."""
    _check_operator(ctx, Permission.PLATFORM_ORGANIZATIONS_READ)
    rows = await (await ctx.db()).execute(
        # tenant-scope: the operator's listing spans every tenant
        select(col(EmailDomain.domain), col(Organization.slug))
        .join(Organization, col(Organization.id) == col(EmailDomain.organization_id))
        .order_by(col(EmailDomain.domain))
    )
    return [(d, s) for d, s in rows.all()]


def _user(principal: Principal) -> str | None:
    return principal.subject_id if principal.kind.value == "user" else None
