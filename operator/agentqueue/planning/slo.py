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
* ``maxRetryRate``, retries per delivery between two observations of the queue by its
  keeper (`retry_window`). Retries: nacks that scheduled a retry, counted per partition
  in the stats hash by ``aq_nack`` and the List SDK (a message dead-lettered instead is
  not a retry). Deliveries: Stream, the growth of every consumer group's
  ``entries-read`` (Redis advances it with each entry it delivers; a retried message
  comes back as a new entry and counts again); List, the SDK's own count in the stats
  hash. A window with no deliveries has no figure; one across a counter reset (Redis
  restarted without persistence), a changed set of partitions or groups, or a group
  that read while Redis could not tell its ``entries-read`` (a new group's first read;
  XDEL) is skipped.
* PubSub channels store nothing: no depth, no age and no retries to measure.

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
PUBSUB_STORES_NOTHING = "a PubSub channel stores no messages"
NO_RETRY_WINDOW = "no retry counts from two observations of the queue yet"
NO_DELIVERIES = "no deliveries since the previous observation"
COUNTERS_RESET = ("the counters went back since the previous observation (Redis restarted "
                  "or the queue's data was reset): measured from the next one")
COUNTERS_CHANGED = ("the partitions or consumer groups changed since the previous "
                    "observation: measured from the next one")
ENTRIES_READ_UNKNOWN = ("Redis cannot tell how many entries a consumer group read since the "
                        "previous observation (its first read, or entries deleted with XDEL)")


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
class RetryCounters:
    """Cumulative counters of a queue as read with one observation (redisgw/backlog.py)."""

    retries: Mapping[int, int]
    """Partition -> the stats hash's ``retries``."""
    deliveries: Mapping[tuple[int, str], int | None]
    """(partition, source) -> deliveries so far. Stream: one per consumer group (source:
    its name), its ``entries-read`` (None: Redis cannot tell, e.g. a group that has read
    nothing yet); List: source ``""``, the stats hash's ``deliveries``."""
    positions: Mapping[tuple[int, str], str] = field(default_factory=dict)
    """Stream: each group's last-delivered id (a group whose ``entries-read`` is unknown
    delivered nothing while it stays put)."""


@dataclass(frozen=True)
class RetryWindow:
    """Retries and deliveries between two observations; no figure (None) says why."""

    retries: int | None = None
    deliveries: int | None = None
    why: str = NO_RETRY_WINDOW

    @property
    def rate(self) -> float | None:
        if not self.deliveries or self.retries is None:
            return None
        return self.retries / self.deliveries


def retry_window(before: RetryCounters | None, after: RetryCounters | None) -> RetryWindow:
    """What happened between two reads of the counters (`before` is the earlier one).

    No figure when either is missing, when the partitions or groups differ (a new group
    has no baseline, a deleted one's deliveries would go missing while its consumers'
    retries count), when a group moved while Redis could not tell its ``entries-read``
    (one that did not move delivered nothing), when a counter went back (a reset: what
    happened since is unknown), or when nothing was delivered."""
    if before is None or after is None:
        return RetryWindow()
    if (set(before.retries) != set(after.retries)
            or set(before.deliveries) != set(after.deliveries)):
        return RetryWindow(why=COUNTERS_CHANGED)
    retries = [after.retries[p] - before.retries[p] for p in after.retries]
    deliveries = []
    for key, now in after.deliveries.items():
        then = before.deliveries[key]
        if now is None or then is None:
            if now is None and then is None and (
                    before.positions.get(key) == after.positions.get(key)):
                continue  # has not read anything since
            return RetryWindow(why=ENTRIES_READ_UNKNOWN)
        deliveries.append(now - then)
    if any(d < 0 for d in (*retries, *deliveries)):
        return RetryWindow(why=COUNTERS_RESET)
    if sum(deliveries) == 0:
        return RetryWindow(why=NO_DELIVERIES)
    return RetryWindow(sum(retries), sum(deliveries), why="")


@dataclass(frozen=True)
class QueueSample:
    """The queue's own observation (every drift interval)."""

    length: int  # stream entries, or queued List elements, over all partitions
    oldest_waiting_age_s: float | None  # None: not read (no maxWaitingAge)
    counters: RetryCounters | None = None  # None: not read (PubSub)
    dead_letter_length: int | None = None  # over all partitions; None: not read


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
               groups: Mapping[str, GroupSample | None],
               retry: RetryWindow | None = None) -> QueueLoad:
    """Build the load from what was observed.

    `groups`: the queue's ConsumerGroups by name, with their latest figures (None when
    there are none, or they are stale). `queue`: the queue's own observation, None
    before the first one. `retry`: retries and deliveries between the keeper's last two
    observations (None: none yet)."""
    not_measured: dict[str, str] = {}
    notes: list[str] = []
    if queue_type == "PubSub":
        return QueueLoad(not_measured={o: PUBSUB_STORES_NOTHING for o in OBJECTIVES})
    retries = deliveries = None
    if retry is not None and retry.rate is not None:
        retries, deliveries = retry.retries, retry.deliveries
    else:
        not_measured["maxRetryRate"] = retry.why if retry is not None else NO_RETRY_WINDOW
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
    return QueueLoad(depth=depth, oldest_waiting_age_s=age, deliveries=deliveries,
                     retries=retries, not_measured=not_measured, notes=tuple(notes))


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
