"""Security events of the caller's organization: reading them, acknowledging and resolving them, and the
events this layer causes (a privileged role granted, an API key without expiry, two-factor authentication
disabled).

Events are written by `identity.security_events.record_security_event` in the transaction of their cause;
each has a status that goes `open` -> `acknowledged` -> `resolved` (or straight to `resolved`), each step
recording who took it, when, and the note given with it (`note` keeps the latest; every step's note is
also in the audit log). A step taken twice (acknowledging an acknowledged or resolved event, resolving a
resolved one) is a CONFLICT: the first person's record is never overwritten. Pages are newest first,
keyset on (created_at, id), served by the index on (organization_id, created_at).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import and_, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from authz import BuiltinRole, PrincipalKind
from authz.errors import BadUserInput, Conflict, NotFound
from identity.security_events import SecurityEventKind, Severity, record_security_event
from resolvers.common import Page, PageEdge, tenant_of
from resolvers.deps import RequestContext
from resolvers.times import given_time
from store.audit import AuditAction
from store.cursors import CursorError, decode_position, encode_position
from store.models import ApiKey, Membership
from store.scoping import tenant_filter, tenant_select
from store.security import SecurityEvent

EVENT_NOT_FOUND = "Security event not found."
CURSOR_VERSION = "se1"
MAX_PAGE_SIZE = 200
MAX_NOTE_LENGTH = 2000
OPEN, ACKNOWLEDGED, RESOLVED = "open", "acknowledged", "resolved"
STATUSES = (OPEN, ACKNOWLEDGED, RESOLVED)
HOW = {"role_change": "by a role change", "invitation": "who accepted an invitation"}
PRIVILEGED_ROLES = {BuiltinRole.OWNER.value: Severity.HIGH, BuiltinRole.ADMIN.value: Severity.MEDIUM}


@dataclass(frozen=True, slots=True)
class EventFilter:
    kind: str | None = None
    severity: str | None = None
    status: str | None = None
    since: datetime | None = None
    until: datetime | None = None


EventPage = Page[SecurityEvent]


def encode_cursor(e: SecurityEvent) -> str:
    return encode_position(CURSOR_VERSION, e.created_at, e.id)


async def list_events(
    ctx: RequestContext, f: EventFilter | None = None, first: int | None = 50, after: str | None = None
) -> EventPage:
    """A page of the caller's organization's events, newest first."""
    org_id = tenant_of(ctx.principal)
    f = f or EventFilter()
    size = 50 if first is None else first
    if not 1 <= size <= MAX_PAGE_SIZE:
        raise BadUserInput(f"first must be between 1 and {MAX_PAGE_SIZE}", field="first")
    stmt = tenant_select(SecurityEvent, org_id)
    if f.kind is not None:
        stmt = stmt.where(col(SecurityEvent.kind) == f.kind)
    if f.severity is not None:
        stmt = stmt.where(col(SecurityEvent.severity) == f.severity)
    if f.status is not None:
        stmt = stmt.where(col(SecurityEvent.status) == f.status)
    since = given_time(f.since) if f.since is not None else None
    until = given_time(f.until) if f.until is not None else None
    if since is not None and until is not None and since >= until:
        raise BadUserInput("filter.since must be before filter.until", field="filter.since")
    if since is not None:
        stmt = stmt.where(col(SecurityEvent.created_at) >= since)
    if until is not None:
        stmt = stmt.where(col(SecurityEvent.created_at) < until)
    if after is not None:
        try:
            at, ident = decode_position(after, CURSOR_VERSION)
        except CursorError:
            raise BadUserInput("after is not a valid cursor", field="after") from None
        stmt = stmt.where(
            or_(
                col(SecurityEvent.created_at) < at,
                and_(col(SecurityEvent.created_at) == at, col(SecurityEvent.id) < ident),
            )
        )
    stmt = stmt.order_by(col(SecurityEvent.created_at).desc(), col(SecurityEvent.id).desc()).limit(size + 1)
    rows = list((await (await ctx.db()).execute(stmt)).scalars().all())
    edges = [PageEdge(encode_cursor(e), e) for e in rows[:size]]
    return Page(edges, len(rows) > size, edges[-1].cursor if edges else None)


def _note(note: str | None) -> str | None:
    if note is None:
        return None
    note = note.strip()
    if len(note) > MAX_NOTE_LENGTH or "\x00" in note:
        raise BadUserInput(f"note is at most {MAX_NOTE_LENGTH} characters", field="note")
    return note or None


async def acting_user(ctx: RequestContext, db: AsyncSession, organization_id: str) -> str | None:
    """The user recorded as having done something (a column that names a user): the signed-in user, the
    holder of the API key used, or none for the operator's command line."""
    principal = ctx.principal
    if ctx.is_operator:
        return None
    if principal.kind is PrincipalKind.API_KEY:
        stmt = select(col(ApiKey.held_by)).where(
            col(ApiKey.organization_id) == organization_id, col(ApiKey.id) == principal.subject_id
        )
        held_by: str | None = (await db.execute(stmt)).scalar_one_or_none()
        return held_by
    return principal.subject_id


async def _step(ctx: RequestContext, event_id: str, note: str | None, *, resolve: bool) -> SecurityEvent:
    org_id = tenant_of(ctx.principal)
    text = _note(note)
    if not event_id or len(event_id) > 36:
        raise NotFound(EVENT_NOT_FOUND)
    db = await ctx.db()
    event = (
        await db.execute(tenant_select(SecurityEvent, org_id).where(col(SecurityEvent.id) == event_id))
    ).scalar_one_or_none()
    if event is None:
        raise NotFound(EVENT_NOT_FOUND)
    now = ctx.services.now()
    who = await acting_user(ctx, db, org_id)
    if resolve:
        values: dict[str, object] = {"status": RESOLVED, "resolved_at": now, "resolved_by": who}
        allowed: tuple[str, ...] = (OPEN, ACKNOWLEDGED)
    else:
        values = {"status": ACKNOWLEDGED, "acknowledged_at": now, "acknowledged_by": who}
        allowed = (OPEN,)
    if text is not None:
        values["note"] = text
    # one conditional UPDATE: of two people taking the same step at once, exactly one succeeds
    result = await db.execute(
        update(SecurityEvent)
        .where(
            tenant_filter(SecurityEvent, org_id),
            col(SecurityEvent.id) == event_id,
            col(SecurityEvent.status).in_(allowed),
        )
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    if getattr(result, "rowcount", 0) != 1:
        raise Conflict(f"The event is {event.status} already.")
    await db.refresh(event)
    ctx.audit(
        AuditAction.SECURITY_EVENT_RESOLVED if resolve else AuditAction.SECURITY_EVENT_ACKNOWLEDGED,
        resource_type="security_event",
        resource_id=event.id,
        details={"kind": event.kind, "note": text},
    )
    return event


async def acknowledge_event(ctx: RequestContext, event_id: str, note: str | None = None) -> SecurityEvent:
    return await _step(ctx, event_id, note, resolve=False)


async def resolve_event(ctx: RequestContext, event_id: str, note: str | None = None) -> SecurityEvent:
    return await _step(ctx, event_id, note, resolve=True)


# -- events this layer causes -------------------------------------------------------------------------


def _actor(ctx: RequestContext) -> str | None:
    """The user (or API key) who caused it; the operator's name, shortened to the column, for a command."""
    return (ctx.operator or "")[:36] if ctx.is_operator else ctx.principal.subject_id


async def role_granted(
    ctx: RequestContext, organization_id: str, user_id: str, role: str, *, how: str, granted_by: str | None = None
) -> None:
    """A member now holds the owner or admin role (`how`: `role_change` or `invitation`); `granted_by`: who
    granted it, when not the caller (the inviter of an accepted invitation)."""
    severity = PRIVILEGED_ROLES.get(role)
    if severity is None:
        return
    await record_security_event(
        await ctx.db(),
        organization_id=organization_id,
        kind=SecurityEventKind.PRIVILEGED_ROLE_GRANTED,
        severity=severity,
        summary=f"The {role} role was granted to a member {HOW.get(how, how)}",
        actor_id=granted_by or _actor(ctx),
        subject_id=user_id,
        client_ip=ctx.principal.client_ip,
        request_id=ctx.principal.request_id,
        details={"role": role, "how": how},
    )


async def api_key_without_expiry(ctx: RequestContext, organization_id: str, key_id: str, name: str) -> None:
    await record_security_event(
        await ctx.db(),
        organization_id=organization_id,
        kind=SecurityEventKind.API_KEY_WITHOUT_EXPIRY,
        severity=Severity.MEDIUM,
        summary=f"API key {name!r} was created without an expiry date",
        actor_id=_actor(ctx),
        subject_id=key_id,
        client_ip=ctx.principal.client_ip,
        request_id=ctx.principal.request_id,
        details={"apiKeyId": key_id, "name": name},
    )


async def mfa_disabled(ctx: RequestContext, user_id: str) -> None:
    """Recorded in every organization the user belongs to: each relies on that second factor."""
    db = await ctx.db()
    # tenant-scope: the user's own memberships, one event in each organization they belong to
    orgs = (
        await db.execute(select(col(Membership.organization_id)).where(col(Membership.user_id) == user_id))
    ).scalars()
    for org_id in sorted(set(orgs)):
        await record_security_event(
            db,
            organization_id=org_id,
            kind=SecurityEventKind.MFA_DISABLED,
            severity=Severity.MEDIUM,
            summary="A member turned two-factor authentication off",
            actor_id=_actor(ctx),
            subject_id=user_id,
            client_ip=ctx.principal.client_ip,
            request_id=ctx.principal.request_id,
            details={},
        )
