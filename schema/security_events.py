"""Security events and their webhooks in the schema: `securityEvents`, acknowledging and resolving an
event, `createWebhook` / `deleteWebhook`, and `Organization.webhooks` with their recent deliveries."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from enum import Enum

import strawberry
from strawberry.scalars import JSON

from authz import Permission
from identity.security_events import SecurityEventKind, Severity
from identity.webhooks import message_type
from resolvers import security_events as service
from resolvers import webhooks as webhooks_service
from resolvers.security_events import EventFilter
from resolvers.webhooks import NewWebhook
from schema.context import Info
from schema.directives import ListSize, list_size, requires_scopes
from schema.pagination import Connection, Edge, PageInfo
from store.security import SecurityEvent as SecurityEventRow
from store.security import Webhook as WebhookRow
from store.security import WebhookDelivery as WebhookDeliveryRow

strawberry.enum(SecurityEventKind, name="SecurityEventKind")
strawberry.enum(Severity, name="SecurityEventSeverity")
KIND_VALUES = frozenset(k.value for k in SecurityEventKind)


@strawberry.enum(name="SecurityEventStatus")
class SecurityEventStatus(Enum):
    OPEN = "open"
    ACKNOWLEDGED = "acknowledged"
    RESOLVED = "resolved"


@strawberry.enum(name="WebhookDeliveryStatus")
class WebhookDeliveryStatus(Enum):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


@strawberry.type(name="SecurityEvent")
class SecurityEvent:
    id: strawberry.ID
    kind: SecurityEventKind
    severity: Severity
    status: SecurityEventStatus
    summary: str
    actor_id: str | None = strawberry.field(description="Who caused it: a user id, or the operator's name.")
    subject_id: str | None = strawberry.field(description="What it is about: a user, an API key, a webhook...")
    client_ip: str | None
    request_id: str | None
    details: JSON
    created_at: datetime
    acknowledged_at: datetime | None
    acknowledged_by: strawberry.ID | None
    resolved_at: datetime | None
    resolved_by: strawberry.ID | None
    note: str | None = strawberry.field(description="The note given with the latest step (acknowledge or resolve).")

    @classmethod
    def from_row(cls, e: SecurityEventRow) -> SecurityEvent:
        return cls(
            id=strawberry.ID(e.id),
            kind=SecurityEventKind(e.kind),
            severity=Severity(e.severity),
            status=SecurityEventStatus(e.status),
            summary=e.summary,
            actor_id=e.actor_id,
            subject_id=e.subject_id,
            client_ip=e.client_ip,
            request_id=e.request_id,
            details=e.details,  # type: ignore[arg-type]
            created_at=e.created_at,
            acknowledged_at=e.acknowledged_at,
            acknowledged_by=strawberry.ID(e.acknowledged_by) if e.acknowledged_by else None,
            resolved_at=e.resolved_at,
            resolved_by=strawberry.ID(e.resolved_by) if e.resolved_by else None,
            note=e.note,
        )


@strawberry.type(name="SecurityEventEdge")
class SecurityEventEdge(Edge[SecurityEvent]):
    pass


@strawberry.type(name="SecurityEventConnection")
class SecurityEventConnection(Connection[SecurityEvent]):
    edges: Sequence[SecurityEventEdge]


@strawberry.input(name="SecurityEventFilter")
class SecurityEventFilter:
    kind: SecurityEventKind | None = None
    severity: Severity | None = None
    status: SecurityEventStatus | None = None
    since: datetime | None = strawberry.field(default=None, description="Events at or after this time.")
    until: datetime | None = strawberry.field(default=None, description="Events before this time.")


@strawberry.type(name="WebhookDelivery")
class WebhookDelivery:
    id: strawberry.ID = strawberry.field(description="The `webhook-id` header of every attempt.")
    event_id: strawberry.ID | None
    event_type: str = strawberry.field(description="The message's `type`, like `security_event.account_locked`.")
    status: WebhookDeliveryStatus
    attempts: int
    last_status_code: int | None
    last_error: str | None
    created_at: datetime
    next_attempt_at: datetime | None = strawberry.field(description="When the next attempt is due (pending only).")
    delivered_at: datetime | None

    @classmethod
    def from_row(cls, d: WebhookDeliveryRow) -> WebhookDelivery:
        return cls(
            id=strawberry.ID(d.id),
            event_id=strawberry.ID(d.event_id) if d.event_id else None,
            event_type=message_type(d.event_kind),
            status=WebhookDeliveryStatus(d.status),
            attempts=d.attempts,
            last_status_code=d.last_status_code,
            last_error=d.last_error,
            created_at=d.created_at,
            next_attempt_at=d.next_attempt_at if d.status == "pending" else None,
            delivered_at=d.delivered_at,
        )


@strawberry.type(name="Webhook")
class Webhook:
    id: strawberry.ID
    url: str
    description: str | None
    events: list[SecurityEventKind]
    enabled: bool = strawberry.field(description="False once disabled after repeated failed deliveries.")
    created_at: datetime
    disabled_at: datetime | None
    row: strawberry.Private[WebhookRow]

    @classmethod
    def from_row(cls, w: WebhookRow) -> Webhook:
        return cls(
            id=strawberry.ID(w.id),
            url=w.url,
            description=w.description,
            events=[SecurityEventKind(k) for k in w.event_kinds if k in KIND_VALUES],
            enabled=w.disabled_at is None,
            created_at=w.created_at,
            disabled_at=w.disabled_at,
            row=w,
        )

    @strawberry.field(
        description="The latest deliveries, newest first; `first` is 1 to 50.",
        # reached only through `Organization.webhooks`, which requires security:read
        directives=[ListSize(slicing_arguments=["first"], assumed_size=10)],
    )
    async def deliveries(self, info: Info, first: int | None = 10) -> list[WebhookDelivery]:
        rows = await webhooks_service.recent_deliveries(info.context, self.row, 10 if first is None else first)
        return [WebhookDelivery.from_row(d) for d in rows]


@strawberry.type(name="WebhookCreated")
class WebhookCreated:
    webhook: Webhook
    secret: str = strawberry.field(
        description="The signing secret (`whsec_...`) for the receiver's Standard Webhooks verifier: shown here once."
    )


@strawberry.input(name="WebhookInput")
class WebhookInput:
    url: str = strawberry.field(description="Where deliveries are POSTed: https, on a public host.")
    events: list[SecurityEventKind] = strawberry.field(description="The event kinds sent to it (at least one).")
    description: str | None = None


@strawberry.type
class SecurityEventQuery:
    @strawberry.field(
        description="The security events of the caller's organization, newest first; `first` is 1 to 200.",
        **list_size(
            requires_scopes(Permission.SECURITY_READ),
            slicing_arguments=["first"],
            assumed_size=50,
            sized_fields=["edges"],
        ),
    )
    async def security_events(
        self, info: Info, filter: SecurityEventFilter | None = None, first: int | None = 50, after: str | None = None
    ) -> SecurityEventConnection:
        f = None
        if filter is not None:
            f = EventFilter(
                kind=filter.kind.value if filter.kind is not None else None,
                severity=filter.severity.value if filter.severity is not None else None,
                status=filter.status.value if filter.status is not None else None,
                since=filter.since,
                until=filter.until,
            )
        page = await service.list_events(info.context, f, first, after)
        return SecurityEventConnection(
            edges=[SecurityEventEdge(cursor=e.cursor, node=SecurityEvent.from_row(e.node)) for e in page.edges],
            page_info=PageInfo.of(page),
        )


@strawberry.type
class SecurityEventMutation:
    @strawberry.mutation(
        description="Acknowledge an open event, with a note; who and when are recorded.",
        **requires_scopes(Permission.SECURITY_MANAGE),
    )
    async def acknowledge_security_event(self, info: Info, id: strawberry.ID, note: str | None = None) -> SecurityEvent:
        return SecurityEvent.from_row(await service.acknowledge_event(info.context, str(id), note))

    @strawberry.mutation(
        description="Resolve an open or acknowledged event, with a note; who and when are recorded. "
        "Resolving a resolved event is a CONFLICT.",
        **requires_scopes(Permission.SECURITY_MANAGE),
    )
    async def resolve_security_event(self, info: Info, id: strawberry.ID, note: str | None = None) -> SecurityEvent:
        return SecurityEvent.from_row(await service.resolve_event(info.context, str(id), note))

    @strawberry.mutation(
        description="Subscribe a URL to security events; the signing secret is in the answer, once.",
        **requires_scopes(Permission.SECURITY_MANAGE),
    )
    async def create_webhook(self, info: Info, input: WebhookInput) -> WebhookCreated:
        new = NewWebhook(url=input.url, events=[k.value for k in input.events], description=input.description)
        created = await webhooks_service.create_webhook(info.context, new)
        return WebhookCreated(webhook=Webhook.from_row(created.webhook), secret=created.secret)

    @strawberry.mutation(
        description="Delete a webhook and its delivery log.", **requires_scopes(Permission.SECURITY_MANAGE)
    )
    async def delete_webhook(self, info: Info, id: strawberry.ID) -> bool:
        return await webhooks_service.delete_webhook(info.context, str(id))
