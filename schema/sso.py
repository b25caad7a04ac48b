"""The SSO connection type, shared by the OIDC and SAML configuration mutations."""

from __future__ import annotations

import strawberry

from store.models import SsoConnection as SsoConnectionRow


@strawberry.type(name="SsoConnection", description="A tenant's identity provider; never a secret.")
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
            id=strawberry.ID(row.id), kind=row.kind, enabled=row.enabled, issuer=row.issuer,
            entity_id=row.entity_id, default_role=row.default_role, jit_provisioning=row.jit_provisioning,
            allowed_domains=list(row.allowed_domains),
        )
