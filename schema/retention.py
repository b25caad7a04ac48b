"""Retention: `Organization.retention` and `updateRetention` (docs/retention.md)."""

from __future__ import annotations

import strawberry

from authz import Permission
from authz.plans import RetentionKind
from resolvers import retention as service
from resolvers.retention import RetentionSetting as Setting
from schema.context import Info
from schema.directives import requires_scopes

strawberry.enum(RetentionKind, name="RetentionKind")


@strawberry.type(name="RetentionSetting", description="How long one kind of data is kept, in days.")
class RetentionSetting:
    kind: RetentionKind
    days: int = strawberry.field(description="Days kept: the organization's setting, or its plan's default.")
    default_days: int = strawberry.field(description="The plan's default.")
    min_days: int = strawberry.field(description="The shortest setting the plan allows.")
    max_days: int = strawberry.field(description="The longest setting the plan allows.")
    custom: bool = strawberry.field(description="false: the plan's default applies.")

    @classmethod
    def of(cls, s: Setting) -> RetentionSetting:
        b = s.bounds
        return cls(
            kind=s.kind, days=s.days, default_days=b.default, min_days=b.minimum, max_days=b.maximum, custom=s.custom
        )


@strawberry.type(name="Retention", description="How long the organization's data is kept (docs/retention.md).")
class Retention:
    settings: list[RetentionSetting]

    @classmethod
    def of(cls, settings: list[Setting]) -> Retention:
        return cls(settings=[RetentionSetting.of(s) for s in settings])


_FIELDS = {
    "audit_entries": RetentionKind.AUDIT_ENTRIES,
    "sessions": RetentionKind.SESSIONS,
    "usage": RetentionKind.USAGE,
    "reports": RetentionKind.REPORTS,
    "sent_mail": RetentionKind.SENT_MAIL,
    "sign_ins": RetentionKind.SIGN_INS,
}


@strawberry.input(
    description="Days per kind: an omitted kind keeps its setting; null returns it to the plan's default."
)
class RetentionInput:
    audit_entries: int | None = strawberry.UNSET
    sessions: int | None = strawberry.field(
        default=strawberry.UNSET, description="Sessions and refresh tokens, counted from when they ended."
    )
    usage: int | None = strawberry.UNSET
    reports: int | None = strawberry.UNSET
    sent_mail: int | None = strawberry.UNSET
    sign_ins: int | None = strawberry.UNSET

    def wanted(self) -> dict[RetentionKind, int | None]:
        return {k: getattr(self, f) for f, k in _FIELDS.items() if getattr(self, f) is not strawberry.UNSET}


async def organization_retention(info: Info, organization_id: str) -> Retention:
    return Retention.of(await service.get_retention(info.context, organization_id))


@strawberry.type
class RetentionMutation:
    @strawberry.mutation(
        description="Change how long the caller's organization keeps each kind of data, within its plan's bounds.",
        **requires_scopes(Permission.ORGANIZATION_UPDATE),
    )
    async def update_retention(self, info: Info, input: RetentionInput) -> Retention:
        return Retention.of(await service.update_retention(info.context, input.wanted()))
