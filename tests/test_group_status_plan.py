"""planning/group_status.py: the conditions a ConsumerGroup's tick sets."""

from __future__ import annotations

from agentqueue import reasons
from agentqueue.planning.group_status import Cond, readiness, scaling_conditions


def test_scaling_conditions_without_and_with_a_conflict() -> None:
    assert scaling_conditions(None, "3 waiting") == [
        Cond(reasons.SCALING_CONFLICT, False, reasons.NO_CONFLICT, ""),
        Cond(reasons.SCALING_ACTIVE, True, reasons.SCALED, "3 waiting")]
    conflict = (reasons.HPA_CONFLICT, "HPA/x already scales Deployment/w")
    assert scaling_conditions(conflict, "3 waiting") == [
        Cond(reasons.SCALING_CONFLICT, True, reasons.HPA_CONFLICT,
             "HPA/x already scales Deployment/w"),
        Cond(reasons.SCALING_ACTIVE, False, reasons.HPA_CONFLICT, "3 waiting")]


def test_readable_sets_active_once() -> None:
    assert readiness(True, reasons.ACTIVE, "g", "None", True, True) is None
    for before in (reasons.REDIS_UNAVAILABLE, reasons.FALLBACK, None):
        assert readiness(True, before, "g", "None", False, False) == Cond(
            reasons.READY, True, reasons.ACTIVE, "group 'g' readable again")


def test_unreadable_falls_back_only_for_a_scaled_target_with_fallback_replicas() -> None:
    down = "cannot read Redis: connection refused"
    assert readiness(False, reasons.ACTIVE, "g", "connection refused", True, True) == Cond(
        reasons.READY, False, reasons.FALLBACK, down)
    for target, fallback in ((True, False), (False, True), (False, False)):
        assert readiness(False, reasons.ACTIVE, "g", "connection refused", target,
                         fallback) == Cond(reasons.READY, False, reasons.REDIS_UNAVAILABLE,
                                           down)
