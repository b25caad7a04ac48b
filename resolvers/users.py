"""The signed-in caller: who they are, in which organization, with which permissions."""

from __future__ import annotations

from dataclasses import dataclass

from authz.errors import Unauthenticated
from resolvers.deps import RequestContext
from store.models import Organization, User


@dataclass(frozen=True, slots=True)
class Viewer:
    user: User
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
    user = await db.get(User, p.subject_id)
    org = await db.get(Organization, p.organization_id)
    if user is None or org is None:
        raise Unauthenticated("Authentication required.")
    return Viewer(
        user=user,
        organization=org,
        role=p.roles[0] if p.roles else "",
        permissions=await list_permissions(ctx),
        auth_method=p.auth_method.value,
    )
