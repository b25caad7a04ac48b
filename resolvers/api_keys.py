"""API keys of the caller's organization: creating, listing, rotating and revoking.

A key's scopes are permissions of the vocabulary that its creator holds when creating it; it then acts
for its holder (`held_by`, see `identity.api_keys`): whoever last received its secret. Creating makes the
creator the holder; rotating hands the key to the rotator, since the rotator now knows the only working
secret. Rotating hands out the key's power again, so it needs the caller to hold the key's scopes too;
revoking does not. A rotation that changes the holder cannot keep the old secret for a grace period: the
previous holder would keep a working secret that no membership of theirs stands behind any more.

A member who leaves the organization takes no key with them: `remove_member` revokes every key they
hold (`end_held_keys`), and until then `identity.api_keys` already refuses a key whose holder is no
longer a member.

The plan's API_KEYS limit counts keys not revoked; creation checks it with `resolvers.quotas.check_quota`,
which serializes concurrent creations so that exactly as many keys as the limit allows get through.

Revocation and rotation announce `apikey:<id>` after the commit, so every process drops the key from
its cache at once.

The platform operator creates, lists and revokes keys with `portcullis api-key` through these same
functions; a key the operator creates acts for the organization's first owner.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from authz import BuiltinRole, Principal, PrincipalKind, RoleError, is_permission, parse_permissions
from authz.errors import BadUserInput, Conflict, Forbidden, NotFound
from authz.plans import QuotaResource
from identity.api_keys import apikey_key, env_label, hash_secret, new_prefix, new_secret, parse
from identity.security_policies import load_policy
from resolvers import security_events
from resolvers.common import announce_after_commit, tenant_of
from resolvers.deps import RequestContext
from resolvers.quotas import check_quota
from resolvers.sign_in_policy import capped_key_expiry, check_key_expiry
from resolvers.times import given_time
from store.audit import AuditAction, changes
from store.models import ApiKey, Membership
from store.scoping import tenant_select

API_KEY_NOT_FOUND = "API key not found."
MAX_NAME_LENGTH = 100
MAX_SCOPES = 32
MAX_ALLOWED_IPS = 32
MAX_RATE_LIMIT = 1_000_000
MAX_GRACE_SECONDS = 7 * 24 * 3600


@dataclass(frozen=True, slots=True)
class NewApiKey:
    name: str
    scopes: list[str]
    expires_at: datetime | None = None
    allowed_ips: list[str] | None = None
    rate_limit_per_minute: int | None = None


@dataclass(frozen=True, slots=True)
class IssuedKey:
    key: ApiKey
    secret: str


def _name(name: str) -> str:
    name = name.strip()
    if not name or len(name) > MAX_NAME_LENGTH or "\x00" in name:
        raise BadUserInput(f"name must be 1 to {MAX_NAME_LENGTH} characters", field="name")
    return name


def _scopes(names: list[str]) -> frozenset[str]:
    if not names:
        raise BadUserInput("a key needs at least one scope", field="scopes")
    if len(names) > MAX_SCOPES:
        raise BadUserInput(f"a key has at most {MAX_SCOPES} scopes", field="scopes")
    try:
        return parse_permissions(names)
    except RoleError as exc:
        raise BadUserInput(exc.message, field="scopes") from None


def _cidrs(values: list[str] | None) -> list[str]:
    values = values or []
    if len(values) > MAX_ALLOWED_IPS:
        raise BadUserInput(f"at most {MAX_ALLOWED_IPS} networks", field="allowedIps")
    networks = []
    for value in values:
        try:
            networks.append(str(ipaddress.ip_network(value.strip(), strict=False)))
        except ValueError:
            raise BadUserInput("allowedIps must be IP addresses or CIDR networks", field="allowedIps") from None
    return sorted(set(networks))


def _check_within(principal: Principal, scopes: frozenset[str], message: str) -> None:
    missing = sorted(str(p) for p in scopes - principal.effective_permissions)
    if missing:
        raise Forbidden(message, requiredScopes=[missing])


async def _acting_user(ctx: RequestContext, db: AsyncSession, org_id: str) -> str:
    """The member the caller acts for: the signed-in user, or the holder of the key the caller uses; for the
    operator, the organization's first owner."""
    principal = ctx.principal
    if ctx.is_operator:
        owner = (
            (
                await db.execute(
                    tenant_select(Membership, org_id)
                    .where(col(Membership.role) == BuiltinRole.OWNER.value)
                    .order_by(col(Membership.created_at), col(Membership.id))
                )
            )
            .scalars()
            .first()
        )
        if owner is None:
            raise Conflict("The organization has no owner for the key to act for.")
        return owner.user_id
    if principal.kind is not PrincipalKind.API_KEY:
        assert principal.subject_id is not None
        return principal.subject_id
    row = (
        await db.execute(tenant_select(ApiKey, org_id).where(col(ApiKey.id) == principal.subject_id))
    ).scalar_one_or_none()
    if row is None:
        raise NotFound(API_KEY_NOT_FOUND)
    return row.held_by


async def create_api_key(ctx: RequestContext, new: NewApiKey) -> IssuedKey:
    principal = ctx.principal
    org_id = tenant_of(principal)
    name = _name(new.name)
    scopes = _scopes(new.scopes)
    _check_within(principal, scopes, "You cannot give a key scopes you do not hold.")
    allowed = _cidrs(new.allowed_ips)
    now = ctx.services.now()
    expires = given_time(new.expires_at) if new.expires_at is not None else None
    if expires is not None and expires <= now:
        raise BadUserInput("expiresAt must be in the future", field="expiresAt")
    rate = new.rate_limit_per_minute
    if rate is not None and not 1 <= rate <= MAX_RATE_LIMIT:
        raise BadUserInput(f"rateLimitPerMinute must be between 1 and {MAX_RATE_LIMIT}", field="rateLimitPerMinute")
    db = await ctx.db()
    check_key_expiry(await load_policy(db, org_id), expires, now)
    await check_quota(db, org_id, QuotaResource.API_KEYS)
    creator = await _acting_user(ctx, db, org_id)
    issued = issue_key(
        ctx.services.api_key_pepper,
        ctx.services.api_key_env,
        organization_id=org_id,
        created_by=creator,
        name=name,
        scopes=scopes,
        allowed_ips=allowed,
        rate_limit_per_minute=rate,
        expires_at=expires,
        now=now,
    )
    db.add(issued.key)
    await db.flush()
    if expires is None:
        await security_events.api_key_without_expiry(ctx, org_id, issued.key.id, name)
    ctx.audit(
        AuditAction.APIKEY_CREATED,
        resource_type="api_key",
        resource_id=issued.key.id,
        details={
            "name": name,
            "prefix": issued.key.prefix,
            "scopes": issued.key.scopes,
            "allowedIps": allowed,
            "rateLimitPerMinute": rate,
            "expiresAt": expires,
        },
    )
    return issued


def issue_key(
    pepper: bytes,
    env: str,
    *,
    organization_id: str,
    created_by: str,
    name: str,
    scopes: frozenset[str],
    allowed_ips: list[str],
    rate_limit_per_minute: int | None,
    expires_at: datetime | None,
    now: datetime,
) -> IssuedKey:
    """A new key row and its secret; its creator holds it."""
    label = env_label(env)
    prefix = new_prefix()
    secret = new_secret(label, prefix)
    key = ApiKey(
        organization_id=organization_id,
        created_by=created_by,
        held_by=created_by,
        name=name,
        env=label,
        prefix=prefix,
        secret_hash=hash_secret(pepper, parse(secret).secret),
        scopes=sorted(str(p) for p in scopes),
        allowed_ips=allowed_ips,
        rate_limit_per_minute=rate_limit_per_minute,
        expires_at=expires_at,
        created_at=now,
    )
    return IssuedKey(key, secret)


async def list_api_keys(ctx: RequestContext, organization_id: str) -> list[ApiKey]:
    """The caller's own organization's keys, oldest first; never a secret."""
    org_id = tenant_of(ctx.principal)
    if organization_id != org_id:
        raise Forbidden("You are not allowed to access this field.", requiredScopes=[["apikeys:read"]])
    db = await ctx.db()
    rows = await db.execute(tenant_select(ApiKey, org_id).order_by(col(ApiKey.created_at), col(ApiKey.id)))
    return list(rows.scalars().all())


async def _key(db: AsyncSession, org_id: str, key_id: str, *, lock: bool = False) -> ApiKey:
    """A key of the caller's organization; another tenant's id answers like a random one (C-109)."""
    if not key_id or len(key_id) > 36 or "\x00" in key_id:
        raise NotFound(API_KEY_NOT_FOUND)
    stmt = tenant_select(ApiKey, org_id).where(col(ApiKey.id) == key_id)
    if lock:
        stmt = stmt.with_for_update()
    row = (await db.execute(stmt)).scalar_one_or_none()
    if row is None:
        raise NotFound(API_KEY_NOT_FOUND)
    return row


async def rotate_api_key(ctx: RequestContext, key_id: str, grace_period_seconds: int) -> IssuedKey:
    """A new secret for the key, handed to the caller, who becomes its holder; the current one keeps
    working for `grace_period_seconds` (0: stops now) when the key stays with its holder. A secret still
    in an earlier rotation's grace period stops at once."""
    principal = ctx.principal
    org_id = tenant_of(principal)
    if not 0 <= grace_period_seconds <= MAX_GRACE_SECONDS:
        raise BadUserInput(f"gracePeriodSeconds must be between 0 and {MAX_GRACE_SECONDS}", field="gracePeriodSeconds")
    db = await ctx.db()
    key = await _key(db, org_id, key_id, lock=True)
    if key.revoked_at is not None:
        raise NotFound(API_KEY_NOT_FOUND)
    # a scope no longer in the vocabulary (a team permission since removed) grants nothing, so it is not
    # handed out again by rotating
    _check_within(
        principal,
        frozenset(s for s in key.scopes if is_permission(s)),
        "You cannot rotate a key with scopes you do not hold.",
    )
    holder = await _acting_user(ctx, db, org_id)
    if holder != key.held_by and grace_period_seconds > 0:
        raise BadUserInput(
            "Rotating a key held by someone else ends its current secret at once: gracePeriodSeconds must be 0.",
            field="gracePeriodSeconds",
        )
    previous_holder = key.held_by
    now = ctx.services.now()
    secret = new_secret(key.env, key.prefix)
    if grace_period_seconds > 0:
        key.previous_secret_hash = key.secret_hash
        key.previous_expires_at = now + timedelta(seconds=grace_period_seconds)
    else:
        key.previous_secret_hash = None
        key.previous_expires_at = None
    key.secret_hash = hash_secret(ctx.services.api_key_pepper, parse(secret).secret)
    key.held_by = holder
    # the new secret lives no longer than the organization's apiKeyMaxLifetimeDays
    expires_before = key.expires_at
    key.expires_at = capped_key_expiry(await load_policy(db, org_id), key.expires_at, now)
    db.add(key)
    await db.flush()
    announce_after_commit(ctx, [apikey_key(key.id)])
    details: dict[str, object] = {"prefix": key.prefix, "gracePeriodSeconds": grace_period_seconds}
    details["changes"] = changes(
        {"heldBy": previous_holder, "expiresAt": expires_before}, {"heldBy": holder, "expiresAt": key.expires_at}
    )
    ctx.audit(AuditAction.APIKEY_ROTATED, resource_type="api_key", resource_id=key.id, details=details)
    return IssuedKey(key, secret)


async def revoke_api_key(ctx: RequestContext, key_id: str) -> ApiKey:
    org_id = tenant_of(ctx.principal)
    db = await ctx.db()
    key = await _key(db, org_id, key_id, lock=True)
    if key.revoked_at is None:
        key.revoked_at = ctx.services.now()
        key.previous_secret_hash = None
        key.previous_expires_at = None
        db.add(key)
        await db.flush()
    announce_after_commit(ctx, [apikey_key(key.id)])
    ctx.audit(AuditAction.APIKEY_REVOKED, resource_type="api_key", resource_id=key.id, details={"prefix": key.prefix})
    return key


async def revoke_keys_held_by(db: AsyncSession, organization_id: str, user_id: str, now: datetime) -> list[ApiKey]:
    """Revoke every key of the organization that `user_id` holds and return them (the caller announces
    and audits them: `end_held_keys` does both)."""
    rows = await db.execute(
        tenant_select(ApiKey, organization_id)
        .where(col(ApiKey.held_by) == user_id, col(ApiKey.revoked_at).is_(None))
        .order_by(col(ApiKey.created_at), col(ApiKey.id))
        .with_for_update()
    )
    keys = list(rows.scalars().all())
    for key in keys:
        key.revoked_at = now
        key.previous_secret_hash = None
        key.previous_expires_at = None
        db.add(key)
    if keys:
        await db.flush()
    return keys


async def end_held_keys(ctx: RequestContext, organization_id: str, user_id: str, *, reason: str) -> list[ApiKey]:
    """Revoke the keys a member holds in the organization, in the request's unit of work: each is
    audited as `apikey_revoked` with `reason`, and announced to every process once committed."""
    keys = await revoke_keys_held_by(await ctx.db(), organization_id, user_id, ctx.services.now())
    if keys:
        announce_after_commit(ctx, [apikey_key(k.id) for k in keys])
    for key in keys:
        ctx.audit(
            AuditAction.APIKEY_REVOKED,
            organization_id=organization_id,
            resource_type="api_key",
            resource_id=key.id,
            details={"prefix": key.prefix, "heldBy": user_id, "reason": reason},
        )
    return keys
