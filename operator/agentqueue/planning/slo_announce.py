"""When the keeper announces its queue's SLO (pure; `slo.assess` says what it is).

The SLOBreached condition in status is the record; the keeper remembers what it last
wrote there (`Announced`) so that it neither rewrites the condition nor repeats Events on
every evaluation. `announce` decides, from that memory, the fresh assessment and the
condition as the watched body shows it:

* write the condition on a transition (no condition written yet, another status or
  reason, or another set of breached objectives), on a message change once
  ``min_interval`` seconds passed since the last write (message refreshes are throttled
  like other status figures), and when the body still shows something else
  ``heal_after`` seconds after our write (another writer dropped it: write it again);
* remove it when the spec sets no objective any more;
* post a Warning Event when an objective is newly breached, and a Normal ``SLOMet`` when
  every announced breach recovered (an unmeasured objective is neither: ``Unknown``
  keeps the breaches as announced);
* the first look after a start adopts what status shows: the condition as written, and
  a breach already shown (status ``True``) as announced, so a restart repeats no Event.

`observe_counters` closes the retry window (maxRetryRate) with each observation.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Literal, NamedTuple

from .. import reasons
from .slo import QueueSample, RetryCounters, RetryWindow, SLOStatus, retry_window

Condition = tuple[str, str, str]
"""(status, reason, message) of the SLOBreached condition."""


class Remove(enum.Enum):
    """The marker of a condition to remove (`SLODecision.write`)."""

    CONDITION = "remove"


REMOVE = Remove.CONDITION


@dataclass(frozen=True)
class Announced:
    """The keeper's memory of what it announced (status is the record)."""

    written: Condition | None = None
    """The condition we last wrote, or found on the first look (None: none)."""
    written_at: float = 0.0
    """When (monotonic seconds)."""
    breached: frozenset[str] | None = None
    """Objectives announced as breached (None: not known yet, i.e. no look so far)."""


@dataclass(frozen=True)
class SLODecision:
    """What to do after one evaluation.

    Apply `adopted` first, then write; only once the write succeeded apply `memory` and
    post `event` (a failed write records nothing beyond the adoption: the next evaluation
    decides again). Without a write there is no event."""

    adopted: Announced
    """The memory before the write: the one given, or on the first look what status shows."""
    memory: Announced
    """The memory after the write."""
    write: Condition | Literal[Remove.CONDITION] | None = None
    """None: leave the condition; REMOVE: remove it; else set it to (status, reason, message)."""
    event: tuple[str, str, str] | None = None
    """("Warning" | "Normal", reason, message) to post after the write, or None."""


def announce(memory: Announced, result: SLOStatus | None, seen: Condition | None,
             now: float, min_interval: float, heal_after: float) -> SLODecision:
    """Decide from `memory`, the assessment `result` (None: the spec sets no objective)
    and `seen`, the SLOBreached condition in the watched body (None: absent). `now` is
    monotonic seconds, like `Announced.written_at`."""
    if memory.breached is None:  # first look since start: what status says was announced
        memory = Announced(seen, now, result.breached if result is not None and seen is not None
                           and seen[0] == "True" else frozenset())
    if result is None:  # no objective (any more)
        return SLODecision(memory, Announced(None, now, frozenset()),
                           REMOVE if seen is not None else None)
    announced = memory.breached
    assert announced is not None
    desired = (result.status, result.reason, result.message)
    known = result.breached if result.status != "Unknown" else announced
    written = memory.written
    transition = written is None or desired[:2] != written[:2] or known != announced
    refresh = (written is not None and desired[2] != written[2]
               and now - memory.written_at >= min_interval)
    healed = (written is not None and (seen is None or seen[:2] != written[:2])
              and now - memory.written_at >= heal_after)
    if not (transition or refresh or healed):
        return SLODecision(memory, memory)
    event: tuple[str, str, str] | None = None
    if known - announced:
        event = ("Warning", result.reason, f"SLO breached: {result.message}")
    elif announced and result.status == "False":
        event = ("Normal", reasons.SLO_MET, f"SLO recovered: {result.message}")
    return SLODecision(memory, Announced(desired, now, known), desired, event)


class RetryStep(NamedTuple):
    counters: RetryCounters | None
    """The start of the next window."""
    window: RetryWindow | None
    """Retries and deliveries between the last two observations (None: the last failed)."""


def observe_counters(counters: RetryCounters | None, sample: QueueSample | None) -> RetryStep:
    """A new observation closes the retry window that started at `counters`. A failed one
    (`sample` None) leaves no figure but keeps the start: the next window spans the gap (a
    reset in between shows as counters going back, or as a Redis restart, after which the
    caller drops the start)."""
    if sample is None:
        return RetryStep(counters, None)
    return RetryStep(sample.counters, retry_window(counters, sample.counters))
