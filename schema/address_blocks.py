"""Address blocks in the schema: `blockAddress`, `unblockAddress` and `Organization.blockedAddresses`."""

from __future__ import annotations

from datetime import datetime
from enum import Enum

import strawberry

from authz import Permission
from resolvers import address_blocks as service
from schema.context import Info
from schema.directives import requires_scopes
from store.security import AddressBlock as AddressBlockRow


@strawberry.enum(name="AddressBlockSource", description="Who made a block.")
class AddressBlockSource(Enum):
    MANUAL = "manual"
    AUTOMATIC = "automatic"


@strawberry.type(
    name="AddressBlock",
    description="A blocked address range: the organization's credentials and sign-ins are refused from it.",
)
class AddressBlock:
    id: strawberry.ID
    cidr: str = strawberry.field(description="The range, normalized (a single address is a /32 or /128).")
    reason: str
    source: AddressBlockSource
    signal: str | None = strawberry.field(description="The abuse signal of an automatic block.")
    created_at: datetime
    expires_at: datetime | None = strawberry.field(description="Null: until lifted.")

    @classmethod
    def from_row(cls, row: AddressBlockRow) -> AddressBlock:
        return cls(
            id=strawberry.ID(row.id),
            cidr=row.cidr,
            reason=row.reason,
            source=AddressBlockSource(row.source),
            signal=row.signal,
            created_at=row.created_at,
            expires_at=row.expires_at,
        )


@strawberry.type
class AddressBlockMutation:
    @strawberry.mutation(
        description="Block an address or CIDR range for the organization: its credentials (tokens, API keys, "
        "browser sessions) and sign-ins from there are refused with ADDRESS_BLOCKED until `expiresAt` (null: "
        "until lifted). A range that holds the caller's own address, or wider than an IPv4 /8 or an IPv6 /32, "
        "is refused.",
        **requires_scopes(Permission.SECURITY_MANAGE),
    )
    async def block_address(
        self, info: Info, cidr: str, reason: str, expires_at: datetime | None = None
    ) -> AddressBlock:
        return AddressBlock.from_row(await service.block_address(info.context, cidr, reason, expires_at))

    @strawberry.mutation(
        description="Lift one of the organization's blocks; false when it had already expired or been lifted.",
        **requires_scopes(Permission.SECURITY_MANAGE),
    )
    async def unblock_address(self, info: Info, id: strawberry.ID) -> bool:
        return await service.unblock_address(info.context, str(id))
