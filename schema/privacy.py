"""A person's rights over their data in the schema: `exportMyData` and `eraseAccount` (docs/privacy.md)."""

from __future__ import annotations

from datetime import datetime

import strawberry

from resolvers import data_export, erasure
from schema.context import Info
from schema.directives import authenticated


@strawberry.type(
    name="DataExport",
    description="A copy of everything the gateway holds about the caller, as JSON: downloadable at `url` with the "
    "caller's own credential until `expiresAt` (the link is also emailed).",
)
class DataExport:
    id: strawberry.ID
    url: str
    created_at: datetime
    expires_at: datetime
    digest: str = strawberry.field(description="sha256 (hex) of the JSON document.")


@strawberry.type
class PrivacyMutation:
    @strawberry.mutation(
        description="Export everything the gateway holds about the caller (right of access): a download link, "
        "also emailed; audited. One per minute.",
        **authenticated(),
    )
    async def export_my_data(self, info: Info) -> DataExport:
        link = await data_export.export_my_data(info.context)
        e = link.export
        return DataExport(
            id=strawberry.ID(e.id), url=link.url, created_at=e.created_at, expires_at=e.expires_at, digest=e.digest
        )

    @strawberry.mutation(
        description="Erase the caller's account and personal data in every organization (right to erasure); needs "
        "a recent sign-in. The only owner of an organization is refused (CONFLICT) until ownership is transferred.",
        **authenticated(),
    )
    async def erase_account(self, info: Info) -> bool:
        return await erasure.erase_own_account(info.context)
