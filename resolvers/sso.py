"""Single sign-on: tenants' connections (configuration and lookup), and the record of every SSO outcome.

Completing a login once an IdP has vouched for someone, and linking an existing account by its holder's act,
are in resolvers/sso_login.py (`complete_sso_login`, `start_sso_link`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlmodel import col, select

from authz import is_builtin_role
from authz.errors import BadUserInput
from identity.oidc import ADDRESS_REFUSED, DEFAULT_ALGORITHMS, OidcConnectionConfig, OidcError, check_issuer_url
from resolvers.common import tenant_of
from resolvers.deps import RequestContext
from resolvers.roles import check_can_grant, require_role
from store.audit import PLATFORM_CHAIN, ActorType, AuditAction, AuditResult
from store.models import AuthSession, Organization, SsoConnection, User, new_id
from store.scoping import tenant_select

log = logging.getLogger("portcullis.sso")
security_log = logging.getLogger("portcullis.security")

_DOMAIN_LABEL = "abcdefghijklmnopqrstuvwxyz0123456789-"
_SCOPE_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789:._-/")


class SsoLoginError(Exception):
    """A refused single sign-on; `reason` goes to logs and audit, never to the browser."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
        # more for the audit entry (a refusal for risk: `{"risk": ...}`)
        self.details: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class SsoLogin:
    user: User
    organization: Organization
    session: AuthSession
    role: str
    user_created: bool


async def record_sso_event(
    ctx: RequestContext,
    event: str,
    *,
    reason: str | None,
    protocol: str,
    organization_id: str | None,
    connection_id: str | None,
    user_id: str | None = None,
    details: Mapping[str, Any] | None = None,
) -> None:
    """The one place every SSO outcome is recorded (`authn_sso_success`, `authn_sso_fail`): a structured
    security event and an audit entry of its own (in the tenant's chain, or the platform's when no tenant
    is known yet). The context is the browser's request, before any session: its address, user agent
    and request id."""
    p = ctx.principal
    extra = {
        "event": event,
        "reason": reason,
        "protocol": protocol,
        "organization_id": organization_id,
        "connection_id": connection_id,
        "user_id": user_id,
        "client_ip": p.client_ip,
        "user_agent": (ctx.user_agent or "")[:256] or None,
        "request_id": p.request_id,
    }
    success = event == AuditAction.AUTHN_SSO_SUCCESS
    security_log.log(logging.INFO if success else logging.WARNING, event, extra=extra)
    entry = ctx.audit_event(
        AuditAction.AUTHN_SSO_SUCCESS if success else AuditAction.AUTHN_SSO_FAIL,
        result=AuditResult.SUCCESS if success else AuditResult.DENIED,
        organization_id=organization_id or PLATFORM_CHAIN,
        actor_type=ActorType.USER if user_id else ActorType.ANONYMOUS,
        actor_id=user_id,
        resource_type="sso_connection",
        resource_id=connection_id,
        details={"protocol": protocol, **({"reason": reason} if reason else {}), **(details or {})},
    )
    try:
        await ctx.services.audit.record(entry)
    except Exception:  # the outcome stands; the missing entry is logged loudly
        security_log.exception("audit entry not written", extra={"request_id": p.request_id})


# -- connections --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OidcSpec:
    issuer: str
    client_id: str
    client_secret: str
    scopes: list[str]
    groups_claim: str
    role_mapping: Mapping[str, Any]
    default_role: str
    allowed_domains: list[str]
    jit_provisioning: bool
    enabled: bool


def _checked_domains(domains: list[str]) -> list[str]:
    if len(domains) > 50:
        raise BadUserInput("at most 50 allowed domains", field="allowedDomains")
    out = []
    for raw in domains:
        domain = raw.strip().lower()
        labels = domain.split(".")
        if (
            not domain
            or len(domain) > 253
            or len(labels) < 2
            or any(not label or len(label) > 63 or set(label) - set(_DOMAIN_LABEL) for label in labels)
        ):
            raise BadUserInput(f"not a domain name: {raw[:100]!r}", field="allowedDomains")
        if domain not in out:
            out.append(domain)
    return out


def _checked_mapping(mapping: Mapping[str, Any]) -> dict[str, str]:
    if not isinstance(mapping, Mapping) or len(mapping) > 100:
        raise BadUserInput("roleMapping is an object of at most 100 group names to role names", field="roleMapping")
    out: dict[str, str] = {}
    for group, role in mapping.items():
        if (
            not isinstance(group, str)
            or not group
            or len(group) > 256
            or "\x00" in group
            or not isinstance(role, str)
            or not role
            or len(role) > 63
        ):
            raise BadUserInput("roleMapping maps group names to role names", field="roleMapping")
        out[group] = role
    return out


def _check_spec(spec: OidcSpec, allow_loopback_http: bool) -> None:
    try:
        check_issuer_url(spec.issuer, allow_loopback_http=allow_loopback_http)
    except ValueError as exc:
        raise BadUserInput(str(exc), field="issuer") from None
    if not spec.client_id or len(spec.client_id) > 255 or "\x00" in spec.client_id:
        raise BadUserInput("clientId must be 1-255 characters", field="clientId")
    if not spec.client_secret or len(spec.client_secret) > 1024 or "\x00" in spec.client_secret:
        raise BadUserInput("clientSecret must be 1-1024 characters", field="clientSecret")
    if (
        "openid" not in spec.scopes
        or len(spec.scopes) > 20
        or any(not s or len(s) > 100 or set(s) - _SCOPE_CHARS for s in spec.scopes)
    ):
        raise BadUserInput("scopes must include openid (at most 20 plain scope names)", field="scopes")
    if not spec.groups_claim or len(spec.groups_claim) > 100 or "\x00" in spec.groups_claim:
        raise BadUserInput("groupsClaim must be 1-100 characters", field="groupsClaim")


async def configure_oidc(ctx: RequestContext, spec: OidcSpec) -> SsoConnection:
    """Create or replace the caller's organization's OIDC connection (one per organization)."""
    principal = ctx.principal
    org_id = tenant_of(principal)
    rp = ctx.services.oidc
    if rp is None or ctx.services.oidc_secrets is None:
        raise BadUserInput("single sign-on is not configured on this gateway")
    _check_spec(spec, rp.allow_loopback_http)
    mapping = _checked_mapping(spec.role_mapping)
    domains = _checked_domains(spec.allowed_domains)
    scopes = list(dict.fromkeys(spec.scopes))
    # the roles are read, and the provider asked, before the unit of work opens its session: on SQLite that
    # session takes the writers' turn, which no other mutation should wait for while an IdP answers
    async with ctx.services.db.transaction() as read:
        custom = await require_role(read, org_id, spec.default_role)
    for role in mapping.values():
        if not is_builtin_role(role) and role not in custom:
            raise BadUserInput(f"roleMapping names an unknown role: {role[:63]!r}", field="roleMapping")
    check_can_grant(
        principal.effective_permissions,
        [spec.default_role, *mapping.values()],
        custom,
        "SSO cannot grant a role with permissions you do not hold.",
    )
    try:
        # C-049 at configuration time: the discovery document must load and name this very issuer
        await rp.check_provider(
            OidcConnectionConfig(
                connection_id="check-" + new_id(),
                version="",
                issuer=spec.issuer,
                client_id=spec.client_id,
                client_secret=spec.client_secret,
                scopes=tuple(scopes),
            )
        )
    except OidcError as exc:
        log.info("sso_configure_refused", extra={"reason": exc.reason, "request_id": principal.request_id})
        if exc.reason == ADDRESS_REFUSED:
            # C-132: one answer, given before any connection, whatever the port or whether the name exists
            raise BadUserInput(
                "the issuer, or an endpoint its discovery document names, is at an address the gateway may not reach",
                field="issuer",
            ) from None
        raise BadUserInput(
            "the issuer's discovery document could not be loaded, or names another issuer", field="issuer"
        ) from None
    db = await ctx.db()
    existing = (
        (await db.execute(tenant_select(SsoConnection, org_id).where(col(SsoConnection.kind) == "oidc")))
        .scalars()
        .first()
    )
    now = ctx.services.now()
    row = existing or SsoConnection(organization_id=org_id, kind="oidc", created_at=now)
    row.enabled = spec.enabled
    row.issuer = spec.issuer
    row.client_id = spec.client_id
    row.client_secret_encrypted = ctx.services.oidc_secrets.encrypt(spec.client_secret)
    row.config = {"scopes": scopes, "groups_claim": spec.groups_claim, "algorithms": list(DEFAULT_ALGORITHMS)}
    row.role_mapping = mapping
    row.default_role = spec.default_role
    row.allowed_domains = domains
    row.jit_provisioning = spec.jit_provisioning
    row.updated_at = now
    db.add(row)
    await db.flush()
    log.info("sso_configured", extra={"connection_id": row.id, "request_id": principal.request_id})
    ctx.audit(
        AuditAction.SSO_CONFIGURED,
        resource_type="sso_connection",
        resource_id=row.id,
        details=configured_details(row, created=existing is None),
    )
    return row


def configured_details(row: SsoConnection, *, created: bool) -> dict[str, object]:
    """What an `sso_configured` entry says of a connection: never its secret."""
    return {
        "kind": row.kind,
        "created": created,
        "issuer": row.issuer,
        "enabled": row.enabled,
        "defaultRole": row.default_role,
        "roleMapping": dict(row.role_mapping or {}),
        "allowedDomains": list(row.allowed_domains or []),
        "jitProvisioning": row.jit_provisioning,
    }


async def list_connections(ctx: RequestContext, organization_id: str) -> list[SsoConnection]:
    if organization_id != tenant_of(ctx.principal):
        return []
    rows = await (await ctx.db()).execute(
        tenant_select(SsoConnection, organization_id).order_by(col(SsoConnection.created_at), col(SsoConnection.id))
    )
    return list(rows.scalars().all())


async def connection_for_organization(ctx: RequestContext, slug: str) -> tuple[Organization, SsoConnection] | None:
    """The organization and its enabled connection (OIDC first), or None: unknown slug, nothing enabled."""
    if not slug or len(slug) > 63:
        return None
    db = await ctx.db()
    org = (await db.execute(select(Organization).where(col(Organization.slug) == slug))).scalar_one_or_none()
    if org is None:
        return None
    rows = (
        (
            await db.execute(
                tenant_select(SsoConnection, org.id)
                .where(col(SsoConnection.enabled).is_(True))
                .order_by(col(SsoConnection.kind).desc(), col(SsoConnection.created_at))
            )
        )
        .scalars()
        .all()
    )
    return (org, rows[0]) if rows else None


async def get_connection_by_id(ctx: RequestContext, connection_id: str) -> SsoConnection | None:
    # tenant-scope: the id comes from the server-side record of a login this gateway started
    return await (await ctx.db()).get(SsoConnection, connection_id)


def oidc_config(ctx: RequestContext, connection: SsoConnection) -> OidcConnectionConfig:
    """What the relying party needs from a stored OIDC connection, the client secret decrypted."""
    services = ctx.services
    if (
        connection.kind != "oidc"
        or not connection.issuer
        or not connection.client_id
        or not connection.client_secret_encrypted
        or services.oidc_secrets is None
    ):
        raise OidcError("oidc_connection_incomplete")
    config = connection.config or {}
    return OidcConnectionConfig(
        connection_id=connection.id,
        version=connection.updated_at.isoformat(),
        issuer=connection.issuer,
        client_id=connection.client_id,
        client_secret=services.oidc_secrets.decrypt(connection.client_secret_encrypted),
        scopes=tuple(config.get("scopes") or ("openid", "email", "profile")),
        groups_claim=str(config.get("groups_claim") or "groups"),
        algorithms=tuple(config.get("algorithms") or DEFAULT_ALGORITHMS),
    )
