from __future__ import annotations

import strawberry

from authz import Permission
from resolvers import roles as service
from resolvers.roles import RoleSpec, RoleView
from schema.context import Info
from schema.directives import list_size, requires_scopes


@strawberry.type(name="Role")
class Role:
    name: str
    description: str | None
    permissions: list[str]
    inherits: list[str]
    built_in: bool

    @classmethod
    def from_view(cls, v: RoleView) -> Role:
        return cls(
            name=v.name,
            description=v.description,
            permissions=list(v.permissions),
            inherits=list(v.inherits),
            built_in=v.built_in,
        )


@strawberry.input
class RoleInput:
    name: str
    description: str | None = None
    permissions: list[str]
    inherits: list[str] | None = strawberry.field(default_factory=list)

    def to_spec(self) -> RoleSpec:
        return RoleSpec(
            name=self.name,
            description=self.description,
            permissions=list(self.permissions),
            inherits=list(self.inherits or ()),
        )


@strawberry.type
class RoleQuery:
    @strawberry.field(
        description="The built-in roles and the organization's custom roles.",
        **list_size(requires_scopes(Permission.ROLES_READ), assumed_size=20),
    )
    async def roles(self, info: Info) -> list[Role]:
        return [Role.from_view(v) for v in await service.list_roles(info.context)]


@strawberry.type
class RoleMutation:
    @strawberry.mutation(
        description="Define a custom role; it cannot hold a permission the caller lacks.",
        **requires_scopes(Permission.ROLES_MANAGE),
    )
    async def create_role(self, info: Info, input: RoleInput) -> Role:
        return Role.from_view(await service.create_role(info.context, input.to_spec()))

    @strawberry.mutation(
        description="Redefine a custom role; its members' permissions change on their next request.",
        **requires_scopes(Permission.ROLES_MANAGE),
    )
    async def update_role(self, info: Info, name: str, input: RoleInput) -> Role:
        return Role.from_view(await service.update_role(info.context, name, input.to_spec()))

    @strawberry.mutation(
        description="Delete a custom role that no member holds and no role inherits.",
        **requires_scopes(Permission.ROLES_MANAGE),
    )
    async def delete_role(self, info: Info, name: str) -> bool:
        return await service.delete_role(info.context, name)
