"""A person's own account in the schema: recovery by email, the address's verification and change."""

from __future__ import annotations

import strawberry

from resolvers import accounts as service
from schema.context import Info
from schema.directives import authenticated


@strawberry.type
class AccountMutation:
    @strawberry.mutation(
        description="Email a password reset link to the address, if it has an account; public. "
        "Always true: the answer says nothing about the address."
    )
    async def request_password_reset(self, info: Info, email: str) -> bool:
        return await service.request_password_reset(info.context, email)

    @strawberry.mutation(
        description="Set a new password with the emailed link's token (single use, 30 minutes); "
        "ends every session of the account; public."
    )
    async def reset_password(self, info: Info, token: str, new_password: str) -> bool:
        return await service.reset_password(info.context, token, new_password)

    @strawberry.mutation(description="Email a link that verifies the caller's address.", **authenticated())
    async def send_email_verification(self, info: Info) -> bool:
        return await service.send_email_verification(info.context)

    @strawberry.mutation(description="Verify an address with the emailed link's token; public.")
    async def verify_email(self, info: Info, token: str) -> bool:
        return await service.verify_email(info.context, token)

    @strawberry.mutation(
        description="Move the caller's account to another address: a confirmation link goes to the new address "
        "(`currentPassword` is required for an account that has a password).",
        **authenticated(),
    )
    async def change_email(self, info: Info, new_email: str, current_password: str | None = None) -> bool:
        return await service.change_email(info.context, new_email, current_password)

    @strawberry.mutation(
        description="Confirm an address change with the emailed link's token; the previous address is told; public."
    )
    async def confirm_email_change(self, info: Info, token: str) -> bool:
        return await service.confirm_email_change(info.context, token)
