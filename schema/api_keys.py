from __future__ import annotations

from datetime import datetime

import strawberry

from authz import Permission
from resolvers import api_keys as service
from resolvers.api_keys import IssuedKey, NewApiKey
from schema.context import Info
from schema.directives import requires_scopes
from store.models import ApiKey as ApiKeyRow


@strawberry.type(name="ApiKey")
class ApiKey:
    id: strawberry.ID
    name: str
    prefix: str = strawberry.field(description="The public part of the key, for recognising it; never the secret.")
    scopes: list[str]
    allowed_ips: list[str]
    rate_limit_per_minute: int | None
    expires_at: datetime | None
    last_used_at: datetime | None = strawberry.field(description="Updated at most once a minute.")
    revoked_at: datetime | None
    created_at: datetime
    holder_id: strawberry.ID = strawberry.field(
        description="The user the key acts for: its creator, or whoever last rotated it (and so received its "
        "secret). Removing that user from the organization revokes the key."
    )

    @classmethod
    def from_row(cls, row: ApiKeyRow) -> ApiKey:
        return cls(
            id=strawberry.ID(row.id),
            name=row.name,
            prefix=f"ptc_{row.env}_{row.prefix}",
            scopes=list(row.scopes),
            allowed_ips=list(row.allowed_ips),
            rate_limit_per_minute=row.rate_limit_per_minute,
            expires_at=row.expires_at,
            last_used_at=row.last_used_at,
            revoked_at=row.revoked_at,
            created_at=row.created_at,
            holder_id=strawberry.ID(row.held_by),
        )


@strawberry.type
class ApiKeyCreated:
    api_key: ApiKey
    secret: str = strawberry.field(description="The key itself: shown here once, never stored.")

    @classmethod
    def from_issued(cls, issued: IssuedKey) -> ApiKeyCreated:
        return cls(api_key=ApiKey.from_row(issued.key), secret=issued.secret)


@strawberry.input
class CreateApiKeyInput:
    name: str
    scopes: list[str]
    expires_at: datetime | None = None
    allowed_ips: list[str] | None = strawberry.field(
        default_factory=list, description="IP addresses or CIDR networks; empty allows any address."
    )
    rate_limit_per_minute: int | None = None


@strawberry.type
class ApiKeyMutation:
    @strawberry.mutation(
        description="Create an API key; its secret is in the answer, once.",
        **requires_scopes(Permission.APIKEYS_MANAGE),
    )
    async def create_api_key(self, info: Info, input: CreateApiKeyInput) -> ApiKeyCreated:
        new = NewApiKey(
            name=input.name,
            scopes=list(input.scopes),
            expires_at=input.expires_at,
            allowed_ips=list(input.allowed_ips or []),
            rate_limit_per_minute=input.rate_limit_per_minute,
        )
        return ApiKeyCreated.from_issued(await service.create_api_key(info.context, new))

    @strawberry.mutation(
        description="Issue a new secret; the current one keeps working for the grace period.",
        **requires_scopes(Permission.APIKEYS_MANAGE),
    )
    async def rotate_api_key(
        self, info: Info, id: strawberry.ID, grace_period_seconds: int | None = 0
    ) -> ApiKeyCreated:
        return ApiKeyCreated.from_issued(await service.rotate_api_key(info.context, str(id), grace_period_seconds or 0))

    @strawberry.mutation(
        description="Revoke a key; every gateway process refuses it within a second.",
        **requires_scopes(Permission.APIKEYS_MANAGE),
    )
    async def revoke_api_key(self, info: Info, id: strawberry.ID) -> ApiKey:
        return ApiKey.from_row(await service.revoke_api_key(info.context, str(id)))
