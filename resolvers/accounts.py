"""A person's own account, whatever organizations it belongs to: recovery by email, the address's
verification and change, and who may change what is account-wide.

Emailed tokens (`account_tokens`: 256 bits, only their sha256 kept, each spent once):
- `password_reset`, 30 minutes. `requestPasswordReset` answers `true` for every address and writes one
  row per request whether or not the address has an account, so that both cases do the same work; mail
  goes only to an account, and at most `RESET_MAILS_PER_HOUR` an hour per account (further requests are
  recorded and not sent). One client address may ask `RESETS_PER_ADDRESS_PER_HOUR` times an hour: beyond,
  RATE_LIMITED, which says nothing about any account. A reset sets the password, marks the address
  verified, ends every session and refresh token of the account in every organization, clears its
  failed-login counters, spends the account's other reset tokens and tells the address (C-134).
- `verify_email`, 24 hours: sent on request to a signed-in account whose address is not verified yet.
- `email_change`, 1 hour: `changeEmail` sends it to the new address (or, when that address already has an
  account, a notice saying so and no token: the answer is `true` either way); confirming moves the account
  to the new address and tells the old one.

Account-wide changes (the second factor, the address, every organization's sessions) are made only by the
person (C-126): from a session opened with the account's own password, or through the one identity provider
that is the account's only way in (an account without a password, linked to no other organization's
provider: the provider made it, and speaks for it already). A session opened through any other provider is
valid in its organization and may do there whatever its role allows, but changes nothing account-wide: a
tenant's provider cannot take an account over for the other organizations the person belongs to, whatever
domains that tenant has claimed.
"""

from __future__ import annotations

import secrets
from datetime import datetime, timedelta

from sqlalchemy import func, update
from sqlalchemy import select as sa_select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from authz import AuthMethod, Principal, PrincipalKind
from authz.errors import (
    INVALID_CREDENTIALS,
    BadUserInput,
    Conflict,
    ErrorCode,
    Forbidden,
    GatewayError,
    Unauthenticated,
)
from identity.lockout import email_key
from identity.passwords import MAX_BYTES
from identity.sessions import active_session_ids, revoke_sessions
from identity.tokens import hash_opaque_token
from resolvers.deps import RequestContext
from resolvers.mail import send_mail
from resolvers.passwords import record_password, vet_new_password
from resolvers.provisioning import MAX_EMAIL_LENGTH, checked_email
from store.audit import PLATFORM_CHAIN, AuditAction
from store.models import AccountToken, SsoIdentity, User

PASSWORD_RESET = "password_reset"
VERIFY_EMAIL = "verify_email"
EMAIL_CHANGE = "email_change"
SSO_LINK = "sso_link"
TTL = {
    PASSWORD_RESET: timedelta(minutes=30),
    VERIFY_EMAIL: timedelta(hours=24),
    EMAIL_CHANGE: timedelta(hours=1),
    SSO_LINK: timedelta(minutes=10),
}
PREFIX = {PASSWORD_RESET: "ptr_", VERIFY_EMAIL: "ptv_", EMAIL_CHANGE: "ptc_", SSO_LINK: "ptl_"}
MAX_TOKEN_LENGTH = 128
RESET_MAILS_PER_HOUR = 3
RESETS_PER_ADDRESS_PER_HOUR = 10
VERIFICATION_MAILS_PER_HOUR = 3
EMAIL_CHANGES_PER_HOUR = 3
INVALID_TOKEN = "Invalid or expired link."
PATHS = {PASSWORD_RESET: "/reset-password", VERIFY_EMAIL: "/verify-email", EMAIL_CHANGE: "/confirm-email"}
ACCOUNT_HOLDER_REQUIRED = "ACCOUNT_HOLDER_REQUIRED"


def refuse_api_keys(principal: Principal) -> None:
    """C-123: an API key never signs in, refreshes, or changes an account (also refused before execution)."""
    if principal.kind is PrincipalKind.API_KEY:
        raise Forbidden("An API key cannot sign in or mint tokens.")


def mask_email(email: str) -> str:
    """`j***@example.com`: enough for the person to recognise, not a copy of the address."""
    local, _, domain = email.partition("@")
    return f"{local[:1]}***@{domain}"


# -- tokens -------------------------------------------------------------------------------------------


async def issue_token(
    db: AsyncSession,
    *,
    purpose: str,
    user_id: str | None,
    email: str,
    now: datetime,
    client_ip: str | None = None,
    organization_id: str | None = None,
) -> str:
    """A new single-use token, committed with the caller's session; the token itself is returned once."""
    token = PREFIX[purpose] + secrets.token_urlsafe(32)
    db.add(
        AccountToken(
            purpose=purpose,
            user_id=user_id,
            email_key=email_key(email),
            email=email,
            organization_id=organization_id,
            token_hash=hash_opaque_token(token),
            client_ip=client_ip,
            created_at=now,
            expires_at=now + TTL[purpose],
        )
    )
    await db.flush()
    return token


async def spend_token(db: AsyncSession, token: str, purpose: str, now: datetime) -> AccountToken | None:
    """The token's row, marked spent, if it is unspent and unexpired; None otherwise (one winner of a race)."""
    if not token or len(token) > MAX_TOKEN_LENGTH or not token.startswith(PREFIX[purpose]):
        return None
    digest = hash_opaque_token(token)
    spent = await db.execute(
        update(AccountToken)
        .where(
            col(AccountToken.token_hash) == digest,
            col(AccountToken.purpose) == purpose,
            col(AccountToken.used_at).is_(None),
            col(AccountToken.expires_at) > now,
            col(AccountToken.user_id).is_not(None),
        )
        .values(used_at=now)
        .execution_options(synchronize_session=False)
    )
    if (getattr(spent, "rowcount", 0) or 0) != 1:
        return None
    return (
        await db.execute(sa_select(AccountToken).where(col(AccountToken.token_hash) == digest))
    ).scalar_one_or_none()


async def _sent_since(
    db: AsyncSession, purpose: str, since: datetime, *, user_id: str | None = None, client_ip: str | None = None
) -> int:
    stmt = (
        sa_select(func.count())
        .select_from(AccountToken)
        .where(col(AccountToken.purpose) == purpose, col(AccountToken.created_at) > since)
    )
    if user_id is not None:
        stmt = stmt.where(col(AccountToken.user_id) == user_id)
    if client_ip is not None:
        stmt = stmt.where(col(AccountToken.client_ip) == client_ip)
    return int((await db.execute(stmt)).scalar_one())


async def _spend_others(db: AsyncSession, user_id: str, purpose: str, now: datetime) -> None:
    await db.execute(
        update(AccountToken)
        .where(
            col(AccountToken.user_id) == user_id,
            col(AccountToken.purpose) == purpose,
            col(AccountToken.used_at).is_(None),
        )
        .values(used_at=now)
        .execution_options(synchronize_session=False)
    )


def _rate_limited(message: str, retry_after: int) -> GatewayError:
    return GatewayError(message, code=ErrorCode.RATE_LIMITED, retryAfter=retry_after)


# -- who may change what is account-wide ---------------------------------------------------------------


async def account_holder(ctx: RequestContext) -> User:
    """The caller's account, when the caller's session lets them act on it account-wide (see above);
    FORBIDDEN (`reason: ACCOUNT_HOLDER_REQUIRED`) for a session opened through another organization's
    provider, UNAUTHENTICATED without a user session."""
    p = ctx.principal
    refuse_api_keys(p)
    if p.kind is not PrincipalKind.USER or p.subject_id is None or p.session_id is None:
        raise Unauthenticated("Authentication required.")
    db = await ctx.db()
    user = await db.get(User, p.subject_id)
    if user is None or not user.is_active:
        raise Unauthenticated("Authentication required.")
    if p.auth_method in (AuthMethod.OIDC, AuthMethod.SAML) and not await _owned_by_provider(
        db, user, p.organization_id
    ):
        raise Forbidden(
            "Sign in with your password to change this: an organization's identity provider changes "
            "account settings only for the accounts it alone signs in.",
            reason=ACCOUNT_HOLDER_REQUIRED,
        )
    return user


async def _owned_by_provider(db: AsyncSession, user: User, organization_id: str | None) -> bool:
    """The account has no credential of its own and no provider of another organization: the session's
    organization's provider is the only way into it (it made the account, or is its one link), so that
    provider already speaks for the whole account. A domain claim alone never makes it so: claims are first
    come, and an account with a password, or linked elsewhere, belongs to its holder (C-126)."""
    if organization_id is None or user.password_hash is not None:
        return False
    elsewhere = (
        await db.execute(
            # tenant-scope: every link of the caller's own account, in any tenant, decides
            sa_select(col(SsoIdentity.id))
            .where(col(SsoIdentity.user_id) == user.id, col(SsoIdentity.organization_id) != organization_id)
            .limit(1)
        )
    ).first()
    return elsewhere is None


# -- password reset -----------------------------------------------------------------------------------


async def request_password_reset(ctx: RequestContext, email: str) -> bool:
    refuse_api_keys(ctx.principal)
    email = email.strip()
    if len(email) > MAX_EMAIL_LENGTH:
        raise BadUserInput(f"email must be at most {MAX_EMAIL_LENGTH} characters", field="email")
    services = ctx.services
    now = services.now()
    client_ip = ctx.principal.client_ip
    db = await ctx.db()
    hour_ago = now - timedelta(hours=1)
    if (
        client_ip is not None
        and await _sent_since(db, PASSWORD_RESET, hour_ago, client_ip=client_ip) >= RESETS_PER_ADDRESS_PER_HOUR
    ):
        raise _rate_limited("Too many password reset requests from this address; try again later.", 3600)
    user = (
        (await db.execute(sa_select(User).where(col(User.email_key) == email_key(email)))).scalar_one_or_none()
        if email
        else None
    )
    if user is None or not user.is_active:
        # the same write as for an account, with a token nobody receives
        await issue_token(
            db,
            purpose=PASSWORD_RESET,
            user_id=None,
            email=email[:MAX_EMAIL_LENGTH] or "-",
            now=now,
            client_ip=client_ip,
        )
        ctx.audit(
            AuditAction.AUTHN_PASSWORD_RESET_REQUESTED,
            organization_id=PLATFORM_CHAIN,
            resource_type="user",
            details={"mailed": False},
        )
        return True
    recent = await _sent_since(db, PASSWORD_RESET, hour_ago, user_id=user.id)
    token = await issue_token(
        db, purpose=PASSWORD_RESET, user_id=user.id, email=user.email, now=now, client_ip=client_ip
    )
    if recent < RESET_MAILS_PER_HOUR:
        mailer = ctx.services.mail
        assert mailer is not None
        await send_mail(
            ctx,
            to=user.email,
            template="password_reset",
            variables={
                "reset_url": mailer.link(PATHS[PASSWORD_RESET], token),
                "expires_at": now + TTL[PASSWORD_RESET],
                "client_ip": client_ip,
            },
        )
    ctx.audit(
        AuditAction.AUTHN_PASSWORD_RESET_REQUESTED,
        organization_id=PLATFORM_CHAIN,
        actor_id=user.id,
        resource_type="user",
        resource_id=user.id,
        details={"mailed": recent < RESET_MAILS_PER_HOUR},
    )
    return True


async def reset_password(ctx: RequestContext, token: str, new_password: str) -> bool:
    refuse_api_keys(ctx.principal)
    if len(new_password.encode("utf-8", "surrogatepass")) > MAX_BYTES:
        raise BadUserInput("password is too long", field="newPassword")
    services = ctx.services
    now = services.now()
    # the policy check and the argon2 run come before the unit of work opens its session
    async with services.db.transaction() as read:
        row = (
            (
                await read.execute(
                    sa_select(AccountToken, User)
                    .join(User, col(User.id) == col(AccountToken.user_id))
                    .where(
                        col(AccountToken.token_hash) == hash_opaque_token(token[:MAX_TOKEN_LENGTH]),
                        col(AccountToken.purpose) == PASSWORD_RESET,
                        col(AccountToken.used_at).is_(None),
                        col(AccountToken.expires_at) > now,
                    )
                )
            ).first()
            if token
            else None
        )
    if row is None or not row[1].is_active:
        raise Unauthenticated(INVALID_TOKEN)
    found: User = row[1]
    await vet_new_password(ctx, new_password, user=found, field="newPassword")
    new_hash = await services.hasher.hash(new_password)
    db = await ctx.db()
    spent = await spend_token(db, token, PASSWORD_RESET, now)
    if spent is None or spent.user_id != found.id:
        raise Unauthenticated(INVALID_TOKEN)
    user = await db.get(User, found.id, with_for_update=True)
    if user is None or not user.is_active or user.email_key != spent.email_key:
        # the account moved to another address since the link was sent
        raise Unauthenticated(INVALID_TOKEN)
    user.password_hash = new_hash
    user.password_changed_at = now
    if user.email_verified_at is None:
        user.email_verified_at = now
    db.add(user)
    await record_password(db, user.id, new_hash, now)
    await _spend_others(db, user.id, PASSWORD_RESET, now)
    ended = await active_session_ids(db, user.id)
    await revoke_sessions(db, ended, reason="password_reset", now=now)
    await send_mail(
        ctx, to=user.email, template="password_changed", variables={"at": now, "client_ip": ctx.principal.client_ip}
    )
    ctx.audit(
        AuditAction.AUTHN_PASSWORD_RESET,
        organization_id=PLATFORM_CHAIN,
        actor_id=user.id,
        resource_type="user",
        resource_id=user.id,
        details={"sessionsEnded": len(ended)},
    )
    email = user.email

    async def after() -> None:
        await services.revocations.publish(ended)
        await services.throttle.reset(email)

    ctx.after_commit.append(after)
    return True


# -- the address ----------------------------------------------------------------------------------------


async def send_email_verification(ctx: RequestContext) -> bool:
    """Mail a verification link to the caller's address; CONFLICT when it is verified already."""
    user = await account_holder(ctx)
    if user.email_verified_at is not None:
        raise Conflict("This address is verified already.")
    now = ctx.services.now()
    db = await ctx.db()
    if await _sent_since(db, VERIFY_EMAIL, now - timedelta(hours=1), user_id=user.id) >= VERIFICATION_MAILS_PER_HOUR:
        raise _rate_limited("A verification link was sent several times this hour; try again later.", 3600)
    token = await issue_token(
        db, purpose=VERIFY_EMAIL, user_id=user.id, email=user.email, now=now, client_ip=ctx.principal.client_ip
    )
    mailer = ctx.services.mail
    assert mailer is not None
    await send_mail(
        ctx,
        to=user.email,
        template="email_verification",
        variables={"verify_url": mailer.link(PATHS[VERIFY_EMAIL], token), "expires_at": now + TTL[VERIFY_EMAIL]},
    )
    ctx.audit(
        AuditAction.AUTHN_EMAIL_VERIFICATION_SENT,
        organization_id=PLATFORM_CHAIN,
        resource_type="user",
        resource_id=user.id,
    )
    return True


async def verify_email(ctx: RequestContext, token: str) -> bool:
    refuse_api_keys(ctx.principal)
    now = ctx.services.now()
    db = await ctx.db()
    spent = await spend_token(db, token, VERIFY_EMAIL, now)
    if spent is None or spent.user_id is None:
        raise Unauthenticated(INVALID_TOKEN)
    user = await db.get(User, spent.user_id, with_for_update=True)
    if user is None or not user.is_active or user.email_key != spent.email_key:
        raise Unauthenticated(INVALID_TOKEN)
    already = user.email_verified_at is not None
    if not already:
        user.email_verified_at = now
        db.add(user)
    ctx.audit(
        AuditAction.AUTHN_EMAIL_VERIFIED,
        organization_id=PLATFORM_CHAIN,
        actor_id=user.id,
        resource_type="user",
        resource_id=user.id,
        details={"alreadyVerified": True} if already else None,
    )
    return True


async def change_email(ctx: RequestContext, new_email: str, current_password: str | None) -> bool:
    """Send a confirmation link to `new_email`; the account moves there only when it is followed."""
    user = await account_holder(ctx)
    new_email = checked_email(new_email, field="newEmail")
    if current_password is not None and len(current_password.encode("utf-8", "surrogatepass")) > MAX_BYTES:
        raise BadUserInput("password is too long", field="currentPassword")
    if email_key(new_email) == user.email_key:
        raise BadUserInput("this is the account's address already", field="newEmail")
    services = ctx.services
    if user.password_hash is not None:
        # a stolen session alone cannot move the account away
        if not current_password:
            raise BadUserInput("currentPassword is required", field="currentPassword")
        attempt = await services.throttle.begin(user.email, ctx.principal.client_ip, ctx.principal.organization_id)
        if not attempt.allowed:
            await services.hasher.burn()
            await services.throttle.failed(attempt)
            raise Unauthenticated(INVALID_CREDENTIALS)
        if not await services.hasher.verify(user.password_hash, current_password):
            await services.throttle.failed(attempt)
            raise Unauthenticated(INVALID_CREDENTIALS)
        await services.throttle.succeeded(attempt)
    now = services.now()
    db = await ctx.db()
    if await _sent_since(db, EMAIL_CHANGE, now - timedelta(hours=1), user_id=user.id) >= EMAIL_CHANGES_PER_HOUR:
        raise _rate_limited("Several address changes were asked for this hour; try again later.", 3600)
    taken = (
        await db.execute(sa_select(col(User.id)).where(col(User.email_key) == email_key(new_email)))
    ).first() is not None
    token = await issue_token(
        db, purpose=EMAIL_CHANGE, user_id=user.id, email=new_email, now=now, client_ip=ctx.principal.client_ip
    )
    mailer = services.mail
    assert mailer is not None
    if taken:
        await send_mail(ctx, to=new_email, template="email_in_use", variables={"at": now})
    else:
        await send_mail(
            ctx,
            to=new_email,
            template="email_change_confirm",
            variables={"confirm_url": mailer.link(PATHS[EMAIL_CHANGE], token), "expires_at": now + TTL[EMAIL_CHANGE]},
        )
    ctx.audit(
        AuditAction.AUTHN_EMAIL_CHANGE_REQUESTED,
        organization_id=PLATFORM_CHAIN,
        resource_type="user",
        resource_id=user.id,
    )
    return True


async def confirm_email_change(ctx: RequestContext, token: str) -> bool:
    refuse_api_keys(ctx.principal)
    services = ctx.services
    now = services.now()
    db = await ctx.db()
    spent = await spend_token(db, token, EMAIL_CHANGE, now)
    if spent is None or spent.user_id is None:
        raise Unauthenticated(INVALID_TOKEN)
    user = await db.get(User, spent.user_id, with_for_update=True)
    if user is None or not user.is_active:
        raise Unauthenticated(INVALID_TOKEN)
    taken = (
        await db.execute(sa_select(col(User.id)).where(col(User.email_key) == spent.email_key, col(User.id) != user.id))
    ).first() is not None
    if taken:
        raise Conflict("Another account uses this address now.")
    old = user.email
    user.email = spent.email
    user.email_key = spent.email_key
    user.email_verified_at = now
    db.add(user)
    await db.flush()
    await _spend_others(db, user.id, EMAIL_CHANGE, now)
    await _spend_others(db, user.id, PASSWORD_RESET, now)
    await _spend_others(db, user.id, VERIFY_EMAIL, now)
    await send_mail(ctx, to=old, template="email_changed", variables={"new_email": mask_email(spent.email), "at": now})
    ctx.audit(
        AuditAction.AUTHN_EMAIL_CHANGED,
        organization_id=PLATFORM_CHAIN,
        actor_id=user.id,
        resource_type="user",
        resource_id=user.id,
    )
    return True
