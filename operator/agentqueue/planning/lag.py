"""Consumer-group lag that stays right on Redis 7.0. Pure.

XINFO GROUPS reports ``lag = entries-added - entries-read``. On 7.0 that figure is:

- nil after an XDEL of an entry the group has not read (until it is trimmed away);
- too high after a trim removed entries the group had not read: ``entries-read`` is
  never corrected, so the error stays even after the group reads everything
  (redis/redis #13337, #13473, #13957; measured in docs/redis-facts).

It is never too low: every failure mode counts removed entries as still unread, or
gives up (nil). So the rules, cheapest first:

1. Empty stream, or the group's last-delivered id at or past the stream's last id → 0.
2. Last-delivered id before the first entry (trimmed past it, or a new group reading
   from the beginning) → every entry is unread: XLEN.
3. Reported 0 → 0 (never too low).
4. Reported nil, negative or above XLEN → wrong: count.
5. Nothing was ever removed from the stream (entries-added == XLEN, or
   lag + entries-read == XLEN) → reported is exact.
6. A `Calibration` from an earlier count still holds (no trim can have passed the
   group since) → reported minus the known error.
7. Otherwise → count the entries after the last-delivered id (the poller does this in a
   second round trip, only for the groups that need it) and calibrate from it.

The stream facts (entries-added, first/last id, max-deleted id) come from XINFO
STREAM, which the poller reads only for partitions where rules 3 and 5 do not
settle some group's lag: an idle or never-trimmed fleet never pays for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from agentqueue_client.text import as_text

StreamId = tuple[int, int]


def parse_id(value: str | bytes) -> StreamId:
    """``"1700000000000-3"`` → ``(1700000000000, 3)``; a bare ``ms`` means ``ms-0``."""
    text = as_text(value)  # bytes that are not UTF-8 fail in int() below (ValueError)
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def format_id(value: StreamId) -> str:
    return f"{value[0]}-{value[1]}"


class LagSource(StrEnum):
    EMPTY = "empty"
    FULLY_READ = "fully-read"
    BEFORE_FIRST = "before-first-entry"
    REPORTED = "reported"
    CALIBRATED = "calibrated"
    COUNTED = "counted"
    ESTIMATE = "estimate"
    """No count available: an upper bound (the reported lag, at most XLEN)."""


@dataclass(frozen=True)
class GroupLagInfo:
    """What XINFO GROUPS (+ XLEN, + optionally XINFO STREAM) says about one group."""

    reported_lag: int | None
    entries_read: int | None
    last_delivered_id: str
    stream_length: int
    entries_added: int | None = None
    first_entry_id: str | None = None
    last_entry_id: str | None = None
    """The stream's last-generated-id (an XDELed last entry still counts as read)."""
    max_deleted_id: str | None = None


@dataclass(frozen=True)
class Calibration:
    """The reported lag's error, measured by a count, and when it was measured.

    The error is constant while the group reads normally; only a trim that removes
    entries the group has not read yet changes it. Such a trim leaves the stream's
    first entry after the group's position at calibration time, which is checked.
    """

    last_delivered_id: StreamId
    entries_read: int
    entries_added: int
    error: int


@dataclass(frozen=True)
class LagAssessment:
    lag: int | None
    """None: cannot tell without counting the entries after the last-delivered id."""
    source: LagSource
    calibration: Calibration | None = None
    """Calibration to keep for the next tick (None: drop any kept one)."""

    @property
    def needs_count(self) -> bool:
        return self.lag is None


def _fixed(info: GroupLagInfo) -> LagAssessment | None:
    """Rules 1-2: the answer follows from ids alone."""
    length = max(0, info.stream_length)
    if length == 0:
        return LagAssessment(0, LagSource.EMPTY)
    last = parse_id(info.last_delivered_id)
    if info.last_entry_id and last >= parse_id(info.last_entry_id):
        return LagAssessment(0, LagSource.FULLY_READ)
    if info.first_entry_id and last < parse_id(info.first_entry_id):
        return LagAssessment(length, LagSource.BEFORE_FIRST)
    return None


def _calibrated(info: GroupLagInfo, reported: int, cal: Calibration) -> LagAssessment | None:
    """Rule 6 for a plausible `reported` (1..XLEN, checked by the caller)."""
    read, added = info.entries_read, info.entries_added
    if read is None or added is None or info.first_entry_id is None:
        return None
    last = parse_id(info.last_delivered_id)
    if (read < cal.entries_read or added < cal.entries_added or last < cal.last_delivered_id
            or parse_id(info.first_entry_id) > cal.last_delivered_id):
        return None  # group reset, stream recreated, or a trim may have passed the group
    lag = reported - cal.error
    if not 0 <= lag <= info.stream_length:
        return None
    rolled = Calibration(last, read, added, cal.error)
    return LagAssessment(lag, LagSource.CALIBRATED, rolled)


def quick_lag(reported_lag: int | None, entries_read: int | None,
              stream_length: int) -> int | None:
    """Rules 1 (empty), 3 and 5 on the raw XINFO GROUPS figures, without building a
    `GroupLagInfo`: the answer for most groups of a large fleet. None: use
    `assess_lag`."""
    if stream_length <= 0 or reported_lag == 0:
        return 0
    if (reported_lag is not None and entries_read is not None and reported_lag > 0
            and reported_lag + entries_read == stream_length):
        return reported_lag
    return None


def assess_lag(info: GroupLagInfo, calibration: Calibration | None = None) -> LagAssessment:
    """The group's lag if it can be known from `info` (and a kept calibration), else
    ``lag=None``: the caller counts the entries after the last-delivered id and calls
    `lag_from_count`."""
    fixed = _fixed(info)
    if fixed is not None:
        return fixed
    reported = info.reported_lag
    if reported is None or reported < 0 or reported > info.stream_length:
        return LagAssessment(None, LagSource.COUNTED)
    if reported == 0:
        return LagAssessment(0, LagSource.REPORTED)
    if _nothing_removed(info):
        return LagAssessment(reported, LagSource.REPORTED)
    if calibration is not None:
        held = _calibrated(info, reported, calibration)
        if held is not None:
            return held
    return LagAssessment(None, LagSource.COUNTED)


def _nothing_removed(info: GroupLagInfo) -> bool:
    """entries-added == XLEN: no entry was ever trimmed or deleted. A non-nil lag
    computed from entries-read satisfies lag + entries-read == entries-added, so that
    sum stands in for entries-added when XINFO STREAM was not read. (A lag Redis
    estimated instead is exact anyway: it only does so at the stream's ends.)"""
    added = info.entries_added
    if added is None and info.entries_read is not None and info.reported_lag is not None:
        added = info.reported_lag + info.entries_read
    return added == info.stream_length


def lag_from_count(info: GroupLagInfo, count_after: int | None) -> LagAssessment:
    """The lag given the number of entries after the last-delivered id.

    `count_after` None (not counted: too many, or the count failed) gives an upper
    bound: the reported lag when plausible, else XLEN."""
    fixed = _fixed(info)
    if fixed is not None:
        return fixed
    length = info.stream_length  # at least 1: `_fixed` answered for an empty stream
    if count_after is None:
        reported = info.reported_lag
        bound = length if reported is None or reported < 0 else min(reported, length)
        return LagAssessment(bound, LagSource.ESTIMATE)
    lag = max(0, min(count_after, length))
    return LagAssessment(lag, LagSource.COUNTED, _calibrate(info, lag))


def _calibrate(info: GroupLagInfo, true_lag: int) -> Calibration | None:
    if info.reported_lag is None or info.entries_read is None or info.entries_added is None:
        return None
    error = info.reported_lag - true_lag
    if error < 0:
        return None  # "never too low" did not hold: do not trust it later
    return Calibration(parse_id(info.last_delivered_id), info.entries_read, info.entries_added,
                       error)


def needs_count(info: GroupLagInfo, calibration: Calibration | None = None) -> bool:
    return assess_lag(info, calibration).needs_count


def waiting(lag: int, pending: int, due_retries: int) -> int:
    """Work waiting for the group: undelivered + delivered-not-acked + retries due now."""
    return max(0, lag) + max(0, pending) + max(0, due_retries)
