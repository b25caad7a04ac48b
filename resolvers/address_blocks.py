"""Address blocks: a tenant's own (`blockAddress`, `unblockAddress`, `Organization.blockedAddresses`), the
operator's platform-wide ones (`portcullis blocks add|list|remove`), and the automatic ones the gateway
makes on abuse signals (gateway/address_blocks.py).

Every change commits with its audit entry (a tenant's block in the tenant's chain, a platform block in the
platform's) and, for a tenant's block or an automatic block attributable to a tenant, a security event
`address_blocked`; once committed it is announced on the revocation bus (`blocks:changed`), which every
process hears and reloads its block list on (identity/address_blocks.py).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, or_
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col, select

from authz import Permission, Principal, anonymous
from authz.errors import AddressBlocked, BadUserInput, Conflict, Forbidden, NotFound
from identity.address_blocks import BLOCKED_MESSAGE, BLOCKS_KEY, IPNetwork, Ranges, address_key, normalized_network
from identity.lockout import email_key
from identity.security_events import SecurityEventKind, Severity, record_security_event
from resolvers.common import tenant_of
from resolvers.deps import RequestContext, Services
from resolvers.times import given_time
from store.audit import PLATFORM_CHAIN, ActorType, AuditAction
from store.security import AddressBlock

MAX_REASON_LENGTH = 500
MAX_CIDR_INPUT = 100
# a tenant's active blocks: what each process holds in memory for it
MAX_TENANT_BLOCKS = 1000
# the widest block: an IPv4 /8 (16 million addresses), an IPv6 /32 (a regional registry's allocation);
# `0.0.0.0/0` and `::/0` (everyone) are refused with them
MIN_PREFIX = {4: 8, 6: 32}
MANUAL, AUTOMATIC = "manual", "automatic"


def checked_cidr(raw: str) -> IPNetwork:
    """The block's range, normalized (host bits dropped, IPv4-mapped IPv6 as IPv4); BAD_USER_INPUT otherwise."""
    if len(raw) > MAX_CIDR_INPUT:
        raise BadUserInput("cidr is not an IP address or CIDR", field="cidr")
    try:
        net = normalized_network(raw)
    except ValueError:
        raise BadUserInput("cidr is not an IP address or CIDR", field="cidr") from None
    if net.prefixlen == 0:
        raise BadUserInput("a block of every address is refused", field="cidr")
    widest = MIN_PREFIX[net.version]
    if net.prefixlen < widest:
        raise BadUserInput(f"an IPv{net.version} block is at most a /{widest}", field="cidr")
    return net


def checked_reason(raw: str) -> str:
    reason = raw.strip()
    if not reason:
        raise BadUserInput("reason must not be empty", field="reason")
    if len(reason) > MAX_REASON_LENGTH:
        raise BadUserInput(f"reason must be at most {MAX_REASON_LENGTH} characters", field="reason")
    return reason


def checked_expiry(ctx: RequestContext, expires_at: datetime | None) -> datetime | None:
    if expires_at is None:
        return None
    expires = given_time(expires_at)
    if expires <= ctx.services.now():
        raise BadUserInput("expiresAt must be in the future", field="expiresAt")
    return expires


def _active(now: datetime) -> Any:
    return (
        col(AddressBlock.lifted_at).is_(None),
        or_(col(AddressBlock.expires_at).is_(None), col(AddressBlock.expires_at) > now),
    )


def _user(principal: Principal) -> str | None:
    return principal.subject_id if principal.kind.value == "user" else None


def announce_blocks(ctx: RequestContext) -> None:
    """After commit: every process (this one first, before the answer leaves) reloads its block list."""

    async def announce() -> None:
        await ctx.services.revocations.publish([BLOCKS_KEY])
        if ctx.services.address_blocks is not None:
            await ctx.services.address_blocks.reload()

    ctx.after_commit.append(announce)


def _details(row: AddressBlock) -> dict[str, Any]:
    return {
        "cidr": row.cidr,
        "source": row.source,
        "signal": row.signal,
        "expiresAt": row.expires_at.isoformat() if row.expires_at else None,
    }


async def block_address(ctx: RequestContext, cidr: str, reason: str, expires_at: datetime | None) -> AddressBlock:
    """`blockAddress`: a block of the caller's organization, applied to its credentials and sign-ins."""
    principal = ctx.principal
    org_id = tenant_of(principal)
    net = checked_cidr(cidr)
    text = checked_reason(reason)
    expires = checked_expiry(ctx, expires_at)
    own = address_key(principal.client_ip)
    if own is not None and own in Ranges([net]):
        raise BadUserInput("this block would include your own address; make it from another address", field="cidr")
    db = await ctx.db()
    now = ctx.services.now()
    active = (
        await db.execute(
            select(col(AddressBlock.cidr)).where(col(AddressBlock.organization_id) == org_id, *_active(now))
        )
    ).scalars()
    cidrs = list(active)
    if str(net) in cidrs:
        raise Conflict("This address range is already blocked.")
    if len(cidrs) >= MAX_TENANT_BLOCKS:
        raise BadUserInput(f"an organization has at most {MAX_TENANT_BLOCKS} active blocks", field="cidr")
    row = AddressBlock(
        organization_id=org_id,
        cidr=str(net),
        reason=text,
        source=MANUAL,
        created_by=_user(principal),
        created_at=now,
        expires_at=expires,
    )
    db.add(row)
    await db.flush()
    await record_security_event(
        db,
        organization_id=org_id,
        kind=SecurityEventKind.ADDRESS_BLOCKED,
        severity=Severity.MEDIUM,
        summary=f"{row.cidr} blocked for the organization's credentials and sign-ins",
        actor_id=principal.subject_id,
        client_ip=principal.client_ip,
        request_id=principal.request_id,
        details=_details(row),
    )
    ctx.audit(
        AuditAction.ADDRESS_BLOCKED,
        resource_type="address_block",
        resource_id=row.id,
        details={**_details(row), "reason": text},
    )
    announce_blocks(ctx)
    return row


async def _lift(ctx: RequestContext, db: AsyncSession, row: AddressBlock) -> bool:
    now = ctx.services.now()
    if row.lifted_at is not None or (row.expires_at is not None and row.expires_at <= now):
        ctx.audit(
            AuditAction.ADDRESS_UNBLOCKED,
            organization_id=row.organization_id or PLATFORM_CHAIN,
            resource_type="address_block",
            resource_id=row.id,
            details={**_details(row), "alreadyInactive": True},
        )
        return False
    row.lifted_at = now
    row.lifted_by = _user(ctx.principal)
    db.add(row)
    await db.flush()
    ctx.audit(
        AuditAction.ADDRESS_UNBLOCKED,
        organization_id=row.organization_id or PLATFORM_CHAIN,
        resource_type="address_block",
        resource_id=row.id,
        details=_details(row),
    )
    announce_blocks(ctx)
    return True


async def unblock_address(ctx: RequestContext, block_id: str) -> bool:
    """`unblockAddress`: lifts one of the organization's blocks; false when it was no longer active."""
    org_id = tenant_of(ctx.principal)
    db = await ctx.db()
    row = (
        await db.execute(
            select(AddressBlock).where(col(AddressBlock.id) == block_id, col(AddressBlock.organization_id) == org_id)
        )
    ).scalar_one_or_none()
    if row is None:
        raise NotFound("No such address block.")
    return await _lift(ctx, db, row)


async def blocked_addresses(ctx: RequestContext, organization_id: str) -> list[AddressBlock]:
    """`Organization.blockedAddresses`: the organization's active blocks, newest first."""
    if organization_id != tenant_of(ctx.principal):
        return []
    db = await ctx.db()
    rows = await db.execute(
        select(AddressBlock)
        .where(col(AddressBlock.organization_id) == organization_id, *_active(ctx.services.now()))
        .order_by(col(AddressBlock.created_at).desc(), col(AddressBlock.id))
    )
    return list(rows.scalars().all())


def refuse_blocked_sign_in(ctx: RequestContext, organization_id: str | None) -> None:
    """A sign-in into `organization_id` from an address it (or the platform) blocked: ADDRESS_BLOCKED, 403."""
    blocks = ctx.services.address_blocks
    if blocks is None:
        return
    scope = blocks.refuses(organization_id, ctx.principal.client_ip)
    if scope is None:
        return
    blocks.on_refused(scope)
    if ctx.response is not None:
        ctx.response.status_code = 403
    raise AddressBlocked(BLOCKED_MESSAGE)


async def count_failed_sign_in(ctx: RequestContext, email: str, organization_id: str | None) -> None:
    """A failed password sign-in, counted towards the address's abuse signal (failed sign-ins across accounts)."""
    blocks = ctx.services.address_blocks
    if blocks is not None and blocks.signals is not None:
        await blocks.signals.sign_in_failed(ctx.principal.client_ip, email_key(email), organization_id)


# the operator's platform-wide blocks


def _check_operator(ctx: RequestContext, permission: Permission) -> None:
    if permission not in ctx.principal.effective_permissions:
        raise Forbidden("Platform-wide blocks are the platform operator's.", requiredScopes=[[permission.value]])


async def block_platform(ctx: RequestContext, cidr: str, reason: str, expires_at: datetime | None) -> AddressBlock:
    """`portcullis blocks add`: a platform-wide block, refused before any other work on every request."""
    _check_operator(ctx, Permission.PLATFORM_ORGANIZATIONS_MANAGE)
    net = checked_cidr(cidr)
    text = checked_reason(reason)
    expires = checked_expiry(ctx, expires_at)
    db = await ctx.db()
    now = ctx.services.now()
    existing = (
        await db.execute(
            # tenant-scope: platform-wide blocks belong to no tenant
            select(col(AddressBlock.id)).where(
                col(AddressBlock.organization_id).is_(None), col(AddressBlock.cidr) == str(net), *_active(now)
            )
        )
    ).first()
    if existing is not None:
        raise Conflict(f"{net} is already blocked platform-wide ({existing[0]}).")
    row = AddressBlock(cidr=str(net), reason=text, source=MANUAL, created_at=now, expires_at=expires)
    db.add(row)
    await db.flush()
    ctx.audit(
        AuditAction.ADDRESS_BLOCKED,
        organization_id=PLATFORM_CHAIN,
        resource_type="address_block",
        resource_id=row.id,
        details={**_details(row), "reason": text},
    )
    announce_blocks(ctx)
    return row


async def unblock_platform(ctx: RequestContext, block_id: str) -> bool:
    """`portcullis blocks remove`: lifts any block (platform-wide, automatic, or a tenant's), audited in its
    own chain."""
    _check_operator(ctx, Permission.PLATFORM_ORGANIZATIONS_MANAGE)
    db = await ctx.db()
    # tenant-scope: the operator lifts a block of any tenant, or of none
    row = await db.get(AddressBlock, block_id)
    if row is None:
        raise NotFound("No such address block.")
    return await _lift(ctx, db, row)


async def platform_blocks(ctx: RequestContext, *, every_tenant: bool = False) -> list[AddressBlock]:
    """`portcullis blocks list`: the active platform-wide blocks (with `every_tenant`, the tenants' too)."""
    _check_operator(ctx, Permission.PLATFORM_ORGANIZATIONS_READ)
    db = await ctx.db()
    # tenant-scope: the operator's listing spans every tenant
    stmt = select(AddressBlock).where(*_active(ctx.services.now()))
    if not every_tenant:
        stmt = stmt.where(col(AddressBlock.organization_id).is_(None))
    return list((await db.execute(stmt.order_by(col(AddressBlock.created_at).desc()))).scalars().all())


# automatic blocks


async def block_automatically(
    services: Services,
    cidr: str,
    signal: str,
    *,
    durations: list[int],
    repeat_days: int,
    organization_id: str | None = None,
    details: dict[str, Any] | None = None,
) -> AddressBlock | None:
    """A platform-wide block of one offender (`cidr`: an address's /32, or an IPv6 /64) for an abuse signal,
    for longer each time it was blocked automatically within `repeat_days`; None when an automatic block of it
    is already active."""
    cidr = str(normalized_network(cidr))
    ctx = RequestContext(services, anonymous())
    async with ctx.unit_of_work():
        db = await ctx.db()
        now = services.now()
        # tenant-scope: automatic blocks are platform-wide, by address
        same = select(col(AddressBlock.id)).where(col(AddressBlock.cidr) == cidr, col(AddressBlock.source) == AUTOMATIC)
        if (await db.execute(same.where(*_active(now)))).first() is not None:
            return None
        earlier = (
            await db.execute(
                # tenant-scope: the address's earlier automatic blocks, whichever tenant they were for
                select(func.count())
                .select_from(AddressBlock)
                .where(
                    col(AddressBlock.cidr) == cidr,
                    col(AddressBlock.source) == AUTOMATIC,
                    col(AddressBlock.created_at) >= now - timedelta(days=repeat_days),
                )
            )
        ).scalar_one()
        seconds = durations[min(int(earlier), len(durations) - 1)]
        row = AddressBlock(
            cidr=cidr,
            reason=f"automatic: {signal}",
            source=AUTOMATIC,
            signal=signal,
            created_at=now,
            expires_at=now + timedelta(seconds=seconds),
        )
        db.add(row)
        await db.flush()
        described = {**_details(row), "seconds": seconds, "earlierBlocks": int(earlier), **(details or {})}
        ctx.audit(
            AuditAction.ADDRESS_BLOCKED,
            organization_id=PLATFORM_CHAIN,
            actor_type=ActorType.SYSTEM,
            resource_type="address_block",
            resource_id=row.id,
            details=described,
        )
        if organization_id is not None:
            await record_security_event(
                db,
                organization_id=organization_id,
                kind=SecurityEventKind.ADDRESS_BLOCKED,
                severity=Severity.HIGH,
                summary=f"{cidr} blocked automatically for {seconds // 60} minutes: {signal.replace('_', ' ')}",
                details=described,
            )
        announce_blocks(ctx)
    return row
