"""Service-level objectives of a queue, evaluated from observed figures. Pure.

What each objective is measured on (docs/observability.md):

* ``maxDepth``, waiting work. Stream with ConsumerGroups: the largest ``lag + pending +
  due retries`` over the queue's groups (the figure the scaler uses, from the shared
  poll). Stream without a ConsumerGroup: the stream length (nobody reads, so every
  entry waits). List: the queued elements of every priority level (in-flight elements
  in processing lists are not counted, like pending ones are in a Stream).
* ``maxWaitingAge``, the oldest waiting message. Stream: the larger of the oldest
  pending entry's idle time (since its last delivery, from the shared poll) and the age
  of the oldest entry not yet delivered to some group (its id's timestamp; with no
  group, the stream's first entry). List: the age of the oldest queued element (its
  SDK message id starts with the enqueue time in ms).
* ``maxRetryRate`` is not measured: Redis keeps no count of retries (a retried message
  comes back as a new entry), so the operator has no honest figure for it.
* PubSub channels store nothing: no depth and no age to measure.

An objective that cannot be measured is reported as such (condition message, no
metric series), never as a made-up zero.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from .. import reasons
from ..models.common import parse_duration
from ..models.queue import SLOSpec

OBJECTIVES = ("maxDepth", "maxWaitingAge", "maxRetryRate")
_REASONS = {"maxDepth": reasons.DEPTH_EXCEEDED, "maxWaitingAge": reasons.WAITING_AGE_EXCEEDED,
            "maxRetryRate": reasons.RETRY_RATE_EXCEEDED}
RETRIES_NOT_COUNTED = ("Redis keeps no count of retries (a retried message comes back as "
                       "a new entry)")
PUBSUB_STORES_NOTHING = "a PubSub channel stores no messages"


@dataclass(frozen=True)
class QueueLoad:
    """The figures the objectives are checked against; None: not measured (the reason
    is in `not_measured`)."""

    depth: int | None = None  # waiting work (see the module docstring)
    oldest_waiting_age_s: float | None = None
    deliveries: int | None = None  # deliveries in the window (for the retry rate)
    retries: int | None = None
    not_measured: Mapping[str, str] = field(default_factory=dict)  # objective -> why
    notes: tuple[str, ...] = ()  # caveats worth a word in the condition message


@dataclass(frozen=True)
class GroupSample:
    """One ConsumerGroup's figures from the shared poll (summed over partitions)."""

    lag: int
    pending: int
    due_retries: int
    oldest_pending_age_s: float

    @property
    def waiting(self) -> int:
        return max(0, self.lag) + max(0, self.pending) + max(0, self.due_retries)


@dataclass(frozen=True)
class QueueSample:
    """The queue's own observation (every drift interval)."""

    length: int  # stream entries, or queued List elements, over all partitions
    oldest_waiting_age_s: float | None  # None: not read (no maxWaitingAge)


@dataclass(frozen=True)
class Breach:
    objective: str  # maxDepth | maxWaitingAge | maxRetryRate
    observed: float
    limit: float

    @property
    def message(self) -> str:
        over = self.observed - self.limit
        if self.objective == "maxWaitingAge":
            return (f"oldest waiting message is {self.observed:.1f}s old, "
                    f"{over:.1f}s over maxWaitingAge {self.limit:g}s")
        if self.objective == "maxRetryRate":
            return (f"retry rate {self.observed:.3f} is {over:.3f} over maxRetryRate "
                    f"{self.limit:.3f}")
        return f"depth {int(self.observed)} is {int(over)} over maxDepth {int(self.limit)}"


def configured(slo: SLOSpec | None) -> tuple[str, ...]:
    """The objectives `slo` sets, in a fixed order."""
    if slo is None:
        return ()
    values = {"maxDepth": slo.max_depth, "maxWaitingAge": slo.max_waiting_age,
              "maxRetryRate": slo.max_retry_rate}
    return tuple(o for o in OBJECTIVES if values[o] is not None)


def queue_load(queue_type: str, queue: QueueSample | None,
               groups: Mapping[str, GroupSample | None]) -> QueueLoad:
    """Build the load from what was observed.

    `groups`: the queue's ConsumerGroups by name, with their latest figures (None when
    there are none, or they are stale). `queue`: the queue's own observation, None
    before the first one."""
    not_measured = {"maxRetryRate": RETRIES_NOT_COUNTED}
    notes: list[str] = []
    if queue_type == "PubSub":
        return QueueLoad(not_measured={"maxDepth": PUBSUB_STORES_NOTHING,
                                       "maxWaitingAge": PUBSUB_STORES_NOTHING,
                                       **not_measured})
    not_yet = "no current observation of the queue"
    depth: int | None = None
    age: float | None = None
    fresh = {name: s for name, s in groups.items() if s is not None}
    missing = sorted(name for name, s in groups.items() if s is None)
    if queue_type == "Stream" and groups:
        if fresh:
            depth = max(s.waiting for s in fresh.values())
            if missing:
                notes.append(f"no current figures from ConsumerGroup(s) {', '.join(missing)}")
        else:
            not_measured["maxDepth"] = (f"no current figures from ConsumerGroup(s) "
                                        f"{', '.join(missing)}")
            if queue is not None and queue.oldest_waiting_age_s is not None:
                notes.append("waiting age counts undelivered entries only (no current "
                             "group figures for pending ones)")
    elif queue is not None:
        depth = queue.length
    else:
        not_measured["maxDepth"] = not_yet
    if queue is None:
        not_measured["maxWaitingAge"] = not_yet
    elif queue.oldest_waiting_age_s is None:
        not_measured["maxWaitingAge"] = "not read (no maxWaitingAge was set when observed)"
    else:
        age = max([queue.oldest_waiting_age_s,
                   *(s.oldest_pending_age_s for s in fresh.values())])
    return QueueLoad(depth=depth, oldest_waiting_age_s=age, not_measured=not_measured,
                     notes=tuple(notes))


def evaluate(slo: SLOSpec | None, load: QueueLoad) -> list[Breach]:
    """The objectives breached now, with by how much (unmeasured ones never are)."""
    if slo is None:
        return []
    out = []
    if slo.max_depth is not None and load.depth is not None and load.depth > slo.max_depth:
        out.append(Breach("maxDepth", load.depth, slo.max_depth))
    if slo.max_waiting_age is not None and load.oldest_waiting_age_s is not None:
        limit = parse_duration(slo.max_waiting_age)
        if load.oldest_waiting_age_s > limit:
            out.append(Breach("maxWaitingAge", load.oldest_waiting_age_s, limit))
    if (slo.max_retry_rate is not None and load.deliveries and load.retries is not None):
        rate = load.retries / load.deliveries
        if rate > slo.max_retry_rate:
            out.append(Breach("maxRetryRate", rate, slo.max_retry_rate))
    return out


def _measured(objective: str, load: QueueLoad) -> bool:
    if objective == "maxDepth":
        return load.depth is not None
    if objective == "maxWaitingAge":
        return load.oldest_waiting_age_s is not None
    return bool(load.deliveries) and load.retries is not None


@dataclass(frozen=True)
class SLOStatus:
    """What to report: the SLOBreached condition and the gauge per objective."""

    status: str  # "True" | "False" | "Unknown"
    reason: str
    message: str
    breaches: tuple[Breach, ...]
    gauges: dict[str, float]  # measured objectives only: 1 breached, 0 within

    @property
    def breached(self) -> frozenset[str]:
        return frozenset(b.objective for b in self.breaches)


def assess(slo: SLOSpec | None, load: QueueLoad) -> SLOStatus | None:
    """The condition and gauges for `load`; None when `slo` sets no objective."""
    wanted = configured(slo)
    if not wanted:
        return None
    breaches = tuple(evaluate(slo, load))
    breached = {b.objective for b in breaches}
    measured = [o for o in wanted if _measured(o, load)]
    unmeasured = [o for o in wanted if o not in measured]
    gauges = {o: 1.0 if o in breached else 0.0 for o in measured}
    tail = ""
    if unmeasured:
        tail = "; not measured: " + "; ".join(
            f"{o} ({load.not_measured.get(o, 'no figure')})" for o in unmeasured)
    if load.notes:
        tail += "; " + "; ".join(load.notes)
    if breaches:
        reason = (_REASONS[breaches[0].objective] if len(breaches) == 1
                  else reasons.OBJECTIVES_BREACHED)
        return SLOStatus("True", reason, "; ".join(b.message for b in breaches) + tail,
                         breaches, gauges)
    if measured:
        head = ("all objectives met" if not unmeasured
                else f"objectives met: {', '.join(measured)}")
        return SLOStatus("False", reasons.SLO_MET, head + tail, (), gauges)
    return SLOStatus("Unknown", reasons.SLO_NOT_MEASURED, tail.removeprefix("; "), (), gauges)
