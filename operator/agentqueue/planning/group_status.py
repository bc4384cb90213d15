"""The conditions a ConsumerGroup's tick sets, decided from what it observed. Pure.

`ScalingConflict` and `ScalingActive` from the conflict check and the scaling decision;
`Ready` after a reconcile (`reconciled`), and while the group's tick runs: True (reason Active) when Redis can be read, else
False with `FallbackReplicas` (the spec sets fallbackReplicas for a scaled target) or
`RedisUnavailable`."""

from __future__ import annotations

from typing import Any, NamedTuple

from .. import reasons


class Cond(NamedTuple):
    type: str
    status: bool
    reason: str
    message: str


def scaling_conditions(conflict: tuple[str, str] | None, decision_reason: str) -> list[Cond]:
    """`conflict`: (reason, message) while something else scales the target."""
    if conflict is not None:
        return [Cond(reasons.SCALING_CONFLICT, True, conflict[0], conflict[1]),
                Cond(reasons.SCALING_ACTIVE, False, conflict[0], decision_reason)]
    return [Cond(reasons.SCALING_CONFLICT, False, reasons.NO_CONFLICT, ""),
            Cond(reasons.SCALING_ACTIVE, True, reasons.SCALED, decision_reason)]


def reconciled(group: str, partitions: int, is_list: bool, queue: str) -> Cond:
    """Ready after a successful reconcile (its failures: services/report, every kind)."""
    if is_list:
        return Cond(reasons.READY, True, reasons.ACTIVE,
                    f"settings of group {group!r} on List queue {queue!r} "
                    f"({partitions} partition(s); no Redis group)")
    return Cond(reasons.READY, True, reasons.ACTIVE,
                f"group {group!r} on {partitions} partition(s)")


def readiness(readable: bool, ready_reason: str | None, group: str, error: str,
              scales_target: bool, fallback_set: bool) -> Cond | None:
    """The Ready condition after a poll (None: leave it as it is)."""
    if readable:
        if ready_reason == reasons.ACTIVE:
            return None
        return Cond(reasons.READY, True, reasons.ACTIVE, f"group {group!r} readable again")
    reason = (reasons.FALLBACK if scales_target and fallback_set
              else reasons.REDIS_UNAVAILABLE)
    return Cond(reasons.READY, False, reason, f"cannot read Redis: {error}")


def status_write_due(new: dict[str, Any], last: dict[str, Any], scaled: bool,
                     since_last_write: float, min_interval: float) -> bool:
    """Whether a tick writes the group's status (`new`, without its times) after `last`
    (what it wrote last): only when something changed, and then at once on a scale, a
    condition change or work appearing/draining (waiting 0 ↔ > 0), else at most every
    `min_interval` seconds (a busy group's lag moves every poll)."""
    if new == last:
        return False
    transition = (new.get("conditions") != last.get("conditions")
                  or (new.get("waiting") == 0) != (last.get("waiting") == 0))
    return scaled or transition or since_last_write >= min_interval
