"""SAML connections of a tenant: configuring one from pasted IdP metadata, listing, and the lookups the
SAML routes make before any session exists (by the organization's slug).

An organization has at most one SAML connection: `configureSaml` creates it or replaces its settings.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select as sa_select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from authz.errors import BadUserInput
from identity.lockout import email_key
from identity.saml import SamlMetadataError, parse_idp_metadata
from identity.sso import ExternalIdentity
from resolvers.common import tenant_of
from resolvers.deps import RequestContext
from resolvers.roles import require_role
from resolvers.sso import configured_details
from store.audit import AuditAction
from store.models import Membership, Organization, SsoConnection, SsoIdentity, User
from store.scoping import tenant_select

MAX_ATTRIBUTE_NAME = 255
MAX_DOMAINS = 50
MAX_ROLE_MAPPINGS = 100
DOMAIN = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$")


@dataclass(frozen=True, slots=True)
class SamlConnectionSpec:
    idp_metadata_xml: str
    email_attribute: str = "email"
    groups_attribute: str = "groups"
    role_mapping: Mapping[str, Any] = field(default_factory=dict)
    default_role: str = "viewer"
    allowed_domains: list[str] = field(default_factory=list)
    jit_provisioning: bool = True
    enabled: bool = True


def _attribute(value: str, name: str) -> str:
    value = value.strip()
    if not value or len(value) > MAX_ATTRIBUTE_NAME or any(ord(ch) < 0x20 for ch in value):
        raise BadUserInput(f"{name} must be 1 to {MAX_ATTRIBUTE_NAME} printable characters", field=name)
    return value


def _domains(values: list[str]) -> list[str]:
    if len(values) > MAX_DOMAINS:
        raise BadUserInput(f"at most {MAX_DOMAINS} domains", field="allowedDomains")
    domains = []
    for value in values:
        domain = value.strip().lower()
        if not DOMAIN.match(domain):
            raise BadUserInput("allowedDomains holds a value that is not a domain name", field="allowedDomains")
        domains.append(domain)
    return list(dict.fromkeys(domains))


async def _role_mapping(db: AsyncSession, organization_id: str, mapping: Mapping[str, Any]) -> dict[str, str]:
    """IdP group -> role name; each role must exist in the tenant."""
    if not isinstance(mapping, Mapping) or len(mapping) > MAX_ROLE_MAPPINGS:
        raise BadUserInput(
            f"roleMapping must be an object of at most {MAX_ROLE_MAPPINGS} group names", field="roleMapping"
        )
    result: dict[str, str] = {}
    for group, role in mapping.items():
        if not isinstance(group, str) or not group.strip() or len(group) > MAX_ATTRIBUTE_NAME:
            raise BadUserInput("roleMapping keys must be group names", field="roleMapping")
        if not isinstance(role, str):
            raise BadUserInput("roleMapping values must be role names", field="roleMapping")
        try:
            await require_role(db, organization_id, role)
        except BadUserInput:
            raise BadUserInput(
                "roleMapping names a role this organization does not have", field="roleMapping"
            ) from None
        result[group] = role
    return result


async def configure_saml(ctx: RequestContext, spec: SamlConnectionSpec) -> SsoConnection:
    db = await ctx.db()
    org_id = tenant_of(ctx.principal)
    try:
        metadata = parse_idp_metadata(spec.idp_metadata_xml)
    except SamlMetadataError as exc:
        raise BadUserInput(f"idpMetadataXml: {exc}", field="idpMetadataXml") from None
    await require_role(db, org_id, spec.default_role)
    config = {
        "sso_url": metadata.sso_url,
        "certificates": list(metadata.certificates),
        "email_attribute": _attribute(spec.email_attribute, "emailAttribute"),
        "groups_attribute": _attribute(spec.groups_attribute, "groupsAttribute"),
        "name_attribute": "name",
    }
    values: dict[str, Any] = {
        "enabled": spec.enabled,
        "entity_id": metadata.entity_id,
        "issuer": metadata.entity_id,
        "config": config,
        "role_mapping": await _role_mapping(db, org_id, spec.role_mapping),
        "default_role": spec.default_role,
        "allowed_domains": _domains(spec.allowed_domains),
        "jit_provisioning": spec.jit_provisioning,
    }
    row = (
        (await db.execute(tenant_select(SsoConnection, org_id).where(col(SsoConnection.kind) == "saml")))
        .scalars()
        .first()
    )
    created = row is None
    if row is None:
        row = SsoConnection(organization_id=org_id, kind="saml", **values)
    else:
        for name, value in values.items():
            setattr(row, name, value)
        row.updated_at = ctx.services.now()
    db.add(row)
    await db.flush()
    ctx.audit(
        AuditAction.SSO_CONFIGURED,
        resource_type="sso_connection",
        resource_id=row.id,
        details=configured_details(row, created=created),
    )
    return row


async def find_connection(ctx: RequestContext, slug: str) -> tuple[Organization | None, SsoConnection | None]:
    """The organization by its slug and its SAML connection, enabled or not (the SAML routes, before any
    session)."""
    db = await ctx.db()
    org = (await db.execute(sa_select(Organization).where(col(Organization.slug) == slug))).scalar_one_or_none()
    if org is None:
        return None, None
    rows = await db.execute(tenant_select(SsoConnection, org.id).where(col(SsoConnection.kind) == "saml"))
    return org, rows.scalars().first()


def email_domain_allowed(connection: SsoConnection, email: str | None) -> bool:
    """An asserted email must lie in one of the connection's domains, when it names any."""
    if not connection.allowed_domains:
        return True
    if not email or "@" not in email:
        return False
    return email.rsplit("@", 1)[1].lower() in connection.allowed_domains


async def known_to_tenant(ctx: RequestContext, connection: SsoConnection, identity: ExternalIdentity) -> bool:
    """Whether the identity is already linked, or its email is a member's: what a connection without
    just-in-time provisioning requires before a login goes any further."""
    db = await ctx.db()
    linked = await db.execute(
        tenant_select(SsoIdentity, connection.organization_id).where(
            col(SsoIdentity.issuer) == identity.issuer, col(SsoIdentity.subject) == identity.subject
        )
    )
    if linked.scalars().first() is not None:
        return True
    if not identity.email:
        return False
    member = await db.execute(
        tenant_select(Membership, connection.organization_id)
        .join(User, col(User.id) == col(Membership.user_id))
        .where(col(User.email_key) == email_key(identity.email))
    )
    return member.scalars().first() is not None
