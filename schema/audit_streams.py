"""Audit streams in the schema: `Organization.auditStreams`, `createAuditStream`, `updateAuditStream`,
`enableAuditStream`, `disableAuditStream` and `deleteAuditStream` (docs/audit.md, "Streaming")."""

from __future__ import annotations

from datetime import datetime
from enum import Enum

import strawberry

from authz import Permission
from identity.audit_streams import StreamKind
from resolvers import audit_streams as service
from resolvers.audit_streams import NewStream
from schema.context import Info
from schema.directives import requires_scopes
from store.audit_streams import AuditStream as AuditStreamRow


@strawberry.enum(name="AuditStreamKind")
class AuditStreamKind(Enum):
    WEBHOOK = "webhook"
    SPLUNK_HEC = "splunk_hec"
    JSON_LINES = "json_lines"
    SYSLOG = "syslog"


@strawberry.enum(name="AuditStreamState")
class AuditStreamState(Enum):
    ACTIVE = "active"
    FAILING = "failing"
    DISABLED = "disabled"


@strawberry.enum(name="AuditStreamStart", description="Where a new stream begins.")
class AuditStreamStart(Enum):
    OLDEST = strawberry.enum_value("oldest", description="The oldest entry still stored (the default).")
    HEAD = strawberry.enum_value("head", description="After the chain's current last entry.")


@strawberry.type(name="AuditStream", description="A destination of the organization's audit chain.")
class AuditStream:
    id: strawberry.ID
    kind: AuditStreamKind
    url: str = strawberry.field(description="Where entries go; its signing secret or token is never shown.")
    state: AuditStreamState
    delivered_sequence: int = strawberry.field(description="The last sequence the destination accepted.")
    last_delivered_at: datetime | None
    consecutive_failures: int
    last_error: str | None
    created_at: datetime
    disabled_at: datetime | None

    @classmethod
    def from_row(cls, s: AuditStreamRow) -> AuditStream:
        state = (
            AuditStreamState.DISABLED
            if s.disabled_at is not None
            else AuditStreamState.FAILING
            if s.consecutive_failures > 0
            else AuditStreamState.ACTIVE
        )
        return cls(
            id=strawberry.ID(s.id),
            kind=AuditStreamKind(s.kind),
            url=s.url,
            state=state,
            delivered_sequence=s.delivered_sequence,
            last_delivered_at=s.last_delivered_at,
            consecutive_failures=s.consecutive_failures,
            last_error=s.last_error,
            created_at=s.created_at,
            disabled_at=s.disabled_at,
        )


@strawberry.type(name="AuditStreamCreated")
class AuditStreamCreated:
    stream: AuditStream
    secret: str | None = strawberry.field(
        description="A WEBHOOK stream's signing secret (`whsec_...`) for the receiver's Standard Webhooks "
        "verifier: shown here once. Null for the other kinds."
    )


@strawberry.input(name="AuditStreamInput")
class AuditStreamInput:
    kind: AuditStreamKind
    url: str = strawberry.field(
        description="https://... for WEBHOOK, JSON_LINES and SPLUNK_HEC (the collector's base URL); "
        "syslog+tls://host:port (or syslog://host:port outside prod) for SYSLOG."
    )
    token: str | None = strawberry.field(default=None, description="SPLUNK_HEC only: the HEC token.")
    start: AuditStreamStart = AuditStreamStart.OLDEST


@strawberry.input(name="AuditStreamUpdateInput")
class AuditStreamUpdateInput:
    url: str | None = None
    token: str | None = strawberry.field(default=None, description="SPLUNK_HEC only: a new HEC token.")


@strawberry.type
class AuditStreamMutation:
    @strawberry.mutation(
        description="Stream the organization's audit chain to a destination, from the oldest stored entry "
        "(or its head) on.",
        **requires_scopes(Permission.SECURITY_MANAGE),
    )
    async def create_audit_stream(self, info: Info, input: AuditStreamInput) -> AuditStreamCreated:
        new = NewStream(
            kind=StreamKind(input.kind.value),
            url=input.url,
            token=input.token,
            from_head=input.start is AuditStreamStart.HEAD,
        )
        created = await service.create_stream(info.context, new)
        return AuditStreamCreated(stream=AuditStream.from_row(created.stream), secret=created.secret)

    @strawberry.mutation(
        description="Change a stream's URL or token; it continues from its cursor, its failures forgotten.",
        **requires_scopes(Permission.SECURITY_MANAGE),
    )
    async def update_audit_stream(self, info: Info, id: strawberry.ID, input: AuditStreamUpdateInput) -> AuditStream:
        return AuditStream.from_row(await service.update_stream(info.context, str(id), input.url, input.token))

    @strawberry.mutation(
        description="Enable a disabled stream: it resumes from its cursor.",
        **requires_scopes(Permission.SECURITY_MANAGE),
    )
    async def enable_audit_stream(self, info: Info, id: strawberry.ID) -> AuditStream:
        return AuditStream.from_row(await service.set_enabled(info.context, str(id), True))

    @strawberry.mutation(
        description="Stop sending to a stream (it then no longer holds back pruning).",
        **requires_scopes(Permission.SECURITY_MANAGE),
    )
    async def disable_audit_stream(self, info: Info, id: strawberry.ID) -> AuditStream:
        return AuditStream.from_row(await service.set_enabled(info.context, str(id), False))

    @strawberry.mutation(description="Delete a stream.", **requires_scopes(Permission.SECURITY_MANAGE))
    async def delete_audit_stream(self, info: Info, id: strawberry.ID) -> bool:
        return await service.delete_stream(info.context, str(id))
