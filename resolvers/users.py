"""The signed-in caller: who they are, in which organization, with which permissions."""

from __future__ import annotations

from dataclasses import dataclass

from authz import PrincipalKind
from authz.errors import Unauthenticated
from resolvers.deps import RequestContext
from store.models import ApiKey, Organization, User


@dataclass(frozen=True, slots=True)
class Viewer:
    """The caller: a person (`user`) or an API key (`api_key`), never both."""

    user: User | None
    api_key: ApiKey | None
    organization: Organization
    role: str
    permissions: list[str]
    auth_method: str


async def list_permissions(ctx: RequestContext) -> list[str]:
    """The caller's effective permissions, by name."""
    return sorted(str(p) for p in ctx.principal.effective_permissions)


async def get_viewer(ctx: RequestContext) -> Viewer:
    p = ctx.principal
    if p.subject_id is None or p.organization_id is None:
        raise Unauthenticated("Authentication required.")
    db = await ctx.db()
    org = await db.get(Organization, p.organization_id)
    user: User | None = None
    key: ApiKey | None = None
    if p.kind is PrincipalKind.API_KEY:
        key = await db.get(ApiKey, p.subject_id)
        if key is not None and key.organization_id != p.organization_id:
            key = None
        found = key is not None
    else:
        user = await db.get(User, p.subject_id)
        found = user is not None
    if not found or org is None:
        raise Unauthenticated("Authentication required.")
    return Viewer(
        user=user,
        api_key=key,
        organization=org,
        role=p.roles[0] if p.roles else "",
        permissions=await list_permissions(ctx),
        auth_method=p.auth_method.value,
    )
