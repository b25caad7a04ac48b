"""The authorization and cost directives of the contract, and the guard that enforces them.

Strawberry's schema directives only print in the SDL; the rule each one states is enforced here, by a
field extension built from the same data, so the rule a reader sees is the rule that runs.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any

import strawberry
from strawberry.extensions import FieldExtension
from strawberry.schema_directive import Location
from strawberry.types import Info

from authz import Permission, Requirement, decide
from authz.errors import ErrorCode, Forbidden, Unauthenticated
from schema.enums import Plan


@strawberry.schema_directive(
    locations=[Location.OBJECT, Location.FIELD_DEFINITION, Location.INTERFACE, Location.SCALAR, Location.ENUM],
    name="authenticated",
)
class Authenticated:
    pass


@strawberry.schema_directive(
    locations=[Location.OBJECT, Location.FIELD_DEFINITION, Location.INTERFACE, Location.SCALAR, Location.ENUM],
    name="requiresScopes",
)
class RequiresScopes:
    scopes: list[list[str]]


@strawberry.schema_directive(locations=[Location.OBJECT, Location.FIELD_DEFINITION], name="requiresPlan")
class RequiresPlan:
    plan: Plan


@strawberry.schema_directive(locations=[Location.FIELD_DEFINITION], name="scoped")
class Scoped:
    pass


@strawberry.schema_directive(
    locations=[
        Location.FIELD_DEFINITION, Location.OBJECT, Location.ARGUMENT_DEFINITION, Location.SCALAR,
        Location.ENUM, Location.INPUT_FIELD_DEFINITION,
    ],
    name="cost",
)
class Cost:
    weight: int


@strawberry.schema_directive(locations=[Location.FIELD_DEFINITION], name="listSize")
class ListSize:
    assumed_size: int | None = None
    slicing_arguments: list[str] | None = None
    sized_fields: list[str] | None = None
    require_one_slicing_argument: bool = True


class Guard(FieldExtension):
    """Refuses a field before its resolver runs when `authz.decide` says no."""

    def __init__(self, requirement: Requirement) -> None:
        super().__init__()
        self.requirement = requirement

    def _check(self, info: Info) -> None:
        decision = decide(info.context.principal, self.requirement)
        if decision:
            return
        if not info.context.principal.is_authenticated:
            raise Unauthenticated("Authentication required.")
        extensions: dict[str, Any] = {}
        if decision.required_scopes:
            extensions["requiredScopes"] = [list(g) for g in decision.required_scopes]
        if decision.required_plan:
            extensions["requiredPlan"] = decision.required_plan.upper()
        raise Forbidden("You are not allowed to access this field.", code=ErrorCode.FORBIDDEN, **extensions)

    def resolve(self, next_: Callable[..., Any], source: Any, info: Info, **kwargs: Any) -> Any:
        self._check(info)
        return next_(source, info, **kwargs)

    async def resolve_async(
        self, next_: Callable[..., Awaitable[Any]], source: Any, info: Info, **kwargs: Any
    ) -> Any:
        self._check(info)
        result = next_(source, info, **kwargs)
        if inspect.isawaitable(result):
            return await result
        return result


def authenticated() -> dict[str, Any]:
    return {"directives": [Authenticated()], "extensions": [Guard(Requirement())]}


def requires_scopes(*groups: tuple[Permission, ...] | Permission) -> dict[str, Any]:
    normalized = tuple(g if isinstance(g, tuple) else (g,) for g in groups)
    return {
        "directives": [RequiresScopes(scopes=[[p.value for p in g] for g in normalized])],
        "extensions": [Guard(Requirement.scopes(*normalized))],
    }
