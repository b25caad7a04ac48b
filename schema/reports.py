from __future__ import annotations

from datetime import datetime
from enum import Enum
from typing import Annotated, Any

import strawberry
from strawberry.scalars import JSON

from authz import Permission
from resolvers import reports as service
from resolvers.reports import ReportPage
from schema.context import Info
from schema.directives import requires_scopes
from schema.pagination import Connection
from store.models import Report as ReportRow


@strawberry.enum
class ReportKind(Enum):
    USAGE = "USAGE"
    SECURITY = "SECURITY"
    ACCESS = "ACCESS"
    COMPLIANCE = "COMPLIANCE"


@strawberry.type(name="Report")
class Report:
    id: strawberry.ID
    kind: ReportKind
    from_: datetime = strawberry.field(name="from")
    to: datetime
    created_at: datetime
    digest: str = strawberry.field(description="sha256 (hex) of the JSON download, byte for byte.")
    summary: JSON
    csv_url: str = strawberry.field(description="Path of the CSV download, relative to the gateway.")
    json_url: str
    html_url: str

    @classmethod
    def from_row(cls, row: ReportRow) -> Report:
        path = f"/reports/{row.id}"
        summary: Any = row.summary
        return cls(
            id=strawberry.ID(row.id),
            kind=ReportKind(row.kind),
            from_=row.period_start,
            to=row.period_end,
            created_at=row.created_at,
            digest=row.digest,
            summary=summary,
            csv_url=f"{path}.csv",
            json_url=f"{path}.json",
            html_url=f"{path}.html",
        )


@strawberry.type
class ReportConnection(Connection[Report]):
    @classmethod
    def from_page(cls, page: ReportPage) -> ReportConnection:
        return cls.of(page, Report.from_row)


@strawberry.type
class ReportQuery:
    @strawberry.field(description="One of the organization's reports.", **requires_scopes(Permission.REPORTS_READ))
    async def report(self, info: Info, id: strawberry.ID) -> Report | None:
        return Report.from_row(await service.get_report(info.context, str(id)))


@strawberry.type
class ReportMutation:
    @strawberry.mutation(
        description="Generate a report of the organization for [from, to); counts against REPORTS_PER_MONTH.",
        **requires_scopes(Permission.REPORTS_GENERATE),
    )
    async def generate_report(
        self,
        info: Info,
        kind: ReportKind,
        from_: Annotated[datetime, strawberry.argument(name="from")],
        to: datetime,
    ) -> Report:
        return Report.from_row(await service.generate_report(info.context, kind.value, from_, to))
