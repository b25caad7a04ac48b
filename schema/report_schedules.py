from __future__ import annotations

from datetime import datetime
from enum import Enum

import strawberry

from authz import Permission
from resolvers import report_schedules as service
from resolvers.report_schedules import ScheduleInput
from schema.context import Info
from schema.directives import requires_scopes
from schema.reports import ReportKind
from store.reporting import ReportSchedule as ReportScheduleRow
from store.reporting import emails_of, webhook_ids_of


@strawberry.enum
class ReportCadence(Enum):
    DAILY = "DAILY"
    WEEKLY = "WEEKLY"
    MONTHLY = "MONTHLY"


@strawberry.type(name="ReportSchedule")
class ReportSchedule:
    id: strawberry.ID
    kind: ReportKind
    cadence: ReportCadence
    time_zone: str = strawberry.field(description="IANA time zone in which the periods and the hour are read.")
    hour_of_day: int
    recipients: list[str] = strawberry.field(description="Members' emails the report's links are mailed to.")
    webhook_ids: list[strawberry.ID] = strawberry.field(
        description="The organization's webhooks sent a signed `report.ready` message with the links."
    )
    created_at: datetime
    next_run_at: datetime
    last_run_at: datetime | None

    @classmethod
    def from_row(cls, row: ReportScheduleRow) -> ReportSchedule:
        return cls(
            id=strawberry.ID(row.id),
            kind=ReportKind(row.kind),
            cadence=ReportCadence(row.cadence),
            time_zone=row.time_zone,
            hour_of_day=row.hour,
            recipients=emails_of(row),
            webhook_ids=[strawberry.ID(w) for w in webhook_ids_of(row)],
            created_at=row.created_at,
            next_run_at=row.next_run_at,
            last_run_at=row.last_run_at,
        )


@strawberry.input
class ReportScheduleInput:
    kind: ReportKind
    cadence: ReportCadence
    time_zone: str = strawberry.field(description="An IANA time zone name, such as Europe/Berlin or UTC.")
    recipients: list[str] = strawberry.field(
        default_factory=list,
        description="Up to 20 emails of members of the organization (at least one unless webhookIds names one).",
    )
    webhook_ids: list[strawberry.ID] = strawberry.field(
        default_factory=list, description="Up to 20 webhooks of the organization (see `createWebhook`)."
    )
    hour_of_day: int = strawberry.field(default=6, description="0 to 23, in the time zone.")


@strawberry.type
class ReportScheduleMutation:
    @strawberry.mutation(
        description=(
            "Generate a report on a cadence for the period that just ended, mailed to members and announced"
            " to webhooks."
        ),
        **requires_scopes(Permission.REPORTS_GENERATE),
    )
    async def schedule_report(self, info: Info, input: ReportScheduleInput) -> ReportSchedule:
        given = ScheduleInput(
            kind=input.kind.value,
            cadence=input.cadence.value,
            time_zone=input.time_zone,
            hour=input.hour_of_day,
            recipients=list(input.recipients),
            webhook_ids=[str(w) for w in input.webhook_ids],
        )
        return ReportSchedule.from_row(await service.schedule_report(info.context, given))

    @strawberry.mutation(
        description="Stop a report schedule (the reports it made stay).",
        **requires_scopes(Permission.REPORTS_GENERATE),
    )
    async def delete_report_schedule(self, info: Info, id: strawberry.ID) -> bool:
        return await service.delete_report_schedule(info.context, str(id))
