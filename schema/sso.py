"""The SSO connection type (OIDC and SAML connections alike) and the OIDC configuration mutation."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import strawberry
from strawberry.scalars import JSON

from authz import Permission
from resolvers import sso as service
from resolvers import sso_login as sso_login_service
from resolvers.sso import OidcSpec
from schema.context import Info
from schema.directives import authenticated, requires_scopes
from store.models import SsoConnection as SsoConnectionRow


@strawberry.type(name="SsoConnection", description="A tenant's identity provider; never its secret.")
class SsoConnection:
    id: strawberry.ID
    kind: str
    enabled: bool
    issuer: str | None
    entity_id: str | None
    default_role: str
    jit_provisioning: bool
    allowed_domains: list[str]

    @classmethod
    def from_row(cls, row: SsoConnectionRow) -> SsoConnection:
        return cls(
            id=strawberry.ID(row.id),
            kind=row.kind,
            enabled=row.enabled,
            issuer=row.issuer,
            entity_id=row.entity_id,
            default_role=row.default_role,
            jit_provisioning=row.jit_provisioning,
            allowed_domains=list(row.allowed_domains),
        )


@strawberry.input
class OidcConnectionInput:
    issuer: str = strawberry.field(description="Exactly as the provider's discovery document names it.")
    client_id: str
    client_secret: str = strawberry.field(description="Stored encrypted; never returned.")
    scopes: list[str] | None = strawberry.field(default_factory=lambda: ["openid", "email", "profile"])
    groups_claim: str | None = "groups"
    # the contract's `= {}` cannot be printed as a JSON default by graphql-core: null means the same
    role_mapping: JSON | None = strawberry.field(
        default=None, description="Group name to role name; the first group the user is in wins. Default {}."
    )
    default_role: str | None = "viewer"
    allowed_domains: list[str] | None = strawberry.field(default_factory=list)
    jit_provisioning: bool | None = True
    enabled: bool | None = True


def _spec(input: OidcConnectionInput) -> OidcSpec:
    mapping: Any = input.role_mapping if input.role_mapping is not None else {}
    return OidcSpec(
        issuer=input.issuer,
        client_id=input.client_id,
        client_secret=input.client_secret,
        scopes=list(input.scopes if input.scopes is not None else ["openid", "email", "profile"]),
        groups_claim=input.groups_claim if input.groups_claim is not None else "groups",
        role_mapping=mapping,
        default_role=input.default_role or "viewer",
        allowed_domains=list(input.allowed_domains or []),
        jit_provisioning=True if input.jit_provisioning is None else input.jit_provisioning,
        enabled=True if input.enabled is None else input.enabled,
    )


@strawberry.type
class SsoLinkStart:
    url: str = strawberry.field(
        description="Open this address in the browser (single use, 10 minutes): the "
        "organization's identity provider signs you in, and is linked to "
        "your account when it vouches for your account's own address."
    )
    expires_at: datetime


@strawberry.type
class SsoMutation:
    @strawberry.mutation(
        description="Link your account to the organization's single sign-on connection, by your "
        "own act: returns the address where the link is made.",
        **authenticated(),
    )
    async def start_sso_link(self, info: Info) -> SsoLinkStart:
        start = await sso_login_service.start_sso_link(info.context)
        return SsoLinkStart(url=start.url, expires_at=start.expires_at)

    @strawberry.mutation(
        description="Create or replace the organization's OpenID Connect connection (its discovery document "
        "is fetched and checked).",
        **requires_scopes(Permission.SSO_MANAGE),
    )
    async def configure_oidc(self, info: Info, input: OidcConnectionInput) -> SsoConnection:
        return SsoConnection.from_row(await service.configure_oidc(info.context, _spec(input)))
