"""When a deleted AgentQueue may be released although its clean-up failed. Pure.

Deletion must always finish (a Terminating queue blocks deleting its namespace): a
queue that never reached Redis has nothing to clean and goes at once; one whose Redis
is unreachable goes after the operator's deletion timeout, and the Event says what was
left behind."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DeletionStep", "after_failed_cleanup", "left_behind"]

RETRY_MAX_S = 10.0
"""Longest wait between clean-up attempts."""


@dataclass(frozen=True)
class DeletionStep:
    release: bool
    """Remove the finalizer now."""
    retry_in: float = 0.0
    """Otherwise: try the clean-up again after this many seconds."""


def after_failed_cleanup(provisioned: bool, elapsed_s: float, timeout_s: float) -> DeletionStep:
    """The clean-up failed `elapsed_s` seconds after the deletion was requested."""
    if not provisioned:
        return DeletionStep(release=True)
    remaining = timeout_s - max(elapsed_s, 0.0)
    if remaining <= 0:
        return DeletionStep(release=True)
    return DeletionStep(release=False, retry_in=min(RETRY_MAX_S, remaining))


def left_behind(usernames: list[str], delete_data: bool, key_pattern: str) -> str:
    """What stays in Redis when a queue is released without its clean-up."""
    parts = []
    if usernames:
        parts.append(f"ACL users {', '.join(usernames)}")
    parts.append(f"keys {key_pattern}" + (" (deletionPolicy Delete: remove them by hand)"
                                          if delete_data else " (retained)"))
    return "; ".join(parts)
