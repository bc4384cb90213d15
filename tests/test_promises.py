"""Pure decisions pinned by plain examples (issue 17): each test names the bug or the
mutant it fails on, so a lucky hypothesis seed is never the only guard."""

from __future__ import annotations

import pytest

from agentqueue.models.group import ScalingSpec
from agentqueue.planning.scaling import (
    MAX_HISTORY,
    ScaleHistory,
    ScaleObservation,
    ScalingParams,
    decide,
    step_allowance,
)
from agentqueue_client import keys
from agentqueue_client.backoff import RetryPolicy, backoff_ms

# ---- backoff ------------------------------------------------------------------------


@pytest.mark.parametrize("multiplier", [0.0, 0.5, 1.0, 2.0, 1e6, float("inf"), float("nan")])
@pytest.mark.parametrize("jitter", [False, True])
@pytest.mark.parametrize("attempt", [-1, 0, 1, 2, 50, 10**9])
def test_backoff_with_max_zero_is_zero_and_never_raises(multiplier: float, jitter: bool,
                                                        attempt: int) -> None:
    """max_ms=0 (retry at once) crashed with a math domain error (log(0 / initial)); only
    2 of 9 hypothesis seeds found it."""
    assert backoff_ms(attempt, initial_ms=100, max_ms=0, multiplier=multiplier,
                      jitter=jitter, rand=lambda: 0.7) == 0
    assert RetryPolicy(initial_ms=100, max_ms=0, multiplier=multiplier,
                       jitter=jitter).delay_ms(attempt, rand=lambda: 0.7) == 0


def test_backoff_edges_of_the_degenerate_guard() -> None:
    """initial_ms=1 is a real delay (mutant `initial_ms <= 1`); a negative max is 0."""
    assert backoff_ms(1, initial_ms=1, max_ms=100, multiplier=2, jitter=False) == 1
    assert backoff_ms(4, initial_ms=1, max_ms=100, multiplier=2, jitter=False) == 8
    assert backoff_ms(1, initial_ms=5, max_ms=1, multiplier=2, jitter=False) == 1
    assert backoff_ms(2, initial_ms=-5, max_ms=100, multiplier=2, jitter=False) == 0
    assert backoff_ms(2, initial_ms=5, max_ms=-1, multiplier=2, jitter=False) == 0


# ---- scaling: stabilization ---------------------------------------------------------

UP_WINDOW = ScalingParams(min_replicas=0, max_replicas=10, lag_per_replica=10,
                          activation_lag=1, cooldown_s=30, up_window_s=60,
                          up_step_percent=1000, down_window_s=0, down_step_percent=1000)


def test_scale_up_holds_at_the_lowest_recommendation_of_the_window() -> None:
    """Waiting 20 -> 80 -> 90 within the 60 s up window holds at 2 replicas (HPA: the
    *lowest* recommendation of the window). The mutant taking the highest jumps to 8."""
    history = ScaleHistory()
    current = 2
    seen = []
    for t, waiting in [(0.0, 20), (10.0, 80), (20.0, 90)]:
        d = decide(UP_WINDOW, ScaleObservation(current, waiting), history, t)
        seen.append((d.recommendation, d.desired))
        current = d.desired
    assert seen == [(2, 2), (8, 2), (9, 2)]
    # Once 20 leaves the window (t > 60), the lowest of the window is 8: scale to 8.
    d = decide(UP_WINDOW, ScaleObservation(current, 90), history, 60.5)
    assert (d.recommendation, d.desired) == (9, 8)
    assert "scale-up stabilization window (60s)" in decide(
        UP_WINDOW, ScaleObservation(2, 90), ScaleHistory([(59.0, 2)]), 60.0).reason


def test_scaling_params_from_spec_carries_every_field() -> None:
    """Each field of the CRD's scaling spec reaches the decision (mutants dropping one
    keyword fell back to the dataclass default unnoticed)."""
    spec = ScalingSpec.model_validate({
        "minReplicas": 2, "maxReplicas": 7, "lagPerReplica": 13, "activationLag": 4,
        "cooldown": "45s", "fallbackReplicas": 3,
        "scaleUp": {"stabilizationWindow": "15s", "maxStepPercent": 300},
        "scaleDown": {"stabilizationWindow": "2m", "maxStepPercent": 20}})
    assert ScalingParams.from_spec(spec) == ScalingParams(
        min_replicas=2, max_replicas=7, lag_per_replica=13, activation_lag=4,
        cooldown_s=45.0, up_window_s=15.0, up_step_percent=300, down_window_s=120.0,
        down_step_percent=20, fallback_replicas=3)


def test_history_from_json_orders_samples_by_time() -> None:
    """Stored samples out of order come back oldest first (by time, not by value), so the
    512 kept are the newest ones."""
    h = ScaleHistory.from_json([[30.0, 1], [10.0, 9], [20.0, 5]])
    assert h.samples == [(10.0, 9), (20.0, 5), (30.0, 1)]
    many = [[float(t), 1000 - t] for t in range(MAX_HISTORY + 10)][::-1]
    kept = ScaleHistory.from_json(many).samples
    assert kept[0] == (10.0, 990) and kept[-1] == (float(MAX_HISTORY + 9), 1000 - MAX_HISTORY - 9)


def test_backoff_multiplier_between_one_and_two_and_rand_clamped() -> None:
    """A multiplier of 1.5 grows by 1.5 (mutant: floor 2.0); a huge attempt with it gives
    the cap without overflowing (mutant: overflow guard only above 2.0); a rand() above 1
    is clamped to the cap (mutant: clamp at 2.0)."""
    p = RetryPolicy(initial_ms=100, max_ms=10_000, multiplier=1.5, jitter=False)
    assert [p.delay_ms(n) for n in (1, 2, 3, 4)] == [100, 150, 225, 338]
    assert p.delay_ms(10**6) == 10_000
    assert RetryPolicy(initial_ms=100, max_ms=10_000, multiplier=0.5,
                       jitter=False).delay_ms(5) == 100  # below 1: constant, never shrinking
    jittered = RetryPolicy(initial_ms=100, max_ms=1000, multiplier=2.0, jitter=True)
    assert jittered.delay_ms(3, rand=lambda: 1.5) == 400
    assert jittered.delay_ms(3, rand=lambda: -0.5) == 0


def test_fallback_decision_is_step_limited_and_keeps_last_active() -> None:
    """Redis unreadable: fallbackReplicas within the step limit, said so in the reason;
    lastActiveTime is carried through (a lost one would restart the cooldown clock)."""
    p = ScalingParams(min_replicas=0, max_replicas=10, up_step_percent=100,
                      down_step_percent=50, fallback_replicas=8)
    d = decide(p, ScaleObservation(2, None, last_active=123.0), ScaleHistory(), 200.0)
    assert (d.desired, d.recommendation, d.last_active, d.fallback) == (4, 4, 123.0, True)
    assert d.reason == "Redis unreadable: fallbackReplicas 8 (step-limited to 4)"
    d = decide(p, ScaleObservation(6, None, last_active=None), ScaleHistory(), 200.0)
    assert (d.desired, d.reason) == (8, "Redis unreadable: fallbackReplicas 8")
    keep = ScalingParams(min_replicas=1, max_replicas=10)
    d = decide(keep, ScaleObservation(0, None, last_active=50.0), ScaleHistory(), 200.0)
    assert (d.desired, d.last_active, d.reason) == (
        1, 50.0, "Redis unreadable: keeping 1 replicas")


# ---- scaling: each rule's edges, by plain examples ------------------------------------
# (the property tests in test_scaling.py find these only with many examples)

BASE = ScalingParams(min_replicas=0, max_replicas=10, lag_per_replica=10, activation_lag=1,
                     cooldown_s=30, up_window_s=0, up_step_percent=1000, down_window_s=0,
                     down_step_percent=1000)


def params(**kw: object) -> ScalingParams:
    return ScalingParams(**{**BASE.__dict__, **kw})  # type: ignore[arg-type]


def test_min_replicas_one_is_the_recommendation_without_work() -> None:
    d = decide(params(min_replicas=1), ScaleObservation(3, 0), ScaleHistory(), 100.0)
    assert (d.recommendation, d.desired) == (1, 1)
    assert d.reason == "no work waiting → minReplicas 1"


def test_cooldown_reason_counts_down() -> None:
    d = decide(params(), ScaleObservation(2, 0, last_active=90.0), ScaleHistory(), 100.0)
    assert d.desired == 1 and "cooldown 30s ends in 20s" in d.reason


def test_one_waiting_message_marks_the_group_active() -> None:
    d = decide(params(), ScaleObservation(1, 1, last_active=5.0), ScaleHistory(), 100.0)
    assert d.last_active == 100.0


def test_paused_decision_keeps_last_active_and_recommends_zero() -> None:
    d = decide(params(), ScaleObservation(4, 50, last_active=42.0), ScaleHistory(), 100.0,
               paused=True)
    assert (d.desired, d.recommendation, d.last_active) == (0, 0, 42.0)


@pytest.mark.parametrize("window", [0.5, 0.9])
def test_sub_second_stabilization_windows_apply(window: float) -> None:
    """Windows shorter than a second still hold (mutants: only windows above 1 s)."""
    up = params(up_window_s=window)
    d = decide(up, ScaleObservation(2, 90), ScaleHistory([(99.8, 2)]), 100.0)
    assert (d.recommendation, d.desired) == (9, 2)
    down = params(down_window_s=window)
    d = decide(down, ScaleObservation(9, 20), ScaleHistory([(99.8, 9)]), 100.0)
    assert (d.recommendation, d.desired) == (2, 9)
    assert d.reason.endswith(f"held at 9 by the scale-down stabilization window ({window:g}s)")


def test_windows_exclude_a_sample_exactly_at_their_start() -> None:
    """A window of w seconds is (now - w, now]."""
    h = ScaleHistory([(40.0, 1), (70.0, 6)])
    assert h.lowest_since(40.0, 99) == 6 and h.highest_since(70.0, -1) == -1
    assert h.highest_since(39.9, -1) == 6 and h.lowest_since(39.9, 99) == 1


def test_scale_up_steps_round_up_and_down_steps_round_down() -> None:
    """HPA rounding: 50% of 3 is 2 replicas up (ceil), 1 down (floor)."""
    assert decide(params(up_step_percent=50), ScaleObservation(3, 100), ScaleHistory(),
                  100.0).desired == 5
    assert decide(params(down_step_percent=50), ScaleObservation(3, 10), ScaleHistory(),
                  100.0).desired == 2
    assert step_allowance(100, 50, up=False) == 50 and step_allowance(100, 50, up=True) == 50
    assert step_allowance(3, 50, up=False) == 1 and step_allowance(3, 50, up=True) == 2


def test_outside_min_max_is_said_in_the_reason() -> None:
    d = decide(params(max_replicas=4, down_step_percent=10), ScaleObservation(20, 100),
               ScaleHistory(), 100.0)
    assert d.desired == 4 and d.reason.endswith("kept within [0, 4]")
    d = decide(params(), ScaleObservation(3, 30), ScaleHistory(), 100.0)
    assert "kept within" not in d.reason and "maxStepPercent" not in d.reason


def test_history_record_keeps_exactly_the_samples_a_window_can_need() -> None:
    h = ScaleHistory([(1.0, 5)])
    h.record(2.0, 5, keep_s=100)
    assert h.samples == [(2.0, 5)]  # an equal older value can never be a window's extreme
    h = ScaleHistory([(10.0, 3), (15.0, 8)])
    h.record(20.0, 5, keep_s=10)
    assert h.samples == [(10.0, 3), (15.0, 8), (20.0, 5)]  # t == now - keep is kept
    h.record(25.0, 5, keep_s=10)
    assert h.samples == [(15.0, 8), (25.0, 5)]  # older than keep_s: dropped
    h = ScaleHistory([(5.0, 3)])
    h.record(5.0, 7, keep_s=10)
    assert h.samples == [(5.0, 3), (5.0, 7)]  # two decisions in the same second
    h = ScaleHistory([(1.0, 9), (50.0, 2)])  # 50.0: from a clock that went backwards
    h.record(10.0, 4, keep_s=100)
    assert h.samples == [(1.0, 9), (10.0, 4)]


# ---- keys ---------------------------------------------------------------------------

def test_static_keys_list_each_priority_level_once() -> None:
    """Level 0 is the plain queue key; levels 1..n-1 get their own key, once each."""
    p = keys.PartitionKeys("ns", "q", 2)
    q = p.queue_key
    base = [q, p.dead_letter, p.retry, p.meta, p.stats]
    assert p.all_static() == base
    assert p.all_static(3) == [q, f"{q}:1", f"{q}:2", *base[1:]]
    assert len(set(p.all_static(5))) == len(p.all_static(5)) == 5 + 4


def test_scan_pattern_is_the_acl_pattern() -> None:
    assert keys.queue_scan_pattern("ns", "q") == keys.queue_key_pattern("ns", "q") == "aq:{ns/q/*"
