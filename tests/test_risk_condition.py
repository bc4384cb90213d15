"""The RedisConfigRisk condition and its Warning Event (planning/risk_condition.py):
pure, mutation-tested."""

from __future__ import annotations

from typing import Any

import pytest

from agentqueue import reasons
from agentqueue.planning.risk_condition import RiskCondition, risk_condition
from agentqueue.planning.server_risks import AOF_DEFAULT_USER_OFF, EVICTION, Risk

EVICT_A = Risk(EVICTION, "a:6379", "a:6379: evicts")
EVICT_B = Risk(EVICTION, "b:6379", "b:6379: evicts")
AOF_A = Risk(AOF_DEFAULT_USER_OFF, "a:6379", "a:6379: aof")


def shown(status: str, message: str) -> dict[str, Any]:
    return {"type": reasons.REDIS_CONFIG_RISK, "status": status, "reason": EVICTION,
            "message": message}


@pytest.mark.parametrize("before", [None, {}, shown("True", "a:6379: evicts"),
                                    shown("False", "")])
def test_no_risk_is_false_without_an_event(before: dict[str, Any] | None) -> None:
    assert risk_condition([], before) == RiskCondition(False, reasons.NO_KNOWN_RISK, "", None)


def test_one_risk_starts_with_a_warning() -> None:
    assert risk_condition([EVICT_A], None) == RiskCondition(
        True, EVICTION, "a:6379: evicts", (EVICTION, "a:6379: evicts"))


@pytest.mark.parametrize("before", [None, {}, shown("False", "a:6379: evicts"),
                                    shown("Unknown", "a:6379: evicts"),
                                    shown("True", "a:6379: something else"),
                                    {"status": "True"}])
def test_a_warning_when_the_risk_starts_or_its_message_changes(
        before: dict[str, Any] | None) -> None:
    assert risk_condition([EVICT_A], before).warn == (EVICTION, "a:6379: evicts")


def test_no_warning_while_the_same_risk_is_shown() -> None:
    assert risk_condition([EVICT_A], shown("True", "a:6379: evicts")) == RiskCondition(
        True, EVICTION, "a:6379: evicts", None)
    assert risk_condition([EVICT_A], {"status": "True", "message": "a:6379: evicts"}).warn \
        is None


def test_one_reason_on_several_nodes_keeps_its_reason() -> None:
    cond = risk_condition([EVICT_A, EVICT_B], None)
    assert cond == RiskCondition(True, EVICTION, "a:6379: evicts; b:6379: evicts",
                                 (EVICTION, "a:6379: evicts; b:6379: evicts"))


@pytest.mark.parametrize("risks", [[EVICT_A, AOF_A], [AOF_A, EVICT_A],
                                   [EVICT_A, EVICT_B, AOF_A]])
def test_several_reasons(risks: list[Risk]) -> None:
    cond = risk_condition(risks, None)
    assert cond.status is True and cond.reason == reasons.SEVERAL_RISKS
    assert cond.message == "; ".join(r.message for r in risks)
    assert cond.warn == (reasons.SEVERAL_RISKS, cond.message)


def test_the_message_is_cut_to_1000_characters() -> None:
    long = [Risk(EVICTION, f"n{i}", f"n{i}: " + "x" * 300) for i in range(5)]
    cond = risk_condition(long, None)
    full = "; ".join(r.message for r in long)
    assert len(full) > 1001 and cond.message == full[:1000] and len(cond.message) == 1000
    assert cond.warn == (EVICTION, full[:1000])
    assert risk_condition(long, shown("True", full[:1000])).warn is None
    assert risk_condition(long, shown("True", full)).warn is not None
