"""A ConsumerGroup's pause as status tells it (pure): the ``Paused`` condition, the
``pausedAt`` / ``pausedReason`` fields and the Event when pausing starts."""

from __future__ import annotations

from typing import NamedTuple

from .. import reasons

DEFAULT_REASON = "paused in the ConsumerGroup spec"


class PauseStatus(NamedTuple):
    paused: bool
    """The Paused condition's status."""
    reason: str
    """The condition's reason."""
    message: str
    """The condition's message."""
    paused_at: str | None
    """status.pausedAt (None: clear it)."""
    paused_reason: str | None
    """status.pausedReason (None: clear it)."""
    event: tuple[str, str] | None
    """(reason, message) of the Normal Event to post, or None."""


def pause_status(spec_paused: bool, pause_reason: str | None, status_paused_at: str | None,
                 now_iso: str) -> PauseStatus:
    """`spec_paused` / `pause_reason`: the spec; `status_paused_at`: status.pausedAt as
    the object shows it (kept while paused; empty or absent: pausing starts `now_iso`,
    with an Event)."""
    if not spec_paused:
        return PauseStatus(False, reasons.NOT_PAUSED, "", None, None, None)
    why = pause_reason or DEFAULT_REASON
    event = None if status_paused_at else (reasons.PAUSED_BY_SPEC, f"paused: {why}")
    return PauseStatus(True, reasons.PAUSED_BY_SPEC, why, status_paused_at or now_iso, why,
                       event)
