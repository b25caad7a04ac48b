from __future__ import annotations

from datetime import UTC, datetime
from enum import Enum

import strawberry

from authz import Permission
from resolvers import auth as service
from resolvers import invitations as invitations_service
from resolvers import sign_in_options as sign_in_service
from resolvers.auth import AuthResult
from schema.context import Info
from schema.directives import authenticated, requires_scopes
from schema.organizations import Organization
from schema.users import User


@strawberry.type
class AuthPayload:
    access_token: str
    expires_at: datetime
    refresh_token: str
    user: User
    organization: Organization

    @classmethod
    def from_result(cls, r: AuthResult) -> AuthPayload:
        return cls(
            access_token=r.access_token,
            expires_at=datetime.fromtimestamp(r.claims.expires_at, UTC),
            refresh_token=r.refresh_token,
            user=User.from_row(r.user),
            organization=Organization.from_row(r.organization),
        )


@strawberry.enum(description="The protocol of an organization's single sign-on connection.")
class SsoProtocol(Enum):
    OIDC = "oidc"
    SAML = "saml"


@strawberry.type(description="Where an organization's single sign-on starts.")
class SignInSso:
    protocol: SsoProtocol
    url: str = strawberry.field(
        description="The gateway's address that starts the sign-in at the identity provider, for the browser to "
        "open (with `?return_to=` a path the gateway allows)."
    )


@strawberry.type(description="What an organization's sign-in page may offer; asked before signing in.")
class SignInOptions:
    organization: str = strawberry.field(description="The organization's slug, as asked.")
    password: bool = strawberry.field(description="Whether members sign in with a password (`login`).")
    sso: SignInSso | None = strawberry.field(
        description="Its single sign-on, when it has an enabled connection and its policy allows SSO; else null."
    )


@strawberry.type
class AuthQuery:
    @strawberry.field(
        description="What the organization's sign-in page may offer: the password form, single sign-on, or both; "
        "public. An organization that does not exist answers as one with the default policy and no single "
        "sign-on."
    )
    async def sign_in_options(self, info: Info, organization: str) -> SignInOptions:
        found = await sign_in_service.sign_in_options(info.context, organization)
        sso = None
        if found.sso_kind is not None and found.sso_url is not None:
            sso = SignInSso(protocol=SsoProtocol(found.sso_kind), url=found.sso_url)
        return SignInOptions(organization=found.organization, password=found.password, sso=sso)


@strawberry.type
class AuthMutation:
    @strawberry.mutation(description="Sign in with a password (and `totp`, the second factor, once enrolled); public.")
    async def login(
        self,
        info: Info,
        email: str,
        password: str,
        organization: str | None = None,
        totp: str | None = None,
    ) -> AuthPayload:
        return AuthPayload.from_result(await service.login(info.context, email, password, organization, totp))

    @strawberry.mutation(
        description="Join an organization with the emailed invitation's token and sign in to it; "
        "public. A new address sets its password here; an existing account gives its "
        "own password, or is signed in (required with a second factor or no password)."
    )
    async def accept_invitation(self, info: Info, token: str, password: str) -> AuthPayload:
        return AuthPayload.from_result(await invitations_service.accept_invitation(info.context, token, password))

    @strawberry.mutation(description="Spend a refresh token for a new access token and refresh token; public.")
    async def refresh_token(self, info: Info, refresh_token: str | None = None) -> AuthPayload:
        return AuthPayload.from_result(await service.refresh(info.context, refresh_token))

    @strawberry.mutation(description="End the current session.", **authenticated())
    async def logout(self, info: Info) -> bool:
        return await service.logout(info.context)

    @strawberry.mutation(description="Change the password; ends the user's other sessions.", **authenticated())
    async def change_password(self, info: Info, current_password: str, new_password: str) -> bool:
        return await service.change_password(info.context, current_password, new_password)

    @strawberry.mutation(
        description="Clear a member's failed-login counters and locks of sign-ins into this organization.",
        **requires_scopes(Permission.MEMBERS_MANAGE),
    )
    async def unlock_user(self, info: Info, user_id: strawberry.ID) -> bool:
        return await service.unlock_user(info.context, str(user_id))
