"""`decide(principal, requirement)`: allowed, or the reason it is not. Pure; no I/O.

A requirement follows Apollo Router's `@requiresScopes` semantics: the outer tuple is OR, each inner
tuple is AND. An empty outer tuple means "authenticated, nothing more". A scope is a permission name:
a `Permission` member or a team permission's plain name (`authz.vocabulary`).
"""

from __future__ import annotations

from dataclasses import dataclass

from authz.plans import PLANS, plan_rank
from authz.principal import Principal


@dataclass(frozen=True, slots=True)
class Requirement:
    authenticated: bool = True
    any_of: tuple[tuple[str, ...], ...] = ()
    plan: str | None = None

    @classmethod
    def scopes(cls, *alternatives: tuple[str, ...]) -> Requirement:
        return cls(authenticated=True, any_of=tuple(alternatives))

    @classmethod
    def permission(cls, permission: str) -> Requirement:
        return cls(authenticated=True, any_of=((permission,),))


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    reason: str | None = None
    required_scopes: tuple[tuple[str, ...], ...] = ()
    required_plan: str | None = None

    def __bool__(self) -> bool:
        return self.allowed


ALLOW = Decision(allowed=True)


def plan_at_least(plan: str | None, required: str) -> bool:
    if plan is None or plan not in PLANS:
        return False
    return plan_rank(plan) >= plan_rank(required)


def decide(principal: Principal, requirement: Requirement) -> Decision:
    if requirement.authenticated and not principal.is_authenticated:
        return Decision(allowed=False, reason="authentication required")
    if requirement.any_of:
        held = principal.effective_permissions
        if not any(all(p in held for p in group) for group in requirement.any_of):
            return Decision(
                allowed=False,
                reason="missing permission",
                required_scopes=tuple(tuple(str(p) for p in group) for group in requirement.any_of),
            )
    if requirement.plan is not None and not plan_at_least(principal.plan, requirement.plan):
        return Decision(allowed=False, reason="plan does not include this feature", required_plan=requirement.plan)
    return ALLOW
