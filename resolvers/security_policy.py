"""An organization's security policy: read it, change it (a partial update, checked as a whole).

A change is refused, with every problem at once (`BAD_USER_INPUT` listing them in `extensions.problems`), when
the result is inconsistent (`authz.security_policy.check_policy`), names a break-glass owner who is not an
owner, would exclude the caller's own address without `confirmOwnAddressExcluded`, or would leave no owner
able to sign in. A restriction the organization's plan does not include is `FORBIDDEN` with `requiredPlan`.
A change commits with its audit entry (old and new values) and a `policy_changed` security event; once
committed, `org:<id>` on the revocation bus has every process apply it from its next request.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col, select

from authz import BuiltinRole, PrincipalKind
from authz.errors import BadUserInput, Conflict, Forbidden, NotFound
from authz.plans import POLICY_SETTING_PLANS, policy_setting_allowed
from authz.security_policy import (
    ALL_METHODS,
    ConcurrentSessionAction,
    RiskAction,
    SecurityPolicy,
    SignInMethod,
    check_policy,
    parse_cidr,
)
from identity.security_events import SecurityEventKind, Severity, record_security_event
from identity.security_policies import load_policy, row_values
from identity.sessions import org_key
from resolvers.common import announce_after_commit, tenant_of
from resolvers.deps import RequestContext
from resolvers.mfa import check_can_require
from store.audit import AuditAction, changes
from store.models import Membership, Organization, SsoIdentity, User
from store.scoping import tenant_select
from store.security import SecurityPolicyRow

NOT_FOUND = "Organization not found."
MAX_CIDR_TEXT = 49

# the GraphQL name of each SecurityPolicy setting (the Python field's), in the order the type lists them
SETTINGS: dict[str, str] = {
    "password_min_length": "passwordMinLength",
    "password_history": "passwordHistory",
    "password_max_age_days": "passwordMaxAgeDays",
    "breached_password_check": "breachedPasswordCheck",
    "session_idle_timeout_minutes": "sessionIdleTimeoutMinutes",
    "session_max_lifetime_hours": "sessionMaxLifetimeHours",
    "max_concurrent_sessions": "maxConcurrentSessions",
    "concurrent_session_action": "concurrentSessionAction",
    "fresh_auth_minutes": "freshAuthMinutes",
    "allowed_sign_in_methods": "allowedSignInMethods",
    "break_glass_user_ids": "breakGlassOwners",
    "require_mfa": "requireMfa",
    "api_key_max_lifetime_days": "apiKeyMaxLifetimeDays",
    "ip_allowlist": "ipAllowlist",
    "medium_risk_action": "mediumRiskAction",
    "high_risk_action": "highRiskAction",
}
# settings that cannot be cleared: null in the input is a mistake, not "no rule"
NOT_NULL = frozenset(
    {
        "password_min_length",
        "password_history",
        "breached_password_check",
        "concurrent_session_action",
        "allowed_sign_in_methods",
        "break_glass_user_ids",
        "require_mfa",
        "ip_allowlist",
        "medium_risk_action",
        "high_risk_action",
    }
)


@dataclass
class PolicyChanges:
    """The settings the caller named (Python field names of `SecurityPolicy`; None clears a nullable one)."""

    values: dict[str, Any] = field(default_factory=dict)
    confirm_own_address_excluded: bool = False


def audited(policy: SecurityPolicy) -> dict[str, Any]:
    """The policy as its audit entry shows it, by GraphQL name."""
    values = {**row_values(policy), "require_mfa": policy.require_mfa}
    return {SETTINGS[k]: v for k, v in values.items() if k in SETTINGS}


async def get_policy(ctx: RequestContext, organization_id: str) -> SecurityPolicy:
    """The caller's own organization's policy (another organization's is not the caller's to read)."""
    if organization_id != tenant_of(ctx.principal):
        raise Forbidden("You are not allowed to access this field.", requiredScopes=[["security:read"]])
    return await load_policy(await ctx.db(), organization_id)


def _allowlist(values: list[str], problems: list[str]) -> tuple[str, ...]:
    kept: list[str] = []
    for text in values:
        if len(text) > MAX_CIDR_TEXT or "\x00" in text:
            problems.append("ipAllowlist: an entry is not an IP address or CIDR")
            continue
        try:
            net = str(parse_cidr(text))
        except ValueError as exc:
            problems.append(f"ipAllowlist: {exc}")
            continue
        if net not in kept:
            kept.append(net)
    return tuple(kept)


def _candidate(current: SecurityPolicy, wanted: dict[str, Any], problems: list[str]) -> SecurityPolicy:
    values: dict[str, Any] = {}
    for name, value in wanted.items():
        if value is None and name in NOT_NULL:
            problems.append(f"{SETTINGS[name]} cannot be null")
        elif name == "ip_allowlist":
            values[name] = _allowlist(list(value), problems)
        elif name == "allowed_sign_in_methods":
            values[name] = frozenset(SignInMethod(m) for m in value)
        elif name == "break_glass_user_ids":
            values[name] = frozenset(str(v) for v in value)
        elif name == "concurrent_session_action":
            values[name] = ConcurrentSessionAction(value)
        elif name in ("medium_risk_action", "high_risk_action"):
            values[name] = RiskAction(value)
        else:
            values[name] = value
    # `networks` is derived from the allowlist: made anew, never carried over
    return dataclasses.replace(current, **values, networks=())


async def _owners(db: AsyncSession, organization_id: str) -> list[tuple[str, bool, bool]]:
    """Each active owner: (user id, has a password, has a single sign-on identity in the organization)."""
    rows = await db.execute(
        select(col(User.id), col(User.password_hash))
        .join(Membership, col(Membership.user_id) == col(User.id))
        .where(
            col(Membership.organization_id) == organization_id,
            col(Membership.role) == BuiltinRole.OWNER.value,
            col(User.is_active).is_(True),
        )
    )
    owners = [(r[0], r[1] is not None) for r in rows.all()]
    linked = set(
        (
            await db.execute(
                select(col(SsoIdentity.user_id)).where(
                    col(SsoIdentity.organization_id) == organization_id,
                    col(SsoIdentity.user_id).in_([o[0] for o in owners]),
                )
            )
        )
        .scalars()
        .all()
    )
    return [(uid, has_password, uid in linked) for uid, has_password in owners]


async def _check_members(db: AsyncSession, organization_id: str, user_ids: frozenset[str]) -> None:
    """NOT_FOUND for a break-glass id that is no member of the organization: another organization's user
    answers exactly as an id that does not exist (C-098)."""
    wanted = {u for u in user_ids if len(u) <= 36}
    found = set(
        (
            await db.execute(
                select(col(Membership.user_id)).where(
                    col(Membership.organization_id) == organization_id, col(Membership.user_id).in_(wanted)
                )
            )
        )
        .scalars()
        .all()
    )
    if found != user_ids:
        raise NotFound("breakGlassOwners: no such member of this organization.")


def _owner_can_sign_in(policy: SecurityPolicy, owner: tuple[str, bool, bool]) -> bool:
    user_id, has_password, has_sso = owner
    if has_password and policy.method_allowed("password", user_id=user_id):
        return True
    return has_sso and SignInMethod.SSO in policy.allowed_sign_in_methods


async def _people_problems(
    db: AsyncSession, organization_id: str, policy: SecurityPolicy, problems: list[str], *, methods_changed: bool
) -> None:
    owners = await _owners(db, organization_id)
    owner_ids = {o[0] for o in owners}
    for user_id in sorted(policy.break_glass_user_ids - owner_ids):
        problems.append(f"breakGlassOwners: {user_id} is a member but not an owner of this organization")
    if methods_changed and owners and not any(_owner_can_sign_in(policy, o) for o in owners):
        problems.append(
            "no owner could sign in under this policy: keep PASSWORD allowed, name a break-glass owner who has "
            "a password, or link an owner to the organization's single sign-on first"
        )


def _plan_check(org: Organization, policy: SecurityPolicy, wanted: dict[str, Any]) -> None:
    restricted = {
        "ipAllowlist": "ip_allowlist" in wanted and bool(policy.ip_allowlist),
        "allowedSignInMethods": "allowed_sign_in_methods" in wanted and policy.allowed_sign_in_methods != ALL_METHODS,
    }
    for setting, on in restricted.items():
        if on and not policy_setting_allowed(setting, org.plan):
            raise Forbidden(
                f"{setting} needs the {POLICY_SETTING_PLANS[setting].upper()} plan or a higher one.",
                requiredPlan=POLICY_SETTING_PLANS[setting].upper(),
            )


async def update_policy(ctx: RequestContext, wanted: PolicyChanges) -> SecurityPolicy:
    org_id = tenant_of(ctx.principal)
    db = await ctx.db()
    org = await db.get(Organization, org_id, with_for_update=True)
    if org is None:
        raise NotFound(NOT_FOUND)
    current = await load_policy(db, org_id)
    problems: list[str] = []
    policy = _candidate(current, wanted.values, problems)
    if "break_glass_user_ids" in wanted.values:
        await _check_members(db, org_id, policy.break_glass_user_ids)
    problems.extend(p for p in check_policy(policy) if p not in problems)
    ip = ctx.principal.client_ip
    if (
        "ip_allowlist" in wanted.values
        and policy.ip_allowlist
        and not policy.address_allowed(ip)
        and not wanted.confirm_own_address_excluded
    ):
        problems.append(
            f"ipAllowlist does not include your own address ({ip or 'unknown'}): requests from it would be refused; "
            "set confirmOwnAddressExcluded: true to apply it anyway"
        )
    methods_changed = bool({"allowed_sign_in_methods", "break_glass_user_ids"} & set(wanted.values))
    await _people_problems(db, org_id, policy, problems, methods_changed=methods_changed)
    if problems:
        raise BadUserInput("; ".join(problems), problems=problems)
    _plan_check(org, policy, wanted.values)
    if policy.require_mfa and not current.require_mfa:
        await check_can_require(ctx)
    await _store(ctx, db, org, policy)
    # a list of {setting, old, new}: the audit log redacts values under keys such as `passwordMinLength`
    changed = [{"setting": k, **v} for k, v in changes(audited(current), audited(policy)).items()]
    ctx.audit(
        AuditAction.SECURITY_POLICY_UPDATE,
        resource_type="organization",
        resource_id=org_id,
        details={"changes": changed},
    )
    if changed:
        p = ctx.principal
        await record_security_event(
            db,
            organization_id=org_id,
            kind=SecurityEventKind.POLICY_CHANGED,
            severity=Severity.MEDIUM,
            summary="Security policy changed: " + ", ".join(c["setting"] for c in changed),
            actor_id=p.subject_id,
            client_ip=p.client_ip,
            request_id=p.request_id,
            details={"changes": changed},
        )
    # sessions, keys and policies cached for the organization are reloaded by every process
    announce_after_commit(ctx, [org_key(org_id)])
    return policy


async def _store(ctx: RequestContext, db: AsyncSession, org: Organization, policy: SecurityPolicy) -> None:
    row = (
        await db.execute(tenant_select(SecurityPolicyRow, org.id).with_for_update())
    ).scalar_one_or_none() or SecurityPolicyRow(organization_id=org.id)
    for name, value in row_values(policy).items():
        setattr(row, name, value)
    row.updated_at = ctx.services.now()
    row.updated_by = ctx.principal.subject_id if ctx.principal.kind is PrincipalKind.USER else None
    org.require_mfa = policy.require_mfa
    db.add(org)
    db.add(row)
    try:
        await db.flush()
    except IntegrityError:
        raise Conflict("The security policy was changed by another request; try again.") from None
