"""TOTP second factor: enrollment, confirmation (recovery codes, shown once) and removal."""

from __future__ import annotations

import strawberry

from resolvers import mfa as service
from schema.context import Info
from schema.directives import authenticated


@strawberry.type
class TotpEnrollment:
    secret: str = strawberry.field(description="The base32 seed, for typing into an authenticator app.")
    otpauth_uri: str = strawberry.field(description="The `otpauth://totp/...` URI the QR code encodes.")
    qr_svg: str = strawberry.field(description="The URI as a QR code: a standalone SVG document.")


@strawberry.type
class MfaMutation:
    @strawberry.mutation(
        description="Start TOTP enrollment: a new seed, pending until `confirmTotp`.", **authenticated()
    )
    async def enroll_totp(self, info: Info) -> TotpEnrollment:
        e = await service.enroll_totp(info.context)
        return TotpEnrollment(secret=e.secret, otpauth_uri=e.otpauth_uri, qr_svg=e.qr_svg)

    @strawberry.mutation(
        description="Enable TOTP with a code from the new device; returns the ten recovery codes, shown once. "
        "Ends the user's other sessions.",
        **authenticated(),
    )
    async def confirm_totp(self, info: Info, code: str) -> list[str]:
        return await service.confirm_totp(info.context, code)

    @strawberry.mutation(
        description="Disable TOTP with a current code or a recovery code. Ends the user's other sessions.",
        **authenticated(),
    )
    async def disable_totp(self, info: Info, code: str) -> bool:
        return await service.disable_totp(info.context, code)
