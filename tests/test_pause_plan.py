"""A ConsumerGroup's pause in status (planning/pause.py): pure, mutation-tested."""

from __future__ import annotations

import pytest

from agentqueue import reasons
from agentqueue.planning.pause import DEFAULT_REASON, PauseStatus, pause_status

NOW = "2025-01-02T03:04:05Z"
EARLIER = "2024-12-31T23:00:00Z"


@pytest.mark.parametrize(("reason", "paused_at"), [(None, None), ("maintenance", EARLIER),
                                                   ("", ""), (None, EARLIER)])
def test_not_paused_clears_the_fields(reason: str | None, paused_at: str | None) -> None:
    assert pause_status(False, reason, paused_at, NOW) == PauseStatus(
        False, reasons.NOT_PAUSED, "", None, None, None)


def test_pausing_starts_now_with_an_event() -> None:
    assert pause_status(True, "maintenance", None, NOW) == PauseStatus(
        True, reasons.PAUSED_BY_SPEC, "maintenance", NOW, "maintenance",
        (reasons.PAUSED_BY_SPEC, "paused: maintenance"))


def test_an_empty_paused_at_starts_pausing_too() -> None:
    assert pause_status(True, "maintenance", "", NOW) == PauseStatus(
        True, reasons.PAUSED_BY_SPEC, "maintenance", NOW, "maintenance",
        (reasons.PAUSED_BY_SPEC, "paused: maintenance"))


def test_staying_paused_keeps_the_time_and_posts_nothing() -> None:
    assert pause_status(True, "maintenance", EARLIER, NOW) == PauseStatus(
        True, reasons.PAUSED_BY_SPEC, "maintenance", EARLIER, "maintenance", None)


@pytest.mark.parametrize("reason", [None, ""])
def test_without_a_reason_the_spec_is_named(reason: str | None) -> None:
    assert DEFAULT_REASON == "paused in the ConsumerGroup spec"
    assert pause_status(True, reason, None, NOW) == PauseStatus(
        True, reasons.PAUSED_BY_SPEC, DEFAULT_REASON, NOW, DEFAULT_REASON,
        (reasons.PAUSED_BY_SPEC, "paused: paused in the ConsumerGroup spec"))
    assert pause_status(True, reason, EARLIER, NOW).message == DEFAULT_REASON
