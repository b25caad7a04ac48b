"""Single sign-on: what happens once an IdP has vouched for someone, and account links by their holders.

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

from dataclasses import dataclass
from datetime import datetime
from urllib.parse import urlencode

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col, select

from authz import AuthMethod, BuiltinRole, PrincipalKind, is_builtin_role
from authz.errors import BadUserInput, Unauthenticated
from identity.lockout import email_key
from identity.security_policies import load_policy
from identity.sessions import create_browser_session, load_custom_roles, revoke_sessions, user_key
from identity.sso import ExternalIdentity
from resolvers import risk
from resolvers.accounts import SSO_LINK, TTL, issue_token, refuse_api_keys, spend_token
from resolvers.common import tenant_of
from resolvers.deps import RequestContext
from resolvers.domains import claimant
from resolvers.sign_in_policy import (
    REFUSALS,
    SESSION_LIMIT,
    SessionLimitReached,
    active_sessions,
    lifetime_seconds,
    record_refusal,
    sessions_to_end,
    sign_in_refusal,
)
from resolvers.sso import SsoLogin, SsoLoginError, record_sso_event
from store.audit import ActorType, AuditAction
from store.models import Membership, Organization, SsoConnection, SsoIdentity, User
from store.scoping import tenant_select

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
    return (
        await db.execute(tenant_select(Membership, organization_id).where(col(Membership.user_id) == user_id))
    ).scalar_one_or_none()


async def complete_sso_login(
    ctx: RequestContext,
    connection: SsoConnection,
    identity: ExternalIdentity,
    *,
    link_user_id: str | None = None,
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
    blocks = services.address_blocks
    if blocks is not None and blocks.refuses(org_id, client_ip) is not None:
        blocks.on_refused("tenant")
        raise SsoLoginError("sso_address_blocked")
    mapped = _mapped_role(connection, identity.groups)
    now = services.now()
    role_changed = linked = False
    refused: risk.SignInRisk | None = None
    # who a sign-in the policy refuses names in its event (read before the rollback expires the user)
    subject: str | None = None
    try:
        async with services.db.transaction() as db:
            org = await db.get(Organization, org_id)
            if org is None:
                raise SsoLoginError("sso_organization_missing")
            custom = await load_custom_roles(db, org_id)
            link = (
                await db.execute(
                    # tenant-scope: (issuer, subject) is unique across tenants; the tenant is checked just below
                    select(SsoIdentity).where(
                        col(SsoIdentity.issuer) == identity.issuer, col(SsoIdentity.subject) == identity.subject
                    )
                )
            ).scalar_one_or_none()
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
                    membership = Membership(
                        organization_id=org_id, user_id=user.id, role=mapped or connection.default_role, created_at=now
                    )
            else:
                if not identity.email or not identity.email_verified:
                    raise SsoLoginError("sso_email_unverified")  # C-047: never linked or created on it
                if link_user_id is not None:
                    user, membership = await _consented_link(db, org_id, link_user_id, identity.email)
                    linked = True
                else:
                    if (
                        await db.execute(select(col(User.id)).where(col(User.email_key) == email_key(identity.email)))
                    ).first() is not None:
                        # C-126: an existing account is linked only by its holder (`startSsoLink`)
                        raise SsoLoginError("sso_link_requires_consent")
                    if await claimant(db, identity.email) != org_id:
                        raise SsoLoginError("sso_domain_not_claimed")
                    if not connection.jit_provisioning:
                        raise SsoLoginError("sso_jit_disabled")
                    user = User(
                        email=identity.email,
                        email_key=email_key(identity.email),
                        password_hash=None,
                        name=identity.name,
                        created_at=now,
                        email_verified_at=now,
                    )
                    db.add(user)
                    await db.flush()
                    created = new_membership = True
                    membership = Membership(
                        organization_id=org_id, user_id=user.id, role=mapped or connection.default_role, created_at=now
                    )
                link = SsoIdentity(
                    organization_id=org_id,
                    connection_id=connection.id,
                    user_id=user.id,
                    issuer=identity.issuer,
                    subject=identity.subject,
                    created_at=now,
                )
            if not user.is_active:
                raise SsoLoginError("sso_user_inactive")
            assessed = await risk.assess_in(db, ctx, user_id=user.id, organization_id=org_id, method=identity.protocol)
            if assessed.refused or (assessed.needs_second_factor and not identity.second_factor):
                refused = assessed
                raise SsoLoginError("sso_risk_refused")
            if (
                mapped is not None
                and membership.role != mapped
                and membership.role != BuiltinRole.OWNER.value
                and not new_membership
            ):
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
            # the organization's policy (resolvers/sign_in_policy.py): address, method, concurrent sessions
            policy = await load_policy(db, org_id)
            method = AuthMethod(identity.protocol).value
            subject = None if created else user.id
            blocked = sign_in_refusal(policy, method=method, user_id=user.id, client_ip=client_ip)
            if blocked is not None:
                raise SsoLoginError(f"sso_{blocked}")
            try:
                active = await active_sessions(db, policy, user_id=user.id, organization_id=org_id, now=now)
                ending = sessions_to_end(policy, active)
            except SessionLimitReached:
                raise SsoLoginError(f"sso_{SESSION_LIMIT}") from None
            await revoke_sessions(db, ending, reason="session_limit", now=now)
            session = await create_browser_session(
                db,
                user_id=user.id,
                organization_id=org_id,
                auth_method=method,
                client_ip=client_ip,
                user_agent=user_agent,
                lifetime_seconds=lifetime_seconds(policy, services.browser.policy.absolute_seconds),
                now=now,
            )
            await risk.admit(db, ctx, assessed, second_factor=identity.second_factor)
            role = membership.role
    except IntegrityError:
        # a concurrent first login of the same identity or email won the race
        raise SsoLoginError("sso_conflict") from None
    except SsoLoginError as exc:
        if refused is not None:
            await risk.refuse_sso(ctx, refused, created)
            exc.details = {"risk": refused.details()}
        policy_reason = exc.reason.removeprefix("sso_")
        if policy_reason in REFUSALS:
            # an account this sign-in would have created was never written: the event names no one
            await record_refusal(
                ctx,
                organization_id=org_id,
                user_id=subject,
                reason=policy_reason,
                method=identity.protocol,
            )
        raise
    if role_changed or ending:
        await services.revocations.publish([*ending, *([user_key(user.id)] if role_changed else [])])
    if linked:
        await ctx.audit_now(
            AuditAction.AUTHN_SSO_LINKED,
            organization_id=org_id,
            actor_type=ActorType.USER,
            actor_id=user.id,
            resource_type="sso_connection",
            resource_id=connection.id,
            details={"protocol": identity.protocol},
        )
    await record_sso_event(
        ctx,
        AuditAction.AUTHN_SSO_SUCCESS,
        reason=None,
        protocol=identity.protocol,
        organization_id=org_id,
        connection_id=connection.id,
        user_id=user.id,
        details={"risk": assessed.details()},
    )
    return SsoLogin(user=user, organization=org, session=session, role=role, user_created=created)


async def _consented_link(
    db: AsyncSession, organization_id: str, user_id: str, asserted_email: str
) -> tuple[User, Membership]:
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
    enabled = (
        (await db.execute(tenant_select(SsoConnection, org_id).where(col(SsoConnection.enabled).is_(True))))
        .scalars()
        .first()
    )
    if enabled is None:
        raise BadUserInput("this organization has no enabled single sign-on connection")
    now = ctx.services.now()
    token = await issue_token(
        db, purpose=SSO_LINK, user_id=user.id, email=user.email, now=now, client_ip=p.client_ip, organization_id=org_id
    )
    ctx.audit(AuditAction.AUTHN_SSO_LINK_STARTED, resource_type="sso_connection", resource_id=enabled.id)
    return SsoLinkStart(
        url=f"{ctx.services.public_url}/auth/sso/{org.slug}?{urlencode({'link': token})}",
        expires_at=now + TTL[SSO_LINK],
    )


async def take_link_intent(ctx: RequestContext, token: str | None, organization_id: str) -> str | None:
    """The account a link address was made for (spent now), when it is unspent, unexpired and for this
    organization; None otherwise."""
    if not token:
        return None
    spent = await spend_token(await ctx.db(), token, SSO_LINK, ctx.services.now())
    if spent is None or spent.organization_id != organization_id:
        return None
    return spent.user_id
