from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

import strawberry
from strawberry.scalars import JSON

from authz import Permission
from resolvers import saml as service
from resolvers.saml import SamlConnectionSpec
from schema.context import Info
from schema.directives import requires_scopes
from schema.sso import SsoConnection


@strawberry.input
class SamlConnectionInput:
    idp_metadata_xml: str = strawberry.field(
        description="The IdP's metadata XML: its entity id, HTTP-Redirect SSO URL and signing certificates."
    )
    email_attribute: str | None = "email"
    groups_attribute: str | None = "groups"
    # `{}` cannot be printed as a default value in the SDL; null means no mapping
    role_mapping: JSON | None = strawberry.field(default=None, description="IdP group name -> role name.")
    default_role: str | None = "viewer"
    allowed_domains: list[str] | None = strawberry.field(default_factory=list)
    jit_provisioning: bool | None = True
    enabled: bool | None = True


@strawberry.type
class SamlMutation:
    @strawberry.mutation(
        description="Create or replace the organization's SAML connection from the IdP's metadata.",
        **requires_scopes(Permission.SSO_MANAGE),
    )
    async def configure_saml(self, info: Info, input: SamlConnectionInput) -> SsoConnection:
        spec = SamlConnectionSpec(
            idp_metadata_xml=input.idp_metadata_xml,
            email_attribute="email" if input.email_attribute is None else input.email_attribute,
            groups_attribute="groups" if input.groups_attribute is None else input.groups_attribute,
            role_mapping=cast(Mapping[str, Any], input.role_mapping or {}),
            default_role=input.default_role or "viewer",
            allowed_domains=list(input.allowed_domains or []),
            jit_provisioning=True if input.jit_provisioning is None else input.jit_provisioning,
            enabled=True if input.enabled is None else input.enabled,
        )
        return SsoConnection.from_row(await service.configure_saml(info.context, spec))
