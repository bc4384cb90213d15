"""Scaling decision: waiting work → desired replicas. Pure (no I/O, no clock).

The rules, in the order they apply (KEDA's activation/cooldown, then the HPA's
``behavior``):

1. Paused → 0 replicas, at once (a circuit breaker ignores every limit).
2. Redis unreadable (``waiting is None``) → ``fallbackReplicas`` if set, else the
   current count; within the step limits and [min, max]. Not recorded in the history.
3. Recommendation: ``ceil(waiting / lagPerReplica)`` clamped to [min, max].
   From zero only when ``waiting >= activationLag``. With no work, one replica stays
   until ``cooldown`` has passed since the last time work was waiting
   (``last_active``, kept in status so it survives restarts); then 0 if min is 0.
4. Stabilization (HPA): scale up to the *lowest* recommendation seen in the
   scale-up window, down to the *highest* seen in the scale-down window. Scaling to
   zero after the cooldown skips the down window: the cooldown is its stabilization.
5. Step limits: at most ``maxStepPercent`` of the current replicas per decision
   (rounded up for scale-up, down for scale-down, HPA-style), never less than 1.
6. [min, max] win over the step limits (when someone scaled the target outside them).

The result is always within [min, max] unless paused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from ..models.common import parse_duration
from ..models.group import ScalingSpec

MAX_HISTORY = 512
"""Hard cap on stored samples; compaction keeps far fewer in practice."""


@dataclass(frozen=True)
class ScalingParams:
    """`ScalingSpec` with durations in seconds."""

    min_replicas: int = 0
    max_replicas: int = 10
    lag_per_replica: int = 50
    activation_lag: int = 1
    cooldown_s: float = 30.0
    up_window_s: float = 0.0
    up_step_percent: int = 100
    down_window_s: float = 60.0
    down_step_percent: int = 50
    fallback_replicas: int | None = None

    @classmethod
    def from_spec(cls, spec: ScalingSpec) -> ScalingParams:
        return cls(
            min_replicas=spec.min_replicas,
            max_replicas=spec.max_replicas,
            lag_per_replica=spec.lag_per_replica,
            activation_lag=spec.activation_lag,
            cooldown_s=parse_duration(spec.cooldown),
            up_window_s=parse_duration(spec.scale_up.stabilization_window),
            up_step_percent=spec.scale_up.max_step_percent,
            down_window_s=parse_duration(spec.scale_down.stabilization_window),
            down_step_percent=spec.scale_down.max_step_percent,
            fallback_replicas=spec.fallback_replicas,
        )

    def clamp(self, n: int) -> int:
        return max(self.min_replicas, min(self.max_replicas, n))


@dataclass(frozen=True)
class ScaleObservation:
    current_replicas: int | None
    """Replicas of the scale target now (None is read as 0)."""
    waiting: int | None
    """lag + pending + due retries; None when Redis could not be read."""
    last_active: float | None = None
    """Epoch seconds of the last time work was waiting (from status); None: never."""


@dataclass
class ScaleHistory:
    """Recent (time, recommendation) samples for the stabilization windows.

    Compacted without losing precision: a sample is kept only if it is strictly lower
    or strictly higher than every newer sample, because only those can be the minimum
    or maximum of any window ending now. Stored as plain JSON (`to_json`).
    """

    samples: list[tuple[float, int]] = field(default_factory=list)

    def record(self, now: float, recommendation: int, keep_s: float) -> None:
        newest_first: list[tuple[float, int]] = []
        low = high = recommendation
        newest_first.append((now, recommendation))
        for t, value in reversed(self.samples):
            if t < now - keep_s or t > now:
                continue  # outside every window (or from a clock that went backwards)
            if value < low or value > high:
                newest_first.append((t, value))
                low, high = min(low, value), max(high, value)
        self.samples = list(reversed(newest_first[:MAX_HISTORY]))

    def lowest_since(self, cutoff: float, default: int) -> int:
        return min((v for t, v in self.samples if t > cutoff), default=default)

    def highest_since(self, cutoff: float, default: int) -> int:
        return max((v for t, v in self.samples if t > cutoff), default=default)

    def to_json(self) -> list[list[float]]:
        return [[t, v] for t, v in self.samples]

    @classmethod
    def from_json(cls, data: Any) -> ScaleHistory:
        """Tolerant: anything malformed is dropped (a lost sample only loosens a window)."""
        samples: list[tuple[float, int]] = []
        if isinstance(data, list):
            for item in data:
                if (isinstance(item, list | tuple) and len(item) == 2
                        and all(isinstance(x, int | float) for x in item)):
                    samples.append((float(item[0]), int(item[1])))
        samples.sort(key=lambda s: s[0])
        return cls(samples[-MAX_HISTORY:])


@dataclass(frozen=True)
class ScaleDecision:
    desired: int
    current: int
    reason: str
    """Human-readable explanation, for the Event and the ScalingActive condition."""
    recommendation: int
    """This tick's raw recommendation, before stabilization and step limits."""
    last_active: float | None
    """What to store as status.lastActiveTime."""
    fallback: bool = False

    @property
    def patch(self) -> bool:
        """Whether the scale target needs a change."""
        return self.desired != self.current


def decide(spec: ScalingSpec | ScalingParams, observed: ScaleObservation,
           history: ScaleHistory, now: float, paused: bool = False) -> ScaleDecision:
    """Desired replicas for one tick.

    Appends this tick's recommendation to `history` (its only side effect), so the
    caller keeps one `ScaleHistory` per group across ticks.
    """
    p = spec if isinstance(spec, ScalingParams) else ScalingParams.from_spec(spec)
    current = max(0, observed.current_replicas or 0)
    if paused:
        return ScaleDecision(0, current, "paused: scaled to zero", 0, observed.last_active)
    if observed.waiting is None:
        return _fallback(p, current, observed.last_active)

    waiting = max(0, observed.waiting)
    last_active = now if waiting > 0 else observed.last_active
    raw, why = _recommend(p, current, waiting, last_active, now)
    to_zero = raw == 0 and current > 0
    stable = _stabilize(p, history, raw, current, now, skip_down_window=to_zero)
    history.record(now, raw, max(p.up_window_s, p.down_window_s))
    stepped = _step(p, current, stable)
    desired = p.clamp(stepped)
    notes = [why]
    if stable != raw:
        direction, window = ("up", p.up_window_s) if raw > stable else ("down", p.down_window_s)
        notes.append(f"held at {stable} by the scale-{direction} stabilization window "
                     f"({window:g}s)")
    if stepped != stable:
        notes.append(f"limited to {stepped} by maxStepPercent")
    if desired != stepped:
        notes.append(f"kept within [{p.min_replicas}, {p.max_replicas}]")
    return ScaleDecision(desired, current, "; ".join(notes), raw, last_active)


def _recommend(p: ScalingParams, current: int, waiting: int, last_active: float | None,
               now: float) -> tuple[int, str]:
    if waiting > 0:
        if current == 0 and waiting < p.activation_lag:
            return p.min_replicas, (f"waiting {waiting} below activationLag "
                                    f"{p.activation_lag}: not activated")
        wanted = math.ceil(waiting / p.lag_per_replica)
        return p.clamp(wanted), (f"waiting {waiting} at {p.lag_per_replica} per replica "
                                 f"→ {p.clamp(wanted)}")
    if p.min_replicas > 0:
        return p.min_replicas, f"no work waiting → minReplicas {p.min_replicas}"
    if current == 0:
        return 0, "no work waiting"
    idle_for = math.inf if last_active is None else now - last_active
    if idle_for < p.cooldown_s:
        return 1, (f"no work waiting; cooldown {p.cooldown_s:g}s ends in "
                   f"{p.cooldown_s - idle_for:.0f}s")
    return 0, f"no work waiting for the cooldown ({p.cooldown_s:g}s) → zero"


def _stabilize(p: ScalingParams, history: ScaleHistory, raw: int, current: int, now: float,
               skip_down_window: bool) -> int:
    """HPA: never above the lowest recommendation of the up window, never below the
    highest of the down window (each window includes this tick)."""
    up = raw
    if p.up_window_s > 0:
        up = min(raw, history.lowest_since(now - p.up_window_s, raw))
    down = raw
    if p.down_window_s > 0 and not skip_down_window:
        down = max(raw, history.highest_since(now - p.down_window_s, raw))
    return min(max(current, up), down)


def step_allowance(current: int, percent: int, up: bool) -> int:
    """Largest change allowed in one decision: ``percent`` of current, at least 1."""
    exact = current * percent / 100
    return max(1, math.ceil(exact) if up else math.floor(exact))


def _step(p: ScalingParams, current: int, desired: int) -> int:
    if desired > current:
        return min(desired, current + step_allowance(current, p.up_step_percent, True))
    if desired < current:
        return max(desired, current - step_allowance(current, p.down_step_percent, False))
    return desired


def _fallback(p: ScalingParams, current: int, last_active: float | None) -> ScaleDecision:
    if p.fallback_replicas is None:
        desired = p.clamp(current)
        reason = f"Redis unreadable: keeping {desired} replicas"
    else:
        desired = p.clamp(_step(p, current, p.clamp(p.fallback_replicas)))
        reason = f"Redis unreadable: fallbackReplicas {p.fallback_replicas}"
        if desired != p.clamp(p.fallback_replicas):
            reason += f" (step-limited to {desired})"
    return ScaleDecision(desired, current, reason, desired, last_active, fallback=True)
