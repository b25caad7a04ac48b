"""A sign-in's risk, from plain facts about it: a score from 0 to 100, the signals that fired with their
weights, and the level the organization's policy acts on (docs/risk.md lists the signals and thresholds).

Each signal adds its weight; the score is their sum, capped at 100. Nothing here lowers a score, so a fact
that looks worse never yields a lower score or level than a better one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from authz.security_policy import RiskLevel

NEW_ADDRESS = "new_address"
NEW_USER_AGENT = "new_user_agent"
RECENT_FAILURES = "recent_failures"
MANY_ACCOUNTS_FROM_ADDRESS = "many_accounts_from_address"
UNUSUAL_HOUR = "unusual_hour"

SIGNALS = (NEW_ADDRESS, NEW_USER_AGENT, RECENT_FAILURES, MANY_ACCOUNTS_FROM_ADDRESS, UNUSUAL_HOUR)

NEW_ADDRESS_WEIGHT = 30
NEW_USER_AGENT_WEIGHT = 20
# failed sign-ins of the account within the last hour: a few, then many
FEW_FAILURES = 1
FEW_FAILURES_WEIGHT = 10
MANY_FAILURES = 3
MANY_FAILURES_WEIGHT = 25
# other accounts that tried to sign in from the same address within the last hour
MANY_ACCOUNTS = 5
MANY_ACCOUNTS_WEIGHT = 25
# an hour at least this far (on the 24-hour clock) from every past sign-in's hour, once there are enough
UNUSUAL_HOUR_DISTANCE = 3
UNUSUAL_HOUR_MIN_HISTORY = 5
UNUSUAL_HOUR_WEIGHT = 15

MAX_SCORE = 100
MEDIUM_FROM = 40
HIGH_FROM = 70


@dataclass(frozen=True, slots=True)
class RiskFacts:
    """What is known about a sign-in when it happens.

    `usual_hours`: the UTC hour of each of the account's past successful sign-ins (most recent first)."""

    address_seen: bool = True
    user_agent_seen: bool = True
    recent_failures: int = 0
    accounts_from_address: int = 0
    hour: int = 12
    usual_hours: Sequence[int] = field(default_factory=tuple)


@dataclass(frozen=True, slots=True)
class Signal:
    name: str
    weight: int


@dataclass(frozen=True, slots=True)
class RiskAssessment:
    score: int
    level: RiskLevel
    signals: tuple[Signal, ...]

    @property
    def signal_names(self) -> list[str]:
        return [s.name for s in self.signals]

    def as_details(self) -> dict[str, Any]:
        """What an audit entry or a security event says of it."""
        return {
            "score": self.score,
            "level": self.level.value,
            "signals": [{"name": s.name, "weight": s.weight} for s in self.signals],
        }


def level_for(score: int) -> RiskLevel:
    if score >= HIGH_FROM:
        return RiskLevel.HIGH
    if score >= MEDIUM_FROM:
        return RiskLevel.MEDIUM
    return RiskLevel.LOW


def hour_distance(a: int, b: int) -> int:
    """Hours between two hours of the day, around the clock (23 and 1 are 2 apart)."""
    d = abs(a - b) % 24
    return min(d, 24 - d)


def unusual_hour(hour: int, usual_hours: Sequence[int]) -> bool:
    if len(usual_hours) < UNUSUAL_HOUR_MIN_HISTORY:
        return False  # too little history to know the member's hours
    return all(hour_distance(hour, h) >= UNUSUAL_HOUR_DISTANCE for h in usual_hours)


def _failures_weight(failures: int) -> int:
    if failures >= MANY_FAILURES:
        return MANY_FAILURES_WEIGHT
    if failures >= FEW_FAILURES:
        return FEW_FAILURES_WEIGHT
    return 0


def score(facts: RiskFacts) -> RiskAssessment:
    signals: list[Signal] = []
    if not facts.address_seen:
        signals.append(Signal(NEW_ADDRESS, NEW_ADDRESS_WEIGHT))
    if not facts.user_agent_seen:
        signals.append(Signal(NEW_USER_AGENT, NEW_USER_AGENT_WEIGHT))
    failures = _failures_weight(facts.recent_failures)
    if failures:
        signals.append(Signal(RECENT_FAILURES, failures))
    if facts.accounts_from_address >= MANY_ACCOUNTS:
        signals.append(Signal(MANY_ACCOUNTS_FROM_ADDRESS, MANY_ACCOUNTS_WEIGHT))
    if unusual_hour(facts.hour, facts.usual_hours):
        signals.append(Signal(UNUSUAL_HOUR, UNUSUAL_HOUR_WEIGHT))
    total = min(MAX_SCORE, sum(s.weight for s in signals))
    return RiskAssessment(total, level_for(total), tuple(signals))
