"""TOTP enrollment, confirmation and removal, and the second-factor step of password sign-in.

Choices (docs/authentication.md, "Two-factor authentication"):
- `enrollTotp` keeps a *pending* seed; enrolling again before confirming replaces it (the previous QR
  code stops working). With TOTP already enabled it is a `CONFLICT`: disable first.
- `confirmTotp` proves the device works; it enables TOTP, returns ten recovery codes once, and ends the
  user's other sessions (they were opened without the second factor).
- `disableTotp` needs a current TOTP code or a recovery code; a wrong one counts toward the sign-in
  lockout like a wrong password (a stolen session must not be able to guess it). It ends the user's
  other sessions too.
- At sign-in an enrolled user's missing code answers `UNAUTHENTICATED` with `reason: MFA_REQUIRED`, a
  wrong code `reason: MFA_INVALID`; both only once the password was right, both count as a failed
  attempt (so a caller holding the password cannot reset the lockout counter between code guesses).

The audit log records `authn_mfa_enroll_started`, `authn_mfa_enroll`, `authn_mfa_fail` and
`authn_mfa_disable`: `_audit` is the one place those events leave this module, with structured log lines
without any secret.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy import update
from sqlmodel import col

from authz import AuthMethod, PrincipalKind
from authz.errors import INVALID_CREDENTIALS, BadUserInput, Conflict, Forbidden, Unauthenticated
from identity.sessions import active_session_ids, org_key, revoke_sessions, user_key
from identity.totp import (
    Code,
    CodeFormatError,
    CodeKind,
    TotpService,
    drop_recovery_codes,
    matching_step,
    new_secret,
    parse_code,
    provisioning_uri,
    qr_svg,
    replace_recovery_codes,
    unused_recovery_codes,
    verify_code,
)
from resolvers import security_events
from resolvers.accounts import account_holder
from resolvers.common import announce_after_commit
from resolvers.deps import RequestContext, Services
from resolvers.mail import send_mail
from store.audit import AuditAction, AuditResult
from store.models import User

log = logging.getLogger("portcullis.auth")

MFA_REQUIRED = "MFA_REQUIRED"
MFA_INVALID = "MFA_INVALID"
MFA_ENROLLMENT_REQUIRED = "MFA_ENROLLMENT_REQUIRED"
INVALID_CODE = "Invalid two-factor code."


@dataclass(frozen=True, slots=True)
class TotpEnrollment:
    secret: str
    otpauth_uri: str
    qr_svg: str


async def _audit(
    action: str,
    *,
    ctx: RequestContext,
    user_id: str,
    result: str = "success",
    organization_id: str | None = None,
    **details: str,
) -> None:
    """The single point where a second-factor event is recorded (audit log: authn_mfa_*); never a code.

    A success commits with the mutation; a failure commits on its own, since the request then fails."""
    log.info(action, extra={"user_id": user_id, "result": result, "request_id": ctx.principal.request_id, **details})
    fields: dict[str, Any] = {
        "resource_type": "user",
        "resource_id": user_id,
        "actor_id": user_id,
        "details": dict(details),
        "organization_id": organization_id,
    }
    if result == "success":
        ctx.audit(action, **fields)
    else:
        await ctx.audit_now(action, result=AuditResult.DENIED, **fields)


def _totp(services: Services) -> TotpService:
    if services.totp is None:
        raise RuntimeError("TOTP is not configured")
    return services.totp


def parse(raw: str | None, field: str) -> Code | None:
    """The typed code, or None when nothing was typed; `BAD_USER_INPUT` when its shape is wrong."""
    if raw is None or not raw.strip():
        return None
    try:
        return parse_code(raw)
    except CodeFormatError as exc:
        raise BadUserInput(str(exc), field=field) from None


async def check_login_code(
    ctx: RequestContext, user: User, code: Code | None, organization_id: str | None = None
) -> str | None:
    """After a right password: None when the user has no second factor or `code` is right and unspent,
    else the refusal reason (`MFA_REQUIRED`, `MFA_INVALID`). The spend commits on its own."""
    if not user.mfa_enabled:
        return None
    if code is None:
        log.info("authn_login_mfa_required", extra={"user_id": user.id, "request_id": ctx.principal.request_id})
        return MFA_REQUIRED
    services = ctx.services
    async with services.db.transaction() as db:
        current = await db.get(User, user.id)
        ok = current is not None and await verify_code(db, _totp(services), current, code, services.now())
        left = await unused_recovery_codes(db, user.id) if ok and code.kind is CodeKind.RECOVERY else None
    if not ok:
        await _audit(
            "authn_mfa_fail",
            ctx=ctx,
            user_id=user.id,
            result="failure",
            organization_id=organization_id,
            kind=code.kind.value,
            step="login",
        )
        return MFA_INVALID
    if left is not None:
        log.info(
            "authn_mfa_recovery_code_used",
            extra={"user_id": user.id, "request_id": ctx.principal.request_id, "remaining": left},
        )
    return None


def refuse(reason: str) -> Unauthenticated:
    if reason == MFA_REQUIRED:
        return Unauthenticated(
            "A second factor is required: send the TOTP code (or a recovery code) as `totp`.", reason=MFA_REQUIRED
        )
    return Unauthenticated(INVALID_CODE, reason=MFA_INVALID)


async def _current_user(ctx: RequestContext) -> User:
    """The caller's account, when the caller's session may change its second factor: the person's own
    (resolvers/accounts.py `account_holder`), never a session opened through another tenant's provider."""
    if ctx.principal.kind is PrincipalKind.API_KEY:
        raise Forbidden("An API key has no second factor.")
    return await account_holder(ctx)


async def _end_other_sessions(ctx: RequestContext, user: User, reason: str) -> None:
    db = await ctx.db()
    session_id = ctx.principal.session_id
    others = await active_session_ids(db, user.id, except_id=session_id)
    await revoke_sessions(db, others, reason=reason, now=ctx.services.now())
    # the user's cached sessions (this one included) are reloaded: the enrollment restriction of an
    # organization that requires MFA follows `mfa_enabled` at once
    announce_after_commit(ctx, [*others, user_key(user.id)])


async def check_can_require(ctx: RequestContext) -> None:
    """Requiring MFA needs it of the one requiring it (a password user without TOTP would lock their own
    session into enrollment). SSO sessions and API keys are not asked."""
    p = ctx.principal
    if p.kind is not PrincipalKind.USER or p.auth_method is not AuthMethod.PASSWORD or p.subject_id is None:
        return
    user = await (await ctx.db()).get(User, p.subject_id)
    if user is None or not user.mfa_enabled:
        raise Forbidden(
            "Enable two-factor authentication on your own account before requiring it.", reason=MFA_ENROLLMENT_REQUIRED
        )


def requirement_changed(ctx: RequestContext) -> None:
    """After `requireMfa` changed: every process reloads the organization's sessions, so the enrollment
    restriction applies (or lifts) at once for sessions already open."""
    org_id = ctx.principal.organization_id
    if org_id is not None:
        announce_after_commit(ctx, [org_key(org_id)])


async def enroll_totp(ctx: RequestContext) -> TotpEnrollment:
    user = await _current_user(ctx)
    if user.mfa_enabled:
        raise Conflict("Two-factor authentication is already enabled; disable it before enrolling another device.")
    totp = _totp(ctx.services)
    secret = new_secret()
    user.totp_pending_secret_encrypted = totp.box.encrypt(secret)
    db = await ctx.db()
    db.add(user)
    uri = provisioning_uri(secret, account=user.email, issuer=totp.issuer)
    await _audit(AuditAction.AUTHN_MFA_ENROLL_STARTED, ctx=ctx, user_id=user.id)
    return TotpEnrollment(secret=secret, otpauth_uri=uri, qr_svg=qr_svg(uri))


async def confirm_totp(ctx: RequestContext, code: str) -> list[str]:
    user = await _current_user(ctx)
    parsed = parse(code, "code")
    if parsed is None or parsed.kind is not CodeKind.TOTP:
        raise BadUserInput("send the 6-digit code the authenticator app shows", field="code")
    if user.mfa_enabled:
        raise Conflict("Two-factor authentication is already enabled.")
    pending = user.totp_pending_secret_encrypted
    if pending is None:
        raise Conflict("No enrollment in progress: call enrollTotp first.")
    totp = _totp(ctx.services)
    step = matching_step(totp.box.decrypt(pending), parsed.value, totp.clock())
    if step is None:
        await _audit("authn_mfa_fail", ctx=ctx, user_id=user.id, result="failure", kind="totp", step="confirm")
        raise BadUserInput("The code does not match; check the device's clock and try again.", field="code")
    db = await ctx.db()
    # one conditional write: of two concurrent confirmations only one enables and gets recovery codes
    enabled = await db.execute(
        update(User)
        .where(
            col(User.id) == user.id,
            col(User.mfa_enabled).is_(False),
            col(User.totp_pending_secret_encrypted) == pending,
        )
        .values(
            mfa_enabled=True,
            totp_secret_encrypted=pending,
            totp_pending_secret_encrypted=None,
            totp_last_used_step=step,
        )
        .execution_options(synchronize_session=False)
    )
    if (getattr(enabled, "rowcount", 0) or 0) != 1:
        raise Conflict("Two-factor authentication is already enabled.")
    await db.refresh(user)
    codes = await replace_recovery_codes(db, totp, user.id, ctx.services.now())
    await _end_other_sessions(ctx, user, "mfa_enabled")
    await send_mail(
        ctx, to=user.email, template="mfa_changed", variables={"change": "enabled", "at": ctx.services.now()}
    )
    await _audit("authn_mfa_enroll", ctx=ctx, user_id=user.id)
    return codes


async def disable_totp(ctx: RequestContext, code: str) -> bool:
    user = await _current_user(ctx)
    parsed = parse(code, "code")
    if parsed is None:
        raise BadUserInput("send a current TOTP code or a recovery code", field="code")
    if not user.mfa_enabled:
        raise Conflict("Two-factor authentication is not enabled.")
    services = ctx.services
    attempt = await services.throttle.begin(user.email, ctx.principal.client_ip, ctx.principal.organization_id)
    if not attempt.allowed:
        await _audit(
            "authn_mfa_fail",
            ctx=ctx,
            user_id=user.id,
            result="failure",
            kind=parsed.kind.value,
            step="disable",
            reason="locked",
        )
        raise Unauthenticated(INVALID_CREDENTIALS)
    # the code is spent in a transaction of its own (as at sign-in), before the throttle records
    async with services.db.transaction() as spend:
        current = await spend.get(User, user.id)
        ok = current is not None and await verify_code(spend, _totp(services), current, parsed, services.now())
    if not ok:
        await services.throttle.failed(attempt)
        await _audit(
            "authn_mfa_fail", ctx=ctx, user_id=user.id, result="failure", kind=parsed.kind.value, step="disable"
        )
        raise Unauthenticated(INVALID_CODE, reason=MFA_INVALID)
    await services.throttle.succeeded(attempt)
    db = await ctx.db()
    await db.execute(
        update(User)
        .where(col(User.id) == user.id)
        .values(
            mfa_enabled=False, totp_secret_encrypted=None, totp_pending_secret_encrypted=None, totp_last_used_step=None
        )
        .execution_options(synchronize_session=False)
    )
    await drop_recovery_codes(db, user.id)
    await security_events.mfa_disabled(ctx, user.id)
    await _end_other_sessions(ctx, user, "mfa_disabled")
    await send_mail(ctx, to=user.email, template="mfa_changed", variables={"change": "disabled", "at": services.now()})
    await _audit("authn_mfa_disable", ctx=ctx, user_id=user.id, kind=parsed.kind.value)
    return True
