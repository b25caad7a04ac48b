"""Audit streams of the caller's organization: creating (a webhook's signing secret shown once), changing,
enabling, disabling and deleting them, and listing them with their delivery state (docs/audit.md,
"Streaming"). The sender is gateway/audit_streams.py.

A destination is checked when it is created or changed with the same guard as webhooks (`identity.outbound`,
C-132): in prod only https and syslog+tls, and never an address of the gateway's own network unless the
operator's allow-list names it; the sender checks it again on every attempt.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from authz.errors import BadUserInput, Conflict, NotFound
from identity.audit_streams import DestinationError, StreamKind, check_url, destination_url
from identity.outbound import OutboundRefused
from identity.tokens import KeyRing, sign_document
from identity.webhooks import WebhookPolicy, new_secret
from resolvers.audit import CHECKPOINT_FORMAT, CheckpointError, signed_heads
from resolvers.common import tenant_of
from resolvers.deps import RequestContext
from resolvers.security_events import acting_user
from store.audit import AuditAction, iso
from store.audit_streams import AuditStream
from store.models import AuditChainHead, AuditEntry
from store.retention import AuditChainStart, AuditCheckpoint
from store.scoping import tenant_filter, tenant_select

STREAM_NOT_FOUND = "Audit stream not found."
MAX_STREAMS = 5
MAX_TOKEN_LENGTH = 512


@dataclass(frozen=True, slots=True)
class NewStream:
    kind: StreamKind
    url: str
    token: str | None = None
    from_head: bool = False


@dataclass(frozen=True, slots=True)
class CreatedStream:
    stream: AuditStream
    secret: str | None


def _policy(ctx: RequestContext) -> WebhookPolicy:
    policy: WebhookPolicy | None = ctx.services.webhooks
    if policy is None:
        raise RuntimeError("no outbound policy: Services.webhooks is None (gateway.app.build_services makes one)")
    return policy


async def _destination(policy: WebhookPolicy, kind: StreamKind, raw: str) -> str:
    try:
        url = destination_url(kind, raw)
    except DestinationError as exc:
        raise BadUserInput(str(exc), field="url") from None
    secure = url.startswith(("https://", "syslog+tls://"))
    try:
        if policy.outbound.require_https and not secure:
            raise OutboundRefused("outbound_scheme_refused")
        await policy.outbound.check_url(check_url(url))
    except OutboundRefused:
        # one answer for every refusal: a caller learns nothing of the gateway's network
        raise BadUserInput(
            "url is not an address the gateway may send to (https or syslog+tls, and a public host)", field="url"
        ) from None
    return url


def _token(kind: StreamKind, token: str | None) -> str | None:
    token = (token or "").strip() or None
    if kind is StreamKind.SPLUNK_HEC:
        if token is None or len(token) > MAX_TOKEN_LENGTH or any(not c.isprintable() or c.isspace() for c in token):
            raise BadUserInput("a SPLUNK_HEC stream needs its HEC token (printable, no spaces)", field="token")
        return token
    if token is not None:
        raise BadUserInput(f"a {kind.name} stream takes no token", field="token")
    return None


async def _start(db: AsyncSession, chain: str, from_head: bool) -> int:
    """The cursor a new stream starts after: the chain's head, or just before its oldest stored entry."""
    if from_head:
        head = (
            await db.execute(select(col(AuditChainHead.sequence)).where(col(AuditChainHead.chain) == chain))
        ).scalar()
        return int(head or 0)
    oldest = (
        await db.execute(select(func.min(col(AuditEntry.sequence))).where(col(AuditEntry.chain) == chain))
    ).scalar()
    if oldest is not None:
        return int(oldest) - 1
    start = (
        await db.execute(select(col(AuditChainStart.sequence)).where(col(AuditChainStart.chain) == chain))
    ).scalar()
    return int(start or 0)


async def create_stream(ctx: RequestContext, new: NewStream) -> CreatedStream:
    org_id = tenant_of(ctx.principal)
    policy = _policy(ctx)
    token = _token(new.kind, new.token)
    url = await _destination(policy, new.kind, new.url)
    db = await ctx.db()
    count = (await db.execute(select(func.count()).where(tenant_filter(AuditStream, org_id)))).scalar_one()
    if count >= MAX_STREAMS:
        raise Conflict(f"An organization has at most {MAX_STREAMS} audit streams.")
    secret = new_secret() if new.kind is StreamKind.WEBHOOK else token
    now = ctx.services.now()
    row = AuditStream(
        organization_id=org_id,
        kind=new.kind.value,
        url=url,
        secret_encrypted=policy.box.encrypt(secret) if secret is not None else None,
        delivered_sequence=await _start(db, org_id, new.from_head),
        next_attempt_at=now,
        created_by=await acting_user(ctx, db, org_id),
        created_at=now,
    )
    db.add(row)
    await db.flush()
    ctx.audit(
        AuditAction.AUDIT_STREAM_CREATED,
        resource_type="audit_stream",
        resource_id=row.id,
        details={"kind": row.kind, "url": url, "startsAfter": row.delivered_sequence},
    )
    return CreatedStream(row, secret if new.kind is StreamKind.WEBHOOK else None)


async def _stream(db: AsyncSession, org_id: str, stream_id: str) -> AuditStream:
    if not stream_id or len(stream_id) > 36:
        raise NotFound(STREAM_NOT_FOUND)
    row = (
        await db.execute(tenant_select(AuditStream, org_id).where(col(AuditStream.id) == stream_id).with_for_update())
    ).scalar_one_or_none()
    if row is None:
        raise NotFound(STREAM_NOT_FOUND)
    return row


async def list_streams(ctx: RequestContext, organization_id: str) -> list[AuditStream]:
    if organization_id != tenant_of(ctx.principal):
        return []
    db = await ctx.db()
    stmt = tenant_select(AuditStream, organization_id).order_by(col(AuditStream.created_at), col(AuditStream.id))
    return list((await db.execute(stmt)).scalars().all())


async def update_stream(ctx: RequestContext, stream_id: str, url: str | None, token: str | None) -> AuditStream:
    """A new URL and/or token; the cursor stays, so the new destination continues where the old one stopped."""
    org_id = tenant_of(ctx.principal)
    db = await ctx.db()
    row = await _stream(db, org_id, stream_id)
    kind = StreamKind(row.kind)
    changed: list[str] = []
    if url is not None:
        row.url = await _destination(_policy(ctx), kind, url)
        changed.append("url")
    if token is not None:
        row.secret_encrypted = _policy(ctx).box.encrypt(_token(kind, token) or "")
        changed.append("token")
    if not changed:
        raise BadUserInput("nothing to change: give url or token", field="input")
    row.consecutive_failures, row.last_error, row.next_attempt_at = 0, None, ctx.services.now()
    db.add(row)
    await db.flush()
    ctx.audit(
        AuditAction.AUDIT_STREAM_UPDATED,
        resource_type="audit_stream",
        resource_id=row.id,
        details={"changed": changed, "url": row.url},
    )
    return row


async def set_enabled(ctx: RequestContext, stream_id: str, enabled: bool) -> AuditStream:
    """Enabling resumes from the stream's cursor at once, its failures forgotten; disabling stops sending
    (and stops holding back the pruning of entries it has not delivered)."""
    org_id = tenant_of(ctx.principal)
    db = await ctx.db()
    row = await _stream(db, org_id, stream_id)
    now = ctx.services.now()
    if enabled:
        row.disabled_at, row.consecutive_failures, row.last_error, row.next_attempt_at = None, 0, None, now
    elif row.disabled_at is None:
        row.disabled_at = now
    db.add(row)
    await db.flush()
    ctx.audit(
        AuditAction.AUDIT_STREAM_ENABLED if enabled else AuditAction.AUDIT_STREAM_DISABLED,
        resource_type="audit_stream",
        resource_id=row.id,
        details={"kind": row.kind, "url": row.url, "deliveredSequence": row.delivered_sequence},
    )
    return row


async def delete_stream(ctx: RequestContext, stream_id: str) -> bool:
    org_id = tenant_of(ctx.principal)
    db = await ctx.db()
    row = await _stream(db, org_id, stream_id)
    await db.execute(delete(AuditStream).where(tenant_filter(AuditStream, org_id), col(AuditStream.id) == row.id))
    ctx.audit(
        AuditAction.AUDIT_STREAM_DELETED,
        resource_type="audit_stream",
        resource_id=stream_id,
        details={"kind": row.kind, "url": row.url, "deliveredSequence": row.delivered_sequence},
    )
    return True


# --- for the sender and the pruning job --------------------------------------------------------------------


async def delivered_through(db: AsyncSession, chain: str) -> int | None:
    """The lowest cursor of the chain's enabled streams (None: no enabled stream)."""
    value = (
        await db.execute(
            select(func.min(col(AuditStream.delivered_sequence))).where(
                col(AuditStream.organization_id) == chain, col(AuditStream.disabled_at).is_(None)
            )
        )
    ).scalar()
    return None if value is None else int(value)


async def chain_checkpoint(db: AsyncSession, keys: KeyRing, chain: str) -> dict[str, object] | None:
    """The chain's head in the newest stored checkpoint whose signature verifies, signed again for this chain
    alone (the stored one holds every tenant's head): `{id, createdAt, chain, sequence, hash, signature}`."""
    stored = (
        await db.execute(select(AuditCheckpoint).order_by(col(AuditCheckpoint.created_at).desc()).limit(5))
    ).scalars()
    for point in stored:
        try:
            heads = signed_heads(keys, point.signature)
        except CheckpointError:
            continue
        for head in heads:
            if head.chain == chain and head.sequence > 0:
                document = {
                    "format": CHECKPOINT_FORMAT,
                    "createdAt": iso(point.created_at),
                    "heads": [{"chain": chain, "sequence": head.sequence, "hash": head.hash}],
                }
                return {
                    "id": point.id,
                    "createdAt": document["createdAt"],
                    "chain": chain,
                    "sequence": head.sequence,
                    "hash": head.hash,
                    "signature": sign_document(keys, document),
                }
        return None
    return None
