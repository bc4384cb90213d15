"""Service-level objectives of a queue, evaluated from observed figures. Pure."""

from __future__ import annotations

from dataclasses import dataclass

from ..models.common import parse_duration
from ..models.queue import SLOSpec


@dataclass(frozen=True)
class QueueLoad:
    depth: int  # waiting work: entries not yet acknowledged by the slowest group
    oldest_waiting_age_s: float
    deliveries: int  # deliveries in the window (for the retry rate)
    retries: int


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
                    f"{over:.1f}s over maxWaitingAge {self.limit:.1f}s")
        if self.objective == "maxRetryRate":
            return (f"retry rate {self.observed:.3f} is {over:.3f} over maxRetryRate "
                    f"{self.limit:.3f}")
        return f"depth {int(self.observed)} is {int(over)} over maxDepth {int(self.limit)}"


def evaluate(slo: SLOSpec | None, load: QueueLoad) -> list[Breach]:
    """The objectives breached now, with by how much."""
    if slo is None:
        return []
    out = []
    if slo.max_depth is not None and load.depth > slo.max_depth:
        out.append(Breach("maxDepth", load.depth, slo.max_depth))
    if slo.max_waiting_age is not None:
        limit = parse_duration(slo.max_waiting_age)
        if load.oldest_waiting_age_s > limit:
            out.append(Breach("maxWaitingAge", load.oldest_waiting_age_s, limit))
    if slo.max_retry_rate is not None and load.deliveries > 0:
        rate = load.retries / load.deliveries
        if rate > slo.max_retry_rate:
            out.append(Breach("maxRetryRate", rate, slo.max_retry_rate))
    return out
