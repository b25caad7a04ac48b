"""Password login, refresh, logout, password change and unlock.

Every way a login can fail (unknown email, wrong password, inactive user, not a member of the named
organization, locked) answers the same `UNAUTHENTICATED` error after about the same time.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

from sqlmodel import col, select

from authz import AuthMethod, Principal, PrincipalKind
from authz.errors import INVALID_CREDENTIALS, BadUserInput, NotFound, Unauthenticated
from identity.lockout import email_key
from identity.passwords import MAX_BYTES
from identity.sessions import (
    RefreshError,
    active_session_ids,
    create_session,
    load_session,
    revoke_sessions,
    rotate_refresh_token,
    user_key,
)
from identity.tokens import AccessClaims
from resolvers import mfa, risk, sign_in_policy
from resolvers.accounts import refuse_api_keys
from resolvers.address_blocks import count_failed_sign_in, refuse_blocked_sign_in
from resolvers.common import announce_after_commit
from resolvers.deps import RequestContext, Services
from resolvers.login_failures import audit_refusal, membership_of, record_failure
from resolvers.mail import send_mail
from resolvers.passwords import record_password, vet_new_password
from resolvers.provisioning import MAX_EMAIL_LENGTH
from resolvers.risk import NO_ACCOUNT
from store.audit import PLATFORM_CHAIN, AuditAction, AuditResult
from store.models import AuthSession, Membership, Organization, User

log = logging.getLogger("portcullis.auth")

MAX_REFRESH_TOKEN_LENGTH = 128


@dataclass(frozen=True, slots=True)
class AuthResult:
    access_token: str
    claims: AccessClaims
    refresh_token: str
    user: User
    organization: Organization


def session_token(services: Services, session: AuthSession) -> tuple[str, AccessClaims]:
    """An access token of the session; its `auth_time` is the session's sign-in, whenever it is issued."""
    return services.tokens.issue(
        subject=session.user_id,
        organization_id=session.organization_id,
        session_id=session.id,
        auth_time=session.created_at.timestamp(),
    )


def _check_credentials_shape(email: str, password: str, organization_slug: str | None = None) -> None:
    if len(email) > MAX_EMAIL_LENGTH:
        raise BadUserInput(f"email must be at most {MAX_EMAIL_LENGTH} characters")
    # PostgreSQL text cannot hold NUL: refuse it here, by shape alone, rather than fail in the database.
    if "\x00" in email:
        raise BadUserInput("email must not contain a NUL character")
    if organization_slug is not None and (len(organization_slug) > 63 or "\x00" in organization_slug):
        raise BadUserInput("not a valid organization slug")
    if len(password.encode("utf-8", "surrogatepass")) > MAX_BYTES:
        raise BadUserInput("password is too long")


async def _find_user(ctx: RequestContext, email: str) -> User | None:
    # A short read of its own: no connection is held during the argon2 run or while the throttle
    # takes another one, so concurrent logins cannot exhaust the pool waiting on each other.
    async with ctx.services.db.transaction() as db:
        return (await db.execute(select(User).where(col(User.email_key) == email_key(email)))).scalar_one_or_none()


async def login(
    ctx: RequestContext,
    email: str,
    password: str,
    organization_slug: str | None = None,
    totp: str | None = None,
) -> AuthResult:
    refuse_api_keys(ctx.principal)
    _check_credentials_shape(email, password, organization_slug)
    code = mfa.parse(totp, "totp")
    services, principal = ctx.services, ctx.principal
    user = await _find_user(ctx, email)
    # which organization the sign-in aims at decides which counters it runs against (C-127); read for an
    # unknown email too (it finds nothing), so that its failure takes no less time (C-112)
    async with services.db.transaction() as lookup:
        membership = await membership_of(lookup, user.id if user is not None else NO_ACCOUNT, organization_slug)
    attempt = await services.throttle.begin(
        email, principal.client_ip, membership.organization_id if membership is not None else None
    )
    if not attempt.allowed and not (attempt.needs_second_factor and code is not None):
        # The same work as a checked failure (lookup, one argon2 run, recording), so a refused
        # attempt answers in the same time as a wrong password (C-112).
        await services.hasher.burn()
        locked = await services.throttle.failed(attempt)
        log.info(
            "authn_login_lock" if locked else "authn_login_fail",
            extra={"reason": attempt.reason, "request_id": principal.request_id},
        )
        await record_failure(ctx, email, user, membership, attempt.known_address, locked=locked, reason=attempt.reason)
        await count_failed_sign_in(ctx, email, membership.organization_id if membership is not None else None)
        raise Unauthenticated(INVALID_CREDENTIALS)

    usable = user is not None and user.is_active and user.password_hash is not None
    ok = await services.hasher.verify(user.password_hash if usable and user else None, password)
    if attempt.needs_second_factor:
        # Past the account's ceiling from an address it does not know, only the password and the second
        # factor together sign in (C-127). Both are checked whatever the other's outcome, so neither the
        # answer nor its time tells a guesser that the password alone was right.
        second = (
            user is not None
            and usable
            and user.mfa_enabled
            and await mfa.check_login_code(
                ctx, user, code, membership.organization_id if membership is not None else None
            )
            is None
        )
        ok = ok and second
    if not ok or user is None or membership is None:
        locked = await services.throttle.failed(attempt)
        log.info("authn_login_lock" if locked else "authn_login_fail", extra={"request_id": principal.request_id})
        reason = "no_membership" if ok else ("inactive" if user is not None and not usable else "bad_password")
        if attempt.needs_second_factor:
            reason = "account_ceiling"
        await record_failure(
            ctx,
            email,
            user,
            membership,
            attempt.known_address,
            locked=locked,
            reason="unknown_user" if user is None else reason,
        )
        await count_failed_sign_in(ctx, email, membership.organization_id if membership is not None else None)
        raise Unauthenticated(INVALID_CREDENTIALS)
    # the sign-in's risk, and what the organization's policy makes of it (resolvers/risk.py)
    assessed = await risk.assess(
        ctx,
        user_id=user.id,
        organization_id=membership.organization_id,
        method=AuthMethod.PASSWORD.value,
        known_address=attempt.known_address,
    )
    if assessed.refused:
        locked = await services.throttle.failed(attempt)
        await risk.refuse(ctx, assessed)
        await audit_refusal(ctx, email, user, membership, locked=locked, reason="risk", risk=assessed.details())
        raise Unauthenticated(INVALID_CREDENTIALS)
    # the second factor is asked for (and its absence told) only once the password was right
    refusal = (
        None if attempt.needs_second_factor else await mfa.check_login_code(ctx, user, code, membership.organization_id)
    )
    if refusal is not None:
        await risk.record_attempt(ctx, assessed, risk.CHALLENGED if refusal == mfa.MFA_REQUIRED else risk.FAILURE)
        if await services.throttle.failed(attempt):
            log.info("authn_login_lock", extra={"request_id": principal.request_id})
        raise mfa.refuse(refusal)

    # told only to a caller who had the credentials: no one learns from it which accounts a tenant has
    refuse_blocked_sign_in(ctx, membership.organization_id)
    # the organization's policy (resolvers/sign_in_policy.py): refused like any other failed sign-in
    now = services.now()
    policy = await services.authenticator.policy(membership.organization_id)
    blocked = sign_in_policy.sign_in_refusal(
        policy, method=AuthMethod.PASSWORD.value, user_id=user.id, client_ip=principal.client_ip
    )
    ending: list[str] = []
    if blocked is None:
        async with services.db.transaction() as lookup:
            active = await sign_in_policy.active_sessions(
                lookup, policy, user_id=user.id, organization_id=membership.organization_id, now=now
            )
        try:
            ending = sign_in_policy.sessions_to_end(policy, active)
        except sign_in_policy.SessionLimitReached:
            blocked = sign_in_policy.SESSION_LIMIT
    if blocked is not None:
        await audit_refusal(ctx, email, user, membership, locked=False, reason=blocked)
        await sign_in_policy.record_refusal(
            ctx, organization_id=membership.organization_id, user_id=user.id, reason=blocked, method="password"
        )
        raise Unauthenticated(INVALID_CREDENTIALS)
    await services.throttle.succeeded(attempt)
    db = await ctx.db()
    user = await db.get(User, user.id)
    if user is None or user.password_hash is None:
        raise Unauthenticated(INVALID_CREDENTIALS)
    if services.hasher.needs_rehash(user.password_hash):
        user.password_hash = await services.hasher.hash(password)
    first_sign_in = user.last_login_at is None
    user.last_login_at = now
    db.add(user)
    org = await db.get(Organization, membership.organization_id)
    assert org is not None
    issued = await create_session(
        db,
        user_id=user.id,
        organization_id=org.id,
        auth_method=AuthMethod.PASSWORD.value,
        client_ip=principal.client_ip,
        user_agent=ctx.user_agent,
        policy=dataclasses.replace(
            services.session_policy,
            absolute_lifetime_seconds=sign_in_policy.lifetime_seconds(
                policy, services.session_policy.absolute_lifetime_seconds
            ),
        ),
        now=now,
    )
    await risk.admit(db, ctx, assessed, second_factor=user.mfa_enabled)
    if ending:
        await revoke_sessions(db, ending, reason="session_limit", now=now)
        announce_after_commit(ctx, ending)
    token, claims = session_token(services, issued.session)
    log.info("authn_login_success", extra={"request_id": principal.request_id, "user_id": user.id})
    # committed with the session it opens: there is no success entry for a session that never was
    ctx.audit(
        AuditAction.AUTHN_LOGIN_SUCCESS,
        organization_id=org.id,
        actor_id=user.id,
        resource_type="session",
        resource_id=issued.session.id,
        details={
            "method": AuthMethod.PASSWORD.value,
            "knownAddress": attempt.known_address,
            "risk": assessed.details(),
            **({"sessionsEnded": len(ending)} if ending else {}),
        },
    )
    if not attempt.known_address and not first_sign_in:
        await send_mail(
            ctx,
            to=user.email,
            template="new_sign_in",
            organization_id=org.id,
            variables={
                "at": now,
                "client_ip": principal.client_ip,
                "user_agent": ctx.user_agent,
                "organization_name": org.name,
                "method": AuthMethod.PASSWORD.value,
            },
        )
    return AuthResult(token, claims, issued.refresh_token, user, org)


async def refresh(ctx: RequestContext, refresh_token: str | None) -> AuthResult:
    refuse_api_keys(ctx.principal)
    services = ctx.services
    if not refresh_token or len(refresh_token) > MAX_REFRESH_TOKEN_LENGTH:
        raise Unauthenticated("Invalid refresh token.")
    now = services.now()
    failure: RefreshError | None = None
    # An authentication event: it commits on its own, so a detected reuse stays revoked.
    async with services.db.transaction() as db:
        try:
            client_ip = ctx.principal.client_ip
            failure = await sign_in_policy.refresh_refusal(db, refresh_token, client_ip=client_ip, now=now)
            if failure is not None:
                raise failure
            session, new_token = await rotate_refresh_token(db, refresh_token, policy=services.session_policy, now=now)
        except RefreshError as exc:
            failure = exc
        else:
            info = await load_session(db, session.id, now)
            if info is None:
                # deactivated user, membership gone, or past its lifetime: the session ends here
                await revoke_sessions(db, [session.id], reason="no_longer_valid", now=now)
                failure = RefreshError("session no longer valid", revoked_session_id=session.id)
    if failure is not None:
        if failure.revoked_session_id is not None:
            if failure.reason == "reused":
                log.warning("authn_token_reuse", extra={"session_id": failure.revoked_session_id})
            await services.revocations.publish([failure.revoked_session_id])
        await _audit_refresh_failure(ctx, failure)
        raise Unauthenticated("Invalid refresh token.")
    db = await ctx.db()
    user = await db.get(User, session.user_id)
    org = await db.get(Organization, session.organization_id)
    if user is None or org is None:
        raise Unauthenticated("Invalid refresh token.")
    # the session's sign-in stays the token's auth_time: a refresh is no authentication
    token, claims = session_token(services, session)
    await ctx.audit_now(
        AuditAction.AUTHN_TOKEN_REFRESH,
        organization_id=org.id,
        actor_id=user.id,
        resource_type="session",
        resource_id=session.id,
    )
    return AuthResult(token, claims, new_token, user, org)


async def _audit_refresh_failure(ctx: RequestContext, failure: RefreshError) -> None:
    """A reused refresh token is `authn_token_reuse` in its session's tenant; any other refused
    refresh token is a denied `authn_token_refresh` (in the platform chain when it names no session)."""
    session_id = failure.revoked_session_id
    org_id, user_id = None, None
    if session_id is not None:
        async with ctx.services.db.transaction() as db:
            row = await db.get(AuthSession, session_id)  # tenant-scope: the session the token belonged to
            if row is not None:
                org_id, user_id = row.organization_id, row.user_id
    action = AuditAction.AUTHN_TOKEN_REUSE if failure.reason == "reused" else AuditAction.AUTHN_TOKEN_REFRESH
    await ctx.audit_now(
        action,
        result=AuditResult.DENIED,
        organization_id=org_id or PLATFORM_CHAIN,
        actor_id=user_id,
        resource_type="session",
        resource_id=session_id,
        details={"reason": failure.reason},
    )


def _require_user(principal: Principal) -> tuple[str, str]:
    refuse_api_keys(principal)
    if principal.kind is not PrincipalKind.USER or principal.subject_id is None or principal.session_id is None:
        raise Unauthenticated("Authentication required.")
    return principal.subject_id, principal.session_id


async def logout(ctx: RequestContext) -> bool:
    _, session_id = _require_user(ctx.principal)
    db = await ctx.db()
    await revoke_sessions(db, [session_id], reason="logout", now=ctx.services.now())
    ctx.audit(AuditAction.AUTHN_LOGOUT, resource_type="session", resource_id=session_id)

    async def announce() -> None:
        await ctx.services.revocations.publish([session_id])

    ctx.after_commit.append(announce)
    return True


async def change_password(ctx: RequestContext, current_password: str, new_password: str) -> bool:
    user_id, session_id = _require_user(ctx.principal)
    _check_credentials_shape("", current_password)
    services = ctx.services
    # The checks and the three argon2 runs come before the unit of work opens its session (a short read
    # of its own first): on SQLite that session takes the writers' turn, which no other mutation should
    # wait for while a password is hashed.
    async with services.db.transaction() as read:
        found = await read.get(User, user_id)
    if found is None:
        raise Unauthenticated("Authentication required.")
    email, current_hash = found.email, found.password_hash
    attempt = await services.throttle.begin(email, ctx.principal.client_ip, ctx.principal.organization_id)
    if not attempt.allowed:
        await services.hasher.burn()
        raise Unauthenticated(INVALID_CREDENTIALS)
    if not await services.hasher.verify(current_hash, current_password):
        await services.throttle.failed(attempt)
        raise Unauthenticated(INVALID_CREDENTIALS)
    await services.throttle.succeeded(attempt)
    await vet_new_password(ctx, new_password, user=found, field="newPassword")
    if await services.hasher.verify(current_hash, new_password):
        raise BadUserInput("the new password must differ from the current one", field="newPassword")
    new_hash = await services.hasher.hash(new_password)
    db = await ctx.db()
    user = await db.get(User, user_id, with_for_update=True)  # PostgreSQL: a concurrent change waits here
    if user is None or user.password_hash != current_hash:
        # changed (or removed) by another request while this one hashed: the password it was given is
        # no longer the current one
        raise Unauthenticated(INVALID_CREDENTIALS)
    user.password_hash = new_hash
    user.password_changed_at = services.now()
    db.add(user)
    await record_password(db, user_id, new_hash, services.now())
    others = await active_session_ids(db, user_id, except_id=session_id)
    await revoke_sessions(db, others, reason="password_changed", now=services.now())
    await send_mail(
        ctx,
        to=user.email,
        template="password_changed",
        variables={"at": services.now(), "client_ip": ctx.principal.client_ip},
    )
    ctx.audit(
        AuditAction.AUTHN_PASSWORD_CHANGE,
        resource_type="user",
        resource_id=user_id,
        details={"sessionsEnded": len(others)},
    )

    async def announce() -> None:
        # the user's own key too: this session, restricted while the password was too old, no longer is
        await services.revocations.publish([*others, user_key(user_id)])

    ctx.after_commit.append(announce)
    return True


async def unlock_user(ctx: RequestContext, user_id: str) -> bool:
    """Clear a member's failed-login counters of sign-ins into the caller's organization (C-127): another
    organization's counters, and the account's own, stay as they are."""
    org_id = ctx.principal.organization_id
    if org_id is None or not user_id or len(user_id) > 36:
        raise NotFound("User not found.")
    db = await ctx.db()
    row = (
        await db.execute(
            select(User)
            .join(Membership, col(Membership.user_id) == col(User.id))
            .where(col(Membership.organization_id) == org_id, col(User.id) == user_id)
        )
    ).scalar_one_or_none()
    if row is None:
        raise NotFound("User not found.")
    cleared = await ctx.services.throttle.unlock(row.email, org_id)
    log.info("authn_login_unlock", extra={"user_id": row.id, "request_id": ctx.principal.request_id})
    ctx.audit(
        AuditAction.AUTHN_LOGIN_UNLOCK, resource_type="user", resource_id=row.id, details={"counters_cleared": cleared}
    )
    return True
