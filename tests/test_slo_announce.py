"""When the keeper writes the SLOBreached condition and posts SLO Events
(planning/slo_announce.py): pure, mutation-tested."""

from __future__ import annotations

import pytest

from agentqueue import reasons
from agentqueue.planning import slo
from agentqueue.planning.slo import Breach, QueueSample, RetryCounters, RetryWindow, SLOStatus
from agentqueue.planning.slo_announce import (
    REMOVE,
    Announced,
    Remove,
    RetryStep,
    SLODecision,
    announce,
    observe_counters,
)

MIN = 2.0  # min_interval: message refreshes
HEAL = 5.0  # heal_after: another writer dropped ours
T0 = 100.0

DEPTH = ("True", reasons.DEPTH_EXCEEDED, "depth 12 is 2 over maxDepth 10")
MET = ("False", reasons.SLO_MET, "all objectives met")
UNKNOWN = ("Unknown", reasons.SLO_NOT_MEASURED, "maxDepth (no figure)")


def result(cond: tuple[str, str, str], *breached: str) -> SLOStatus:
    status, reason, message = cond
    return SLOStatus(status, reason, message, tuple(Breach(o, 2.0, 1.0) for o in breached), {})


def depth(message: str = DEPTH[2]) -> SLOStatus:
    return result((DEPTH[0], DEPTH[1], message), "maxDepth")


def run(memory: Announced, res: SLOStatus | None, seen: tuple[str, str, str] | None,
        now: float) -> SLODecision:
    return announce(memory, res, seen, now, MIN, HEAL)


def mem(written: tuple[str, str, str] | None, *breached: str,
        at: float = T0) -> Announced:
    return Announced(written, at, frozenset(breached))


# --- the first look after a start ----------------------------------------------------------

def test_the_first_look_adopts_a_breach_status_shows_and_repeats_nothing() -> None:
    d = run(Announced(), depth(), DEPTH, T0)
    adopted = Announced(DEPTH, T0, frozenset({"maxDepth"}))
    assert d == SLODecision(adopted, adopted, None, None)


def test_the_first_look_adopts_a_met_status_and_writes_nothing() -> None:
    d = run(Announced(), result(MET), MET, T0)
    adopted = Announced(MET, T0, frozenset())
    assert d == SLODecision(adopted, adopted, None, None)


def test_the_first_look_without_a_condition_writes_and_announces_a_breach() -> None:
    d = run(Announced(), depth(), None, T0)
    assert d.adopted == Announced(None, T0, frozenset())
    assert d.write == DEPTH
    assert d.memory == Announced(DEPTH, T0, frozenset({"maxDepth"}))
    assert d.event == ("Warning", reasons.DEPTH_EXCEEDED, f"SLO breached: {DEPTH[2]}")


def test_the_first_look_at_a_met_condition_announces_a_new_breach() -> None:
    d = run(Announced(), depth(), MET, T0 + 1)
    assert d.adopted == Announced(MET, T0 + 1, frozenset())
    assert d.write == DEPTH
    assert d.event is not None and d.event[0] == "Warning"


def test_the_first_look_at_a_breach_the_assessment_no_longer_sees() -> None:
    # Status shows a breach, the assessment says met: adopted as nothing announced, so
    # the recovery is written without a Normal Event (kept as the handler had it).
    d = run(Announced(), result(MET), DEPTH, T0)
    assert d.adopted == Announced(DEPTH, T0, frozenset())
    assert d.write == MET
    assert d.memory == Announced(MET, T0, frozenset())
    assert d.event is None


def test_the_first_look_with_no_objective_removes_what_status_shows() -> None:
    d = run(Announced(), None, DEPTH, T0)
    assert d == SLODecision(Announced(DEPTH, T0, frozenset()),
                            Announced(None, T0, frozenset()), REMOVE, None)
    assert d.write is Remove.CONDITION


def test_the_first_look_with_no_objective_and_no_condition() -> None:
    d = run(Announced(), None, None, T0)
    assert d == SLODecision(Announced(None, T0, frozenset()),
                            Announced(None, T0, frozenset()), None, None)


def test_a_later_look_does_not_adopt_again() -> None:
    memory = mem(MET, at=T0 - 50)
    d = run(memory, depth(), DEPTH, T0)  # status shows a breach we never announced
    assert d.adopted == memory
    assert d.event == ("Warning", reasons.DEPTH_EXCEEDED, f"SLO breached: {DEPTH[2]}")


# --- no objective any more -----------------------------------------------------------------

def test_no_objective_removes_the_condition_status_shows() -> None:
    memory = mem(DEPTH, "maxDepth")
    d = run(memory, None, DEPTH, T0 + 1)
    assert d == SLODecision(memory, Announced(None, T0 + 1, frozenset()), REMOVE, None)


def test_no_objective_and_no_condition_writes_nothing_but_forgets() -> None:
    memory = mem(DEPTH, "maxDepth")
    d = run(memory, None, None, T0 + 1)
    assert d == SLODecision(memory, Announced(None, T0 + 1, frozenset()), None, None)


# --- transitions -----------------------------------------------------------------------------

def test_nothing_changed_writes_nothing() -> None:
    memory = mem(DEPTH, "maxDepth")
    assert run(memory, depth(), DEPTH, T0 + 60) == SLODecision(memory, memory, None, None)


def test_a_breach_is_written_and_announced_once() -> None:
    memory = mem(MET, at=T0)
    d = run(memory, depth(), MET, T0 + 0.5)
    assert d == SLODecision(memory, Announced(DEPTH, T0 + 0.5, frozenset({"maxDepth"})),
                            DEPTH, ("Warning", reasons.DEPTH_EXCEEDED,
                                    f"SLO breached: {DEPTH[2]}"))
    again = run(d.memory, depth(), DEPTH, T0 + 1)
    assert again.write is None and again.event is None


def test_a_recovery_is_written_with_a_normal_event() -> None:
    memory = mem(DEPTH, "maxDepth")
    d = run(memory, result(MET), DEPTH, T0 + 0.5)
    assert d == SLODecision(memory, Announced(MET, T0 + 0.5, frozenset()), MET,
                            ("Normal", reasons.SLO_MET, f"SLO recovered: {MET[2]}"))


def test_met_after_nothing_announced_posts_no_event() -> None:
    memory = mem(UNKNOWN)
    d = run(memory, result(MET), UNKNOWN, T0 + 0.5)
    assert d.write == MET and d.event is None
    assert d.memory == Announced(MET, T0 + 0.5, frozenset())


def test_a_reason_change_alone_is_a_transition() -> None:
    memory = mem(DEPTH, "maxDepth")
    other = ("True", reasons.OBJECTIVES_BREACHED, DEPTH[2])
    d = run(memory, result(other, "maxDepth"), DEPTH, T0 + 0.5)
    assert d.write == other and d.event is None
    assert d.memory == Announced(other, T0 + 0.5, frozenset({"maxDepth"}))


def test_a_status_change_alone_is_a_transition() -> None:
    memory = mem(DEPTH)
    other = ("Unknown", DEPTH[1], DEPTH[2])
    d = run(memory, result(other), DEPTH, T0 + 0.5)
    assert d.write == other and d.event is None


def test_another_set_of_breaches_is_a_transition() -> None:
    two = ("True", reasons.OBJECTIVES_BREACHED, "two")
    memory = mem(two, "maxDepth", "maxWaitingAge")
    d = run(memory, result(two, "maxDepth", "maxRetryRate"), two, T0 + 0.5)
    assert d.write == two
    assert d.event == ("Warning", reasons.OBJECTIVES_BREACHED, "SLO breached: two")
    assert d.memory.breached == {"maxDepth", "maxRetryRate"}


def test_a_partial_recovery_is_written_without_an_event() -> None:
    two = ("True", reasons.OBJECTIVES_BREACHED, "two")
    memory = mem(two, "maxDepth", "maxWaitingAge")
    d = run(memory, result(two, "maxDepth"), two, T0 + 0.5)
    assert d.write == two and d.event is None
    assert d.memory == Announced(two, T0 + 0.5, frozenset({"maxDepth"}))


# --- unmeasured objectives -------------------------------------------------------------------

def test_unknown_keeps_the_announced_breaches() -> None:
    memory = mem(DEPTH, "maxDepth")
    d = run(memory, result(UNKNOWN), DEPTH, T0 + 0.5)
    assert d == SLODecision(memory, Announced(UNKNOWN, T0 + 0.5, frozenset({"maxDepth"})),
                            UNKNOWN, None)
    back = run(d.memory, depth(), UNKNOWN, T0 + 1)  # the same breach again: no new Event
    assert back.write == DEPTH and back.event is None
    met = run(d.memory, result(MET), UNKNOWN, T0 + 1)  # recovered while unmeasured
    assert met.event == ("Normal", reasons.SLO_MET, f"SLO recovered: {MET[2]}")


def test_unknown_with_nothing_announced() -> None:
    memory = mem(MET)
    d = run(memory, result(UNKNOWN), MET, T0 + 0.5)
    assert d == SLODecision(memory, Announced(UNKNOWN, T0 + 0.5, frozenset()), UNKNOWN, None)


def test_a_true_status_without_breaches_is_not_unknown() -> None:
    # `known` comes from the assessment for any status but Unknown.
    memory = mem(DEPTH, "maxDepth")
    d = run(memory, result(DEPTH), DEPTH, T0 + 0.5)
    assert d.write == DEPTH and d.memory.breached == frozenset() and d.event is None


# --- throttled message refreshes --------------------------------------------------------------

@pytest.mark.parametrize(("after", "writes"), [(MIN - 0.5, False), (MIN, True), (MIN + 1, True)])
def test_a_new_message_is_written_after_the_minimum_interval(after: float,
                                                              writes: bool) -> None:
    memory = mem(DEPTH, "maxDepth", at=T0)
    new = depth("depth 13 is 3 over maxDepth 10")
    d = run(memory, new, DEPTH, T0 + after)
    if writes:
        written = (DEPTH[0], DEPTH[1], new.message)
        assert d == SLODecision(memory, Announced(written, T0 + after,
                                                  frozenset({"maxDepth"})), written, None)
    else:
        assert d == SLODecision(memory, memory, None, None)


def test_an_unchanged_message_is_not_refreshed() -> None:
    memory = mem(DEPTH, "maxDepth", at=T0)
    assert run(memory, depth(), DEPTH, T0 + 1000).write is None


# --- healing: another writer dropped or replaced the condition ----------------------------------

@pytest.mark.parametrize("seen", [None, MET, ("True", reasons.OBJECTIVES_BREACHED, DEPTH[2]),
                                  ("False", DEPTH[1], DEPTH[2])])
@pytest.mark.parametrize(("after", "writes"), [(HEAL - 0.5, False), (HEAL, True),
                                               (HEAL + 1, True)])
def test_a_dropped_condition_is_written_again_after_a_while(
        seen: tuple[str, str, str] | None, after: float, writes: bool) -> None:
    memory = mem(DEPTH, "maxDepth", at=T0)
    d = run(memory, depth(), seen, T0 + after)
    if writes:
        assert d == SLODecision(memory, Announced(DEPTH, T0 + after, frozenset({"maxDepth"})),
                                DEPTH, None)
    else:
        assert d == SLODecision(memory, memory, None, None)


def test_another_message_in_status_is_no_reason_to_heal() -> None:
    memory = mem(DEPTH, "maxDepth", at=T0)
    seen = (DEPTH[0], DEPTH[1], "an older message")
    assert run(memory, depth(), seen, T0 + HEAL + 100).write is None


def test_healing_and_refreshing_use_their_own_intervals() -> None:
    # The minimum interval passed, the heal time not: only a message change is written.
    memory = mem(DEPTH, "maxDepth", at=T0)
    assert run(memory, depth(), None, T0 + MIN + 0.5).write is None
    new = depth("new")
    assert run(memory, new, None, T0 + MIN + 0.5).write == (DEPTH[0], DEPTH[1], "new")
    assert announce(memory, depth(), None, T0 + 3.0, 1.0, 4.0).write is None
    assert announce(memory, depth(), None, T0 + 4.0, 10.0, 4.0).write == DEPTH
    assert announce(memory, new, DEPTH, T0 + 4.0, 4.0, 10.0).write == (DEPTH[0], DEPTH[1],
                                                                        "new")


# --- the retry window ---------------------------------------------------------------------------

C1 = RetryCounters(retries={0: 1}, deliveries={(0, "g"): 10})
C2 = RetryCounters(retries={0: 3}, deliveries={(0, "g"): 20})


def test_an_observation_closes_the_retry_window() -> None:
    step = observe_counters(C1, QueueSample(length=1, oldest_waiting_age_s=None, counters=C2))
    assert step == RetryStep(C2, RetryWindow(2, 10, why=""))
    assert step.counters is C2 and step.window is not None and step.window.rate == 0.2


def test_the_first_observation_starts_the_window() -> None:
    step = observe_counters(None, QueueSample(length=1, oldest_waiting_age_s=None, counters=C1))
    assert step == RetryStep(C1, RetryWindow(why=slo.NO_RETRY_WINDOW))


def test_a_failed_observation_keeps_the_start_and_has_no_window() -> None:
    assert observe_counters(C1, None) == RetryStep(C1, None)
    later = observe_counters(C1, QueueSample(length=0, oldest_waiting_age_s=None, counters=C2))
    assert later.window == RetryWindow(2, 10, why="")  # spans the gap


def test_a_sample_without_counters_ends_the_window() -> None:
    step = observe_counters(C1, QueueSample(length=0, oldest_waiting_age_s=None))
    assert step == RetryStep(None, RetryWindow(why=slo.NO_RETRY_WINDOW))
