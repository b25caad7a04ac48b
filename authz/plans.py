"""The plans and the limits each grants (the contract's plan table), overridable per organization.

Pure data and functions: the quota enforcement in `resolvers/`, the admission step at the edge and the
`portcullis org limits` command all read a tenant's limits through `effective_limits`. A limit of None
means unlimited; an override of 0 is a real limit (nothing is admitted), not "unset".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType


class QuotaResource(StrEnum):
    MEMBERS = "MEMBERS"
    API_KEYS = "API_KEYS"
    REQUESTS_PER_MINUTE = "REQUESTS_PER_MINUTE"
    REQUESTS_PER_DAY = "REQUESTS_PER_DAY"
    COST_PER_MINUTE = "COST_PER_MINUTE"
    REPORTS_PER_MONTH = "REPORTS_PER_MONTH"
    CHILD_ORGANIZATIONS = "CHILD_ORGANIZATIONS"


class Plan(StrEnum):
    """The plans, cheapest first: the one definition of their names (the GraphQL enum `Plan` is this one)."""

    FREE = "free"
    STARTER = "starter"
    PROFESSIONAL = "professional"
    ENTERPRISE = "enterprise"


PLANS: tuple[str, ...] = tuple(Plan)


def plan_rank(plan: str) -> int:
    """The plan's place in `PLANS`, cheapest first; an unknown name ranks below every plan."""
    return PLANS.index(plan) if plan in PLANS else -1


Limits = Mapping[QuotaResource, int | None]

_R = QuotaResource


def _row(
    members: int | None,
    api_keys: int | None,
    rpm: int | None,
    rpd: int | None,
    cpm: int | None,
    reports: int | None,
    children: int | None,
) -> Limits:
    return MappingProxyType(
        {
            _R.MEMBERS: members,
            _R.API_KEYS: api_keys,
            _R.REQUESTS_PER_MINUTE: rpm,
            _R.REQUESTS_PER_DAY: rpd,
            _R.COST_PER_MINUTE: cpm,
            _R.REPORTS_PER_MONTH: reports,
            _R.CHILD_ORGANIZATIONS: children,
        }
    )


PLAN_QUOTAS: Mapping[str, Limits] = MappingProxyType(
    {
        Plan.FREE: _row(3, 2, 60, 1_000, 1_000, 5, 0),
        Plan.STARTER: _row(10, 10, 600, 10_000, 10_000, 50, 2),
        Plan.PROFESSIONAL: _row(50, 50, 6_000, 100_000, 100_000, 500, 10),
        Plan.ENTERPRISE: _row(None, None, 60_000, None, 1_000_000, None, None),
    }
)


def parse_overrides(raw: Mapping[str, object] | None) -> dict[QuotaResource, int | None]:
    """Stored overrides (resource name -> int or None), keeping only well-formed entries."""
    out: dict[QuotaResource, int | None] = {}
    for name, value in (raw or {}).items():
        if name not in QuotaResource.__members__:
            continue
        if value is None or (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
            out[QuotaResource(name)] = value
    return out


def effective_limits(plan: str, overrides: Mapping[str, object] | None = None) -> dict[QuotaResource, int | None]:
    """The tenant's limits: its plan's row with its own overrides on top (unknown plans get nothing)."""
    base = PLAN_QUOTAS.get(plan)
    limits: dict[QuotaResource, int | None] = dict(base) if base is not None else dict.fromkeys(QuotaResource, 0)
    limits.update(parse_overrides(overrides))
    return limits


# Security-policy settings a plan must reach before an organization may restrict them (the plan named, or a
# higher one). Anything not listed here is available on every plan. docs/security-policies.md, "Plans".
POLICY_SETTING_PLANS: Mapping[str, str] = MappingProxyType(
    {
        "ipAllowlist": Plan.STARTER,
        "allowedSignInMethods": Plan.STARTER,
    }
)


def policy_setting_allowed(setting: str, plan: str) -> bool:
    """Whether an organization on `plan` may restrict `setting` (a GraphQL field name of SecurityPolicy)."""
    needed = POLICY_SETTING_PLANS.get(setting)
    return needed is None or plan_rank(plan) >= plan_rank(needed)


# --- retention: how long each kind of data is kept, per plan (docs/retention.md) --------------------------


class RetentionKind(StrEnum):
    """What the pruning job deletes once it is older than the tenant's setting, in days."""

    AUDIT_ENTRIES = "AUDIT_ENTRIES"
    SESSIONS = "SESSIONS"  # sessions and refresh tokens, counted from when they ended
    USAGE = "USAGE"
    REPORTS = "REPORTS"
    SENT_MAIL = "SENT_MAIL"
    SIGN_INS = "SIGN_INS"


@dataclass(frozen=True, slots=True)
class RetentionBounds:
    minimum: int
    default: int
    maximum: int


_YEAR = 365


def _bounds(
    audit_entries: Sequence[int],
    sessions: Sequence[int],
    usage: Sequence[int],
    reports: Sequence[int],
    sent_mail: Sequence[int],
    sign_ins: Sequence[int],
) -> Mapping[RetentionKind, RetentionBounds]:
    rows = (audit_entries, sessions, usage, reports, sent_mail, sign_ins)
    return MappingProxyType({kind: RetentionBounds(*d) for kind, d in zip(RetentionKind, rows, strict=True)})


# (minimum, default, maximum) in days, per plan
PLAN_RETENTION: Mapping[str, Mapping[RetentionKind, RetentionBounds]] = MappingProxyType(
    {
        Plan.FREE: _bounds(
            audit_entries=(30, 90, 90),
            sessions=(1, 30, 30),
            usage=(31, 90, 90),
            reports=(7, 30, 30),
            sent_mail=(1, 30, 30),
            sign_ins=(7, 30, 30),
        ),
        Plan.STARTER: _bounds(
            audit_entries=(30, _YEAR, _YEAR),
            sessions=(1, 30, 90),
            usage=(31, _YEAR, _YEAR),
            reports=(7, 90, 180),
            sent_mail=(1, 30, 90),
            sign_ins=(7, 90, 90),
        ),
        Plan.PROFESSIONAL: _bounds(
            audit_entries=(90, _YEAR, 3 * _YEAR),
            sessions=(1, 30, 180),
            usage=(31, 2 * _YEAR, 2 * _YEAR),
            reports=(7, 180, _YEAR),
            sent_mail=(1, 30, 90),
            sign_ins=(7, 180, _YEAR),
        ),
        Plan.ENTERPRISE: _bounds(
            audit_entries=(90, _YEAR, 7 * _YEAR),
            sessions=(1, 30, _YEAR),
            usage=(31, 2 * _YEAR, 7 * _YEAR),
            reports=(7, _YEAR, 7 * _YEAR),
            sent_mail=(1, 30, _YEAR),
            sign_ins=(7, _YEAR, 2 * _YEAR),
        ),
    }
)


def retention_bounds(plan: str) -> Mapping[RetentionKind, RetentionBounds]:
    """The plan's bounds; an unknown plan gets FREE's (the shortest)."""
    return PLAN_RETENTION.get(plan, PLAN_RETENTION[Plan.FREE])


def effective_retention(plan: str, stored: Mapping[str, object] | None) -> dict[RetentionKind, int]:
    """Days kept for each kind: the tenant's stored setting, held within the plan's bounds (a setting made on
    a higher plan is cut to the new plan's maximum), else the plan's default."""
    out: dict[RetentionKind, int] = {}
    for kind, b in retention_bounds(plan).items():
        value = (stored or {}).get(kind.value)
        if isinstance(value, int) and not isinstance(value, bool):
            out[kind] = min(max(value, b.minimum), b.maximum)
        else:
            out[kind] = b.default
    return out


def retention_problems(plan: str, wanted: Mapping[RetentionKind, int | None]) -> list[str]:
    """Every setting outside the plan's bounds (None resets to the default and is always allowed)."""
    problems = []
    bounds = retention_bounds(plan)
    for kind, days in wanted.items():
        b = bounds[kind]
        if days is not None and not b.minimum <= days <= b.maximum:
            problems.append(f"{kind.value}: {days} days is outside this plan's {b.minimum}..{b.maximum} days")
    return problems
