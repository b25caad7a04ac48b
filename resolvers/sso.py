"""Single sign-on: tenants' connections, and what happens once an IdP has vouched for someone.

`complete_sso_login` is the same for OIDC and SAML: the protocol layer hands it a validated
`ExternalIdentity`, and it decides who that is, in one transaction. An IdP is configured by a tenant, and
so vouches for whoever that tenant says: it may speak only for the accounts that tenant owns (C-126).

- An identity is the pair (issuer, subject). A known pair signs in its linked user, in the connection's
  organization only; nothing else does.
- An unknown pair creates a new account (just-in-time provisioning, when on) only at a verified address
  of a domain the organization has claimed (resolvers/domains.py), and only when the address has no
  account yet: the pair is linked to the account it created.
- An unknown pair whose address already has an account is refused: the provider links to an existing
  account only by that account's holder's act. Signed in, the holder asks for a link (`startSsoLink`),
  follows it to the provider, and the provider's answer is linked when its verified address is the
  account's own and the account is a member of the connection's organization.
- When the connection lists allowed domains, the asserted email must be in one of them, every time.
- Roles: the first group of the role mapping (in its order) that the user belongs to decides the role;
  without a matching group a new member gets the default role and an existing one keeps theirs. An owner's
  role is never changed by SSO (owners are managed in the application, and a tenant keeps an owner).

Every refusal raises `SsoLoginError` with a machine reason before anything is committed.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col, select

from authz import AuthMethod, BuiltinRole, PrincipalKind, is_builtin_role
from authz.errors import BadUserInput, Unauthenticated
from identity.lockout import email_key
from identity.oidc import ADDRESS_REFUSED, DEFAULT_ALGORITHMS, OidcConnectionConfig, OidcError, check_issuer_url
from identity.sessions import create_browser_session, load_custom_roles, user_key
from identity.sso import ExternalIdentity
from resolvers.accounts import SSO_LINK, TTL, issue_token, refuse_api_keys, spend_token
from resolvers.common import tenant_of
from resolvers.deps import RequestContext
from resolvers.domains import claimant
from resolvers.roles import check_can_grant, require_role
from store.audit import PLATFORM_CHAIN, ActorType, AuditAction, AuditResult
from store.models import AuthSession, Membership, Organization, SsoConnection, SsoIdentity, User, new_id
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


@dataclass(frozen=True, slots=True)
class SsoLogin:
    user: User
    organization: Organization
    session: AuthSession
    role: str
    user_created: bool


async def record_sso_event(
    ctx: RequestContext, event: str, *, reason: str | None, protocol: str, organization_id: str | None,
    connection_id: str | None, user_id: str | None = None,
) -> None:
    """The one place every SSO outcome is recorded (`authn_sso_success`, `authn_sso_fail`): a structured
    security event and an audit entry of its own (in the tenant's chain, or the platform's when no tenant
    is known yet). The context is the browser's request, before any session: its address, user agent
    and request id."""
    p = ctx.principal
    extra = {
        "event": event, "reason": reason, "protocol": protocol, "organization_id": organization_id,
        "connection_id": connection_id, "user_id": user_id, "client_ip": p.client_ip,
        "user_agent": (ctx.user_agent or "")[:256] or None, "request_id": p.request_id,
    }
    success = event == AuditAction.AUTHN_SSO_SUCCESS
    security_log.log(logging.INFO if success else logging.WARNING, event, extra=extra)
    entry = ctx.audit_event(
        AuditAction.AUTHN_SSO_SUCCESS if success else AuditAction.AUTHN_SSO_FAIL,
        result=AuditResult.SUCCESS if success else AuditResult.DENIED,
        organization_id=organization_id or PLATFORM_CHAIN,
        actor_type=ActorType.USER if user_id else ActorType.ANONYMOUS, actor_id=user_id,
        resource_type="sso_connection", resource_id=connection_id,
        details={"protocol": protocol, **({"reason": reason} if reason else {})},
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
        if (not domain or len(domain) > 253 or len(labels) < 2
                or any(not label or len(label) > 63 or set(label) - set(_DOMAIN_LABEL) for label in labels)):
            raise BadUserInput(f"not a domain name: {raw[:100]!r}", field="allowedDomains")
        if domain not in out:
            out.append(domain)
    return out


def _checked_mapping(mapping: Mapping[str, Any]) -> dict[str, str]:
    if not isinstance(mapping, Mapping) or len(mapping) > 100:
        raise BadUserInput("roleMapping is an object of at most 100 group names to role names", field="roleMapping")
    out: dict[str, str] = {}
    for group, role in mapping.items():
        if (not isinstance(group, str) or not group or len(group) > 256 or "\x00" in group
                or not isinstance(role, str) or not role or len(role) > 63):
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
    if "openid" not in spec.scopes or len(spec.scopes) > 20 or any(
        not s or len(s) > 100 or set(s) - _SCOPE_CHARS for s in spec.scopes
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
    check_can_grant(principal.effective_permissions, [spec.default_role, *mapping.values()], custom,
                    "SSO cannot grant a role with permissions you do not hold.")
    try:
        # C-049 at configuration time: the discovery document must load and name this very issuer
        await rp.check_provider(OidcConnectionConfig(
            connection_id="check-" + new_id(), version="", issuer=spec.issuer, client_id=spec.client_id,
            client_secret=spec.client_secret, scopes=tuple(scopes),
        ))
    except OidcError as exc:
        log.info("sso_configure_refused", extra={"reason": exc.reason, "request_id": principal.request_id})
        if exc.reason == ADDRESS_REFUSED:
            # C-132: one answer, given before any connection, whatever the port or whether the name exists
            raise BadUserInput("the issuer, or an endpoint its discovery document names, is at an address the "
                               "gateway may not reach", field="issuer") from None
        raise BadUserInput(
            "the issuer's discovery document could not be loaded, or names another issuer", field="issuer"
        ) from None
    db = await ctx.db()
    existing = (
        await db.execute(tenant_select(SsoConnection, org_id).where(col(SsoConnection.kind) == "oidc"))
    ).scalars().first()
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
    ctx.audit(AuditAction.SSO_CONFIGURED, resource_type="sso_connection", resource_id=row.id,
              details=configured_details(row, created=existing is None))
    return row


def configured_details(row: SsoConnection, *, created: bool) -> dict[str, object]:
    """What an `sso_configured` entry says of a connection: never its secret."""
    return {"kind": row.kind, "created": created, "issuer": row.issuer, "enabled": row.enabled,
            "defaultRole": row.default_role, "roleMapping": dict(row.role_mapping or {}),
            "allowedDomains": list(row.allowed_domains or []), "jitProvisioning": row.jit_provisioning}


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
    rows = (await db.execute(
        tenant_select(SsoConnection, org.id).where(col(SsoConnection.enabled).is_(True))
        .order_by(col(SsoConnection.kind).desc(), col(SsoConnection.created_at))
    )).scalars().all()
    return (org, rows[0]) if rows else None


async def get_connection_by_id(ctx: RequestContext, connection_id: str) -> SsoConnection | None:
    # tenant-scope: the id comes from the server-side record of a login this gateway started
    return await (await ctx.db()).get(SsoConnection, connection_id)


def oidc_config(ctx: RequestContext, connection: SsoConnection) -> OidcConnectionConfig:
    """What the relying party needs from a stored OIDC connection, the client secret decrypted."""
    services = ctx.services
    if (connection.kind != "oidc" or not connection.issuer or not connection.client_id
            or not connection.client_secret_encrypted or services.oidc_secrets is None):
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


# -- completing a login ------------------------------------------------------------------------------


def _domain_allowed(connection: SsoConnection, email: str | None) -> bool:
    if not connection.allowed_domains:
        return True
    if not email or "@" not in email:
        return False
    return email.rsplit("@", 1)[1].lower() in {d.lower() for d in connection.allowed_domains}


def _mapped_role(connection: SsoConnection, groups: tuple[str, ...]) -> str | None:
    member_of = set(groups)
    for group, role in (connection.role_mapping or {}).items():
        if group in member_of:
            return str(role)
    return None


async def _existing_membership(db: AsyncSession, organization_id: str, user_id: str) -> Membership | None:
    return (await db.execute(
        tenant_select(Membership, organization_id).where(col(Membership.user_id) == user_id)
    )).scalar_one_or_none()


async def complete_sso_login(
    ctx: RequestContext, connection: SsoConnection, identity: ExternalIdentity, *, link_user_id: str | None = None,
) -> SsoLogin:
    """Provision or update the user and membership for a validated identity and open a browser session.

    `link_user_id`: the account whose holder asked to link this connection (`startSsoLink`). Raises
    `SsoLoginError`; on any refusal nothing is written. The caller records the outcome with
    `record_sso_event` (a success is recorded here).

    It commits in a transaction of its own rather than the context's unit of work: a concurrent first
    login of the same identity fails at the flush or the commit, and must be refused like any other.
    """
    services = ctx.services
    client_ip, user_agent = ctx.principal.client_ip, ctx.user_agent
    if not connection.enabled:
        raise SsoLoginError("sso_connection_disabled")
    if services.browser is None:
        raise SsoLoginError("sso_browser_sessions_unconfigured")
    if not identity.subject or not identity.issuer:
        raise SsoLoginError("sso_identity_incomplete")
    if not _domain_allowed(connection, identity.email):
        raise SsoLoginError("sso_email_domain_not_allowed")
    org_id = connection.organization_id
    mapped = _mapped_role(connection, identity.groups)
    now = services.now()
    role_changed = linked = False
    try:
        async with services.db.transaction() as db:
            org = await db.get(Organization, org_id)
            if org is None:
                raise SsoLoginError("sso_organization_missing")
            custom = await load_custom_roles(db, org_id)
            link = (await db.execute(
                # tenant-scope: (issuer, subject) is unique across tenants; the tenant is checked just below
                select(SsoIdentity).where(col(SsoIdentity.issuer) == identity.issuer,
                                          col(SsoIdentity.subject) == identity.subject)
            )).scalar_one_or_none()
            created = new_membership = False
            if link is not None:
                if link.organization_id != org_id:
                    raise SsoLoginError("sso_identity_linked_to_another_organization")
                if link_user_id is not None and link.user_id != link_user_id:
                    raise SsoLoginError("sso_identity_linked_to_another_user")
                user = await db.get(User, link.user_id)
                if user is None:
                    raise SsoLoginError("sso_identity_user_missing")
                membership = await _existing_membership(db, org_id, user.id)
                if membership is None:
                    if not connection.jit_provisioning:
                        raise SsoLoginError("sso_not_a_member")
                    new_membership = True
                    membership = Membership(organization_id=org_id, user_id=user.id,
                                            role=mapped or connection.default_role, created_at=now)
            else:
                if not identity.email or not identity.email_verified:
                    raise SsoLoginError("sso_email_unverified")  # C-047: never linked or created on it
                if link_user_id is not None:
                    user, membership = await _consented_link(db, org_id, link_user_id, identity.email)
                    linked = True
                else:
                    if (await db.execute(
                        select(col(User.id)).where(col(User.email_key) == email_key(identity.email))
                    )).first() is not None:
                        # C-126: an existing account is linked only by its holder (`startSsoLink`)
                        raise SsoLoginError("sso_link_requires_consent")
                    if await claimant(db, identity.email) != org_id:
                        raise SsoLoginError("sso_domain_not_claimed")
                    if not connection.jit_provisioning:
                        raise SsoLoginError("sso_jit_disabled")
                    user = User(email=identity.email, email_key=email_key(identity.email), password_hash=None,
                                name=identity.name, created_at=now, email_verified_at=now)
                    db.add(user)
                    await db.flush()
                    created = new_membership = True
                    membership = Membership(organization_id=org_id, user_id=user.id,
                                            role=mapped or connection.default_role, created_at=now)
                link = SsoIdentity(organization_id=org_id, connection_id=connection.id, user_id=user.id,
                                   issuer=identity.issuer, subject=identity.subject, created_at=now)
            if not user.is_active:
                raise SsoLoginError("sso_user_inactive")
            if (mapped is not None and membership.role != mapped
                    and membership.role != BuiltinRole.OWNER.value and not new_membership):
                membership.role = mapped
                role_changed = True
            if not is_builtin_role(membership.role) and membership.role not in custom:
                raise SsoLoginError("sso_role_unknown")
            db.add(membership)
            link.last_login_at = now
            db.add(link)
            user.last_login_at = now
            if identity.name and not user.name:
                user.name = identity.name
            db.add(user)
            await db.flush()
            session = await create_browser_session(
                db, user_id=user.id, organization_id=org_id, auth_method=AuthMethod(identity.protocol).value,
                client_ip=client_ip, user_agent=user_agent,
                lifetime_seconds=services.browser.policy.absolute_seconds, now=now,
            )
            role = membership.role
    except IntegrityError:
        # a concurrent first login of the same identity or email won the race
        raise SsoLoginError("sso_conflict") from None
    if role_changed:
        await services.revocations.publish([user_key(user.id)])
    if linked:
        await ctx.audit_now(AuditAction.AUTHN_SSO_LINKED, organization_id=org_id, actor_type=ActorType.USER,
                            actor_id=user.id, resource_type="sso_connection", resource_id=connection.id,
                            details={"protocol": identity.protocol})
    await record_sso_event(ctx, AuditAction.AUTHN_SSO_SUCCESS, reason=None, protocol=identity.protocol,
                           organization_id=org_id, connection_id=connection.id, user_id=user.id)
    return SsoLogin(user=user, organization=org, session=session, role=role, user_created=created)


async def _consented_link(db: AsyncSession, organization_id: str, user_id: str,
                          asserted_email: str) -> tuple[User, Membership]:
    """The account whose holder asked for the link, when the provider's verified address is that account's
    own and the account is a member of the connection's organization."""
    user = await db.get(User, user_id)
    if user is None or not user.is_active:
        raise SsoLoginError("sso_link_account_missing")
    if email_key(asserted_email) != user.email_key:
        raise SsoLoginError("sso_link_email_mismatch")
    membership = await _existing_membership(db, organization_id, user.id)
    if membership is None:
        raise SsoLoginError("sso_not_a_member")
    return user, membership


# -- linking an existing account to a connection, by its holder -----------------------------------------


@dataclass(frozen=True, slots=True)
class SsoLinkStart:
    url: str
    expires_at: datetime


async def start_sso_link(ctx: RequestContext) -> SsoLinkStart:
    """The signed-in holder asks to link their account to the organization's connection (C-126): a
    single-use address (10 minutes) to open in the browser; the provider's answer is linked when its
    verified address is the account's own (`complete_sso_login`)."""
    p = ctx.principal
    refuse_api_keys(p)
    org_id = tenant_of(p)
    if p.kind is not PrincipalKind.USER or p.subject_id is None:
        raise Unauthenticated("Authentication required.")
    db = await ctx.db()
    user = await db.get(User, p.subject_id)
    org = await db.get(Organization, org_id)
    if user is None or org is None or not user.is_active:
        raise Unauthenticated("Authentication required.")
    enabled = (await db.execute(
        tenant_select(SsoConnection, org_id).where(col(SsoConnection.enabled).is_(True))
    )).scalars().first()
    if enabled is None:
        raise BadUserInput("this organization has no enabled single sign-on connection")
    now = ctx.services.now()
    token = await issue_token(db, purpose=SSO_LINK, user_id=user.id, email=user.email, now=now,
                              client_ip=p.client_ip, organization_id=org_id)
    ctx.audit(AuditAction.AUTHN_SSO_LINK_STARTED, resource_type="sso_connection", resource_id=enabled.id)
    return SsoLinkStart(url=f"{ctx.services.public_url}/auth/sso/{org.slug}?{urlencode({'link': token})}",
                        expires_at=now + TTL[SSO_LINK])


async def take_link_intent(ctx: RequestContext, token: str | None, organization_id: str) -> str | None:
    """The account a link address was made for (spent now), when it is unspent, unexpired and for this
    organization; None otherwise."""
    if not token:
        return None
    spent = await spend_token(await ctx.db(), token, SSO_LINK, ctx.services.now())
    if spent is None or spent.organization_id != organization_id:
        return None
    return spent.user_id
