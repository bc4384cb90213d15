"""planning.scaling: the pure scale decision."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentqueue.models.group import ScalingSpec
from agentqueue.planning.scaling import (
    MAX_HISTORY,
    ScaleHistory,
    ScaleObservation,
    ScalingParams,
    decide,
    step_allowance,
)

# No windows, no step limits unless a test sets them: each rule in isolation.
PLAIN = ScalingParams(min_replicas=0, max_replicas=10, lag_per_replica=10, activation_lag=1,
                      cooldown_s=30, up_window_s=0, up_step_percent=1000, down_window_s=0,
                      down_step_percent=1000)


def params(**kw: object) -> ScalingParams:
    return ScalingParams(**{**PLAIN.__dict__, **kw})  # type: ignore[arg-type]


def obs(current: int | None, waiting: int | None, last_active: float | None = None
        ) -> ScaleObservation:
    return ScaleObservation(current_replicas=current, waiting=waiting, last_active=last_active)


def one(p: ScalingParams, current: int | None, waiting: int | None, *, now: float = 1000.0,
        last_active: float | None = None, paused: bool = False) -> int:
    return decide(p, obs(current, waiting, last_active), ScaleHistory(), now, paused).desired


# ---- the recommendation -------------------------------------------------------------

@pytest.mark.parametrize(("waiting", "expected"), [(1, 1), (10, 1), (11, 2), (45, 5),
                                                   (100, 10), (10_000, 10)])
def test_desired_is_ceil_of_waiting_per_replica_clamped(waiting: int, expected: int) -> None:
    assert one(PLAIN, 3, waiting) == expected


def test_min_replicas_is_a_floor_even_without_work() -> None:
    assert one(params(min_replicas=2), 5, 0, last_active=None) == 2
    assert one(params(min_replicas=2), 0, 0) == 2
    assert one(params(min_replicas=2), 2, 1) == 2


def test_activation_lag_gates_scale_from_zero_only() -> None:
    p = params(activation_lag=5)
    assert one(p, 0, 4) == 0
    assert one(p, 0, 5) == 1
    assert one(p, 1, 2) == 1  # already active: the normal rule applies


def test_scale_to_zero_only_after_cooldown_since_last_activity() -> None:
    p = params(cooldown_s=30)
    d = decide(p, obs(3, 0, last_active=980.0), ScaleHistory(), 1000.0)
    assert d.desired == 1 and "cooldown" in d.reason
    assert one(p, 1, 0, now=1009.9, last_active=980.0) == 1
    d = decide(p, obs(1, 0, last_active=980.0), ScaleHistory(), 1010.0)
    assert d.desired == 0 and "zero" in d.reason and d.patch


def test_never_active_means_cooldown_has_passed() -> None:
    # lastActiveTime is kept in status; none at all means no work was ever seen.
    assert one(PLAIN, 2, 0, last_active=None) == 0


def test_work_refreshes_last_active() -> None:
    d = decide(PLAIN, obs(0, 3, last_active=5.0), ScaleHistory(), 1000.0)
    assert d.last_active == 1000.0
    d = decide(PLAIN, obs(1, 0, last_active=5.0), ScaleHistory(), 1000.0)
    assert d.last_active == 5.0


def test_zero_stays_zero_without_work() -> None:
    d = decide(PLAIN, obs(0, 0), ScaleHistory(), 1000.0)
    assert d.desired == 0 and not d.patch


def test_current_none_counts_as_zero() -> None:
    assert one(PLAIN, None, 25) == 1  # from zero: one step of at least 1
    assert one(PLAIN, 2, 25) == 3


# ---- pause and fallback -----------------------------------------------------------------

def test_paused_goes_to_zero_at_once_ignoring_limits() -> None:
    p = params(min_replicas=3, down_step_percent=10, down_window_s=600)
    d = decide(p, obs(8, 500), ScaleHistory(), 1000.0, paused=True)
    assert d.desired == 0 and d.patch and "paused" in d.reason


def test_unreadable_redis_uses_fallback_replicas() -> None:
    d = decide(params(fallback_replicas=4), obs(4, None), ScaleHistory(), 1000.0)
    assert d.desired == 4 and d.fallback and not d.patch
    assert one(params(fallback_replicas=4), 2, None) == 4
    assert one(params(fallback_replicas=4, up_step_percent=50), 2, None) == 3


def test_unreadable_redis_without_fallback_keeps_current() -> None:
    d = decide(PLAIN, obs(7, None), ScaleHistory(), 1000.0)
    assert d.desired == 7 and not d.patch and "keeping" in d.reason
    assert one(params(max_replicas=5), 7, None) == 5  # bounds still hold


def test_unreadable_redis_is_not_recorded() -> None:
    h = ScaleHistory()
    decide(params(down_window_s=60), obs(3, None), h, 1000.0)
    assert h.samples == []


# ---- step limits ----------------------------------------------------------------------

@pytest.mark.parametrize(("current", "pct", "up", "expected"), [
    (0, 100, True, 1), (1, 100, True, 1), (3, 100, True, 3), (3, 50, True, 2),
    (3, 50, False, 1), (5, 50, False, 2), (1, 50, False, 1), (10, 10, False, 1),
    (200, 1, True, 2),
])
def test_step_allowance(current: int, pct: int, up: bool, expected: int) -> None:
    assert step_allowance(current, pct, up) == expected


def test_scale_up_is_step_limited_from_zero_one_at_a_time() -> None:
    p = params(up_step_percent=100)
    seen, current = [], 0
    for tick in range(6):
        current = one(p, current, 45, now=1000.0 + tick)
        seen.append(current)
    assert seen == [1, 2, 4, 5, 5, 5]


def test_scale_down_step_limit_and_reason() -> None:
    p = params(down_step_percent=50)
    d = decide(p, obs(5, 10), ScaleHistory(), 1000.0)
    assert d.desired == 3 and "maxStepPercent" in d.reason


def test_bounds_win_over_step_limits() -> None:
    assert one(params(min_replicas=4, up_step_percent=10), 0, 0) == 4  # e.g. after a pause
    assert one(params(max_replicas=3, down_step_percent=10), 9, 100) == 3


# ---- stabilization windows ----------------------------------------------------------------

def test_scale_down_uses_highest_recommendation_of_the_window() -> None:
    p = params(down_window_s=60)
    h = ScaleHistory()
    assert decide(p, obs(5, 50), h, 1000.0).desired == 5
    d = decide(p, obs(5, 10), h, 1030.0)
    assert d.desired == 5 and "stabilization" in d.reason
    assert decide(p, obs(5, 10), h, 1059.0).desired == 5
    assert decide(p, obs(5, 10), h, 1060.5).desired == 1  # the 5 left the window


def test_scale_up_uses_lowest_recommendation_of_the_window() -> None:
    p = params(up_window_s=10)
    h = ScaleHistory()
    assert decide(p, obs(1, 10), h, 1000.0).desired == 1
    assert decide(p, obs(1, 90), h, 1005.0).desired == 1  # the 1 is in the window
    assert decide(p, obs(1, 90), h, 1010.5).desired == 9


def test_scale_to_zero_skips_the_down_window() -> None:
    # The cooldown is the stabilization of the last step to zero.
    p = params(down_window_s=300, cooldown_s=30)
    h = ScaleHistory()
    decide(p, obs(1, 5, last_active=None), h, 1000.0)
    assert decide(p, obs(1, 0, last_active=1000.0), h, 1031.0).desired == 0


def test_spec_defaults_work_end_to_end() -> None:
    spec = ScalingSpec.model_validate({"minReplicas": 0, "maxReplicas": 5, "lagPerReplica": 10,
                                       "cooldown": "2s", "scaleDown": {
                                           "stabilizationWindow": "1s", "maxStepPercent": 50}})
    h = ScaleHistory()
    current, last_active, t = 0, None, 0.0
    for _ in range(10):  # 45 waiting: climbs to 5
        d = decide(spec, obs(current, 45, last_active), h, t)
        current, last_active, t = d.desired, d.last_active, t + 0.2
    assert current == 5
    steps = [current]
    for _ in range(40):  # drained: down by ≤ 50% per step, zero after the cooldown
        d = decide(spec, obs(current, 0, last_active), h, t)
        if d.desired != current:
            steps.append(d.desired)
            assert last_active is not None and (d.desired > 0 or t - last_active >= 2.0)
        current, last_active, t = d.desired, d.last_active, t + 0.2
    assert steps[-1] == 0
    assert all(b >= a // 2 for a, b in zip(steps, steps[1:], strict=False))


# ---- history ------------------------------------------------------------------------------

def test_history_round_trips_through_json() -> None:
    h = ScaleHistory()
    for i, v in enumerate([3, 1, 4, 1, 5]):
        h.record(100.0 + i, v, 60)
    again = ScaleHistory.from_json(json.loads(json.dumps(h.to_json())))
    assert again == h


def test_history_from_json_drops_garbage() -> None:
    h = ScaleHistory.from_json([[1, 2], "x", [1], [None, 3], [3.5, 4]])
    assert h.samples == [(1.0, 2), (3.5, 4)]
    assert ScaleHistory.from_json(None).samples == []


def test_history_is_bounded_by_time_and_count() -> None:
    h = ScaleHistory()
    for i in range(5000):
        h.record(float(i), i % 7, keep_s=100)
    assert all(t > 4999 - 100 - 1 for t, _ in h.samples)
    h = ScaleHistory()
    for i in range(5000):
        h.record(float(i), -i if i % 2 else i, keep_s=1e9)  # worst case: nothing dominated
    assert len(h.samples) <= MAX_HISTORY


@given(st.lists(st.integers(0, 30), min_size=1, max_size=60), st.floats(0.5, 40))
def test_history_compaction_is_exact(values: list[int], window: float) -> None:
    h = ScaleHistory()
    full: list[tuple[float, int]] = []
    for i, v in enumerate(values):
        h.record(float(i), v, keep_s=40)
        full.append((float(i), v))
    now = float(len(values) - 1)
    in_window = [v for t, v in full if t > now - window]
    assert h.lowest_since(now - window, -1) == min(in_window, default=-1)
    assert h.highest_since(now - window, -1) == max(in_window, default=-1)


# ---- properties ---------------------------------------------------------------------------

@st.composite
def scenario(draw: st.DrawFn) -> tuple[ScalingParams, list[tuple[int | None, bool]], int]:
    lo = draw(st.integers(0, 5))
    hi = draw(st.integers(max(lo, 1), 30))
    p = ScalingParams(
        min_replicas=lo, max_replicas=hi, lag_per_replica=draw(st.integers(1, 50)),
        activation_lag=draw(st.integers(1, 20)), cooldown_s=draw(st.sampled_from([0, 1, 5, 30])),
        up_window_s=draw(st.sampled_from([0, 2, 10])),
        up_step_percent=draw(st.integers(1, 1000)),
        down_window_s=draw(st.sampled_from([0, 3, 60])),
        down_step_percent=draw(st.integers(1, 1000)),
        fallback_replicas=draw(st.none() | st.integers(0, 40)))
    ticks = draw(st.lists(st.tuples(st.none() | st.integers(0, 2000), st.booleans()),
                          min_size=1, max_size=40))
    start = draw(st.integers(0, 40))
    return p, ticks, start


@settings(max_examples=300, deadline=None)
@given(scenario())
def test_property_bounds_and_step(case: tuple[ScalingParams, list[tuple[int | None, bool]],
                                              int]) -> None:
    p, ticks, current = case
    h = ScaleHistory()
    last_active: float | None = None
    for i, (waiting, paused) in enumerate(ticks):
        d = decide(p, obs(current, waiting, last_active), h, 1000.0 + i, paused=paused)
        if paused:
            assert d.desired == 0
        else:
            assert p.min_replicas <= d.desired <= p.max_replicas
            if p.min_replicas <= current <= p.max_replicas:
                up = step_allowance(current, p.up_step_percent, True)
                down = step_allowance(current, p.down_step_percent, False)
                assert current - down <= d.desired <= current + up
        assert d.patch == (d.desired != current)
        if waiting is not None and waiting > 0 and not paused:
            assert d.last_active == 1000.0 + i
        current, last_active = d.desired, d.last_active
    assert len(json.dumps(h.to_json())) < 64 * 1024


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 100_000), st.integers(1, 500), st.integers(0, 10), st.integers(1, 50))
def test_property_steady_load_converges(waiting: int, per: int, lo: int, span: int) -> None:
    p = params(min_replicas=lo, max_replicas=lo + span, lag_per_replica=per,
               up_step_percent=100, down_step_percent=50, down_window_s=5)
    h, current = ScaleHistory(), 0
    for i in range(80):
        current = decide(p, obs(current, waiting), h, float(i)).desired
    assert current == max(lo, min(lo + span, math.ceil(waiting / per)))
