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

from authz import ALL_PERMISSION_NAMES, Decision, Permission, Requirement, decide, is_permission
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
        Location.FIELD_DEFINITION,
        Location.OBJECT,
        Location.ARGUMENT_DEFINITION,
        Location.SCALAR,
        Location.ENUM,
        Location.INPUT_FIELD_DEFINITION,
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


MFA_ENROLLMENT_REQUIRED = "MFA_ENROLLMENT_REQUIRED"
PASSWORD_CHANGE_REQUIRED = "PASSWORD_CHANGE_REQUIRED"


def denial_error(principal: Any, decision: Decision) -> Exception:
    """The error a denied field resolves with: who is missing what."""
    if not principal.is_authenticated:
        return Unauthenticated("Authentication required.")
    if decision.reason == MFA_ENROLLMENT_REQUIRED:
        return Forbidden(
            "Your organization requires two-factor authentication: enroll with enrollTotp and confirmTotp first.",
            reason=MFA_ENROLLMENT_REQUIRED,
        )
    if decision.reason == PASSWORD_CHANGE_REQUIRED:
        return Forbidden(
            "Your password is older than your organization's passwordMaxAgeDays: change it with changePassword first.",
            reason=PASSWORD_CHANGE_REQUIRED,
        )
    extensions: dict[str, Any] = {}
    if decision.required_scopes:
        extensions["requiredScopes"] = [list(g) for g in decision.required_scopes]
    if decision.required_plan:
        extensions["requiredPlan"] = decision.required_plan.upper()
    return Forbidden("You are not allowed to access this field.", code=ErrorCode.FORBIDDEN, **extensions)


class Guard(FieldExtension):
    """Stands in front of a guarded field's resolver.

    The decision itself is taken once per operation, before execution, by the `Authorization`
    extension (see `schema.authorization`), which leaves the denied field nodes in the context; here
    a denied field raises instead of resolving, so its resolver never runs. Executed without that
    extension (a direct `schema.execute` in a script), the guard decides on its own: it never allows
    by default.
    """

    def __init__(self, requirement: Requirement) -> None:
        super().__init__()
        self.requirement = requirement

    def _check(self, info: Info) -> None:
        ctx = info.context
        denied = getattr(ctx, "denied_fields", None)
        if denied is None:
            decision = decide(ctx.principal, self.requirement)
            if not decision:
                raise denial_error(ctx.principal, decision)
            return
        if denied:
            found = denied.get(id(info._raw_info.field_nodes[0]))
            if found is not None:
                raise denial_error(ctx.principal, found)

    def resolve(self, next_: Callable[..., Any], source: Any, info: Info, **kwargs: Any) -> Any:
        self._check(info)
        return next_(source, info, **kwargs)

    async def resolve_async(self, next_: Callable[..., Awaitable[Any]], source: Any, info: Info, **kwargs: Any) -> Any:
        self._check(info)
        result = next_(source, info, **kwargs)
        if inspect.isawaitable(result):
            return await result
        return result


def _rule(directives: list[Any], requirement: Requirement) -> dict[str, Any]:
    return {"directives": directives, "extensions": [Guard(requirement)]}


def authenticated() -> dict[str, Any]:
    return _rule([Authenticated()], Requirement())


def requires_scopes(*groups: tuple[str, ...] | str) -> dict[str, Any]:
    normalized = tuple(g if isinstance(g, tuple) else (g,) for g in groups)
    return _rule([RequiresScopes(scopes=[[str(p) for p in g] for g in normalized])], Requirement.scopes(*normalized))


def list_size(rule: dict[str, Any], **size: Any) -> dict[str, Any]:
    """Adds `@listSize` to a rule: how many items the field's cost counts (schema.limits.cost)."""
    return {**rule, "directives": [*rule["directives"], ListSize(**size)]}


def scoped(rule: dict[str, Any]) -> dict[str, Any]:
    """Adds `@scoped` to a rule: the field's result is the caller's organization subtree."""
    return {**rule, "directives": [*rule["directives"], Scoped()]}


def _permission(name: str) -> str:
    """A name of the vocabulary: a built-in permission or an installed team permission."""
    if name in ALL_PERMISSION_NAMES:
        return Permission(name)
    if is_permission(name):
        return name
    raise ValueError(f"{name!r} is not a permission of the vocabulary")


def requirement_from_directives(directives: Any) -> Requirement | None:
    """The rule stated by authorization directives written on a type or an interface."""
    found = [d for d in directives or () if isinstance(d, Authenticated | RequiresScopes | RequiresPlan)]
    if not found:
        return None
    any_of: tuple[tuple[str, ...], ...] = ()
    plan = None
    for d in found:
        if isinstance(d, RequiresScopes):
            any_of = tuple(tuple(_permission(p) for p in group) for group in d.scopes)
        elif isinstance(d, RequiresPlan):
            plan = d.plan.value
    return Requirement(authenticated=True, any_of=any_of, plan=plan)


def requirement_of(field: Any) -> Requirement | None:
    """The rule a Strawberry field carries, read from its guard; None when it has none."""
    for extension in getattr(field, "extensions", None) or ():
        if isinstance(extension, Guard):
            return extension.requirement
    return None
