"""planning/group_status.py: the conditions a ConsumerGroup's tick sets."""

from __future__ import annotations

from agentqueue import reasons
from agentqueue.planning import group_status
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


def test_status_is_written_only_when_something_changed() -> None:
    same = {"lag": 3, "waiting": 3, "conditions": [{"type": "Ready"}]}
    assert not group_status.status_write_due(same, dict(same), True, 99.0, 5.0)


def test_changes_wait_for_the_interval_unless_they_matter_now() -> None:
    last = {"lag": 3, "waiting": 3, "conditions": [{"type": "Ready"}]}
    lag_moved = {**last, "lag": 4, "waiting": 4}
    assert not group_status.status_write_due(lag_moved, last, False, 4.9, 5.0)
    assert group_status.status_write_due(lag_moved, last, False, 5.0, 5.0)
    assert group_status.status_write_due(lag_moved, last, True, 0.0, 5.0)  # scaled
    drained = {**last, "lag": 0, "waiting": 0}
    assert group_status.status_write_due(drained, last, False, 0.0, 5.0)
    assert group_status.status_write_due(last, drained, False, 0.0, 5.0)  # work appeared
    flipped = {**last, "conditions": [{"type": "Ready", "status": "False"}]}
    assert group_status.status_write_due(flipped, last, False, 0.0, 5.0)
    assert group_status.status_write_due({"lag": 1}, {}, False, 1e9, 5.0)  # the first write


def test_reconciled_names_the_group_and_its_partitions() -> None:
    assert group_status.reconciled("g", 3, False, "q") == Cond(
        reasons.READY, True, reasons.ACTIVE, "group 'g' on 3 partition(s)")
    assert group_status.reconciled("g", 2, True, "jobs") == Cond(
        reasons.READY, True, reasons.ACTIVE,
        "settings of group 'g' on List queue 'jobs' (2 partition(s); no Redis group)")
