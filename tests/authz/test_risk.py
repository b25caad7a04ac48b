"""The sign-in risk score: the documented weights and thresholds, and that worse facts never score lower."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from authz.risk import (
    RiskFacts,
    hour_distance,
    level_for,
    score,
    unusual_hour,
)
from authz.security_policy import RiskLevel

DAYTIME = (9, 10, 11, 14, 16)


@pytest.mark.parametrize(
    ("facts", "expected_score", "expected_level", "expected_signals"),
    [
        (RiskFacts(), 0, RiskLevel.LOW, []),
        (RiskFacts(address_seen=False), 30, RiskLevel.LOW, ["new_address"]),
        (RiskFacts(user_agent_seen=False), 20, RiskLevel.LOW, ["new_user_agent"]),
        (
            RiskFacts(address_seen=False, user_agent_seen=False),
            50,
            RiskLevel.MEDIUM,
            ["new_address", "new_user_agent"],
        ),
        (RiskFacts(recent_failures=1), 10, RiskLevel.LOW, ["recent_failures"]),
        (RiskFacts(recent_failures=2), 10, RiskLevel.LOW, ["recent_failures"]),
        (RiskFacts(recent_failures=3), 25, RiskLevel.LOW, ["recent_failures"]),
        (RiskFacts(recent_failures=40), 25, RiskLevel.LOW, ["recent_failures"]),
        (RiskFacts(accounts_from_address=4), 0, RiskLevel.LOW, []),
        (RiskFacts(accounts_from_address=5), 25, RiskLevel.LOW, ["many_accounts_from_address"]),
        (RiskFacts(hour=3, usual_hours=DAYTIME), 15, RiskLevel.LOW, ["unusual_hour"]),
        (RiskFacts(hour=12, usual_hours=DAYTIME), 0, RiskLevel.LOW, []),
        # fewer than five past sign-ins: the member's hours are not known yet
        (RiskFacts(hour=3, usual_hours=DAYTIME[:4]), 0, RiskLevel.LOW, []),
        (
            RiskFacts(address_seen=False, user_agent_seen=False, recent_failures=3),
            75,
            RiskLevel.HIGH,
            ["new_address", "new_user_agent", "recent_failures"],
        ),
        (
            RiskFacts(address_seen=False, accounts_from_address=9),
            55,
            RiskLevel.MEDIUM,
            ["new_address", "many_accounts_from_address"],
        ),
        (
            RiskFacts(
                address_seen=False,
                user_agent_seen=False,
                recent_failures=5,
                accounts_from_address=5,
                hour=2,
                usual_hours=DAYTIME,
            ),
            100,  # 115, capped
            RiskLevel.HIGH,
            ["new_address", "new_user_agent", "recent_failures", "many_accounts_from_address", "unusual_hour"],
        ),
    ],
)
def test_documented_weights_and_levels(
    facts: RiskFacts, expected_score: int, expected_level: RiskLevel, expected_signals: list[str]
) -> None:
    assessed = score(facts)
    assert assessed.score == expected_score
    assert assessed.level is expected_level
    assert assessed.signal_names == expected_signals
    if expected_score < 100:
        assert sum(s.weight for s in assessed.signals) == expected_score


@pytest.mark.parametrize(
    ("value", "level"),
    [(0, RiskLevel.LOW), (39, RiskLevel.LOW), (40, RiskLevel.MEDIUM), (69, RiskLevel.MEDIUM), (70, RiskLevel.HIGH)],
)
def test_thresholds(value: int, level: RiskLevel) -> None:
    assert level_for(value) is level


@pytest.mark.parametrize(("a", "b", "d"), [(0, 0, 0), (23, 1, 2), (1, 23, 2), (0, 12, 12), (6, 20, 10)])
def test_hours_are_compared_around_the_clock(a: int, b: int, d: int) -> None:
    assert hour_distance(a, b) == d


def test_an_hour_near_midnight_is_usual_for_a_night_owl() -> None:
    assert not unusual_hour(0, (22, 23, 23, 22, 1))
    assert unusual_hour(12, (22, 23, 23, 22, 1))


facts = st.builds(
    RiskFacts,
    address_seen=st.booleans(),
    user_agent_seen=st.booleans(),
    recent_failures=st.integers(0, 50),
    accounts_from_address=st.integers(0, 50),
    hour=st.integers(0, 23),
    usual_hours=st.lists(st.integers(0, 23), max_size=12).map(tuple),
)


@given(facts, st.data())
def test_worse_facts_never_lower_the_score_or_level(base: RiskFacts, data: st.DataObject) -> None:
    worse = RiskFacts(
        address_seen=base.address_seen and data.draw(st.booleans()),
        user_agent_seen=base.user_agent_seen and data.draw(st.booleans()),
        recent_failures=base.recent_failures + data.draw(st.integers(0, 10)),
        accounts_from_address=base.accounts_from_address + data.draw(st.integers(0, 10)),
        hour=base.hour,
        usual_hours=base.usual_hours,
    )
    before, after = score(base), score(worse)
    assert after.score >= before.score
    assert list(RiskLevel).index(after.level) >= list(RiskLevel).index(before.level)
    assert set(before.signal_names) <= set(after.signal_names)


@given(facts)
def test_the_score_is_the_capped_sum_of_the_signals_and_sets_the_level(f: RiskFacts) -> None:
    assessed = score(f)
    assert 0 <= assessed.score <= 100
    assert assessed.score == min(100, sum(s.weight for s in assessed.signals))
    assert all(s.weight > 0 for s in assessed.signals)
    assert assessed.level is level_for(assessed.score)
    assert len(set(assessed.signal_names)) == len(assessed.signals)
