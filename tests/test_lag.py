"""planning.lag: the lag fallback rules (pure). The same rules against a real Redis 7.0
are in test_redis_groups.py."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agentqueue.planning.lag import (
    Calibration,
    GroupLagInfo,
    LagSource,
    assess_lag,
    format_id,
    lag_from_count,
    needs_count,
    parse_id,
    quick_lag,
    waiting,
)


def info(reported: int | None, read: int | None, length: int, last: str = "5-0", *,
         added: int | None = None, first: str | None = None, last_entry: str | None = None,
         deleted: str | None = None) -> GroupLagInfo:
    return GroupLagInfo(reported, read, last, length, added, first, last_entry, deleted)


def test_ids() -> None:
    assert parse_id("1700000000000-3") == (1700000000000, 3)
    assert parse_id(b"5") == (5, 0)
    assert parse_id("10-0") > parse_id("9-99")
    assert format_id((7, 2)) == "7-2"


def test_empty_stream_has_no_lag() -> None:
    assert assess_lag(info(None, None, 0)).lag == 0
    assert assess_lag(info(None, None, 0)).source is LagSource.EMPTY


def test_fully_read_group_has_no_lag_whatever_redis_says() -> None:
    # 7.0 after a trim past the group and reading everything: reported 40, truly 0.
    a = assess_lag(info(40, 60, 50, "100-0", added=100, first="51-0", last_entry="100-0"))
    assert (a.lag, a.source) == (0, LagSource.FULLY_READ)


def test_group_before_the_first_entry_has_everything_to_read() -> None:
    # Trimmed past the group: reported 90 with 50 entries left.
    a = assess_lag(info(90, 10, 50, "10-0", added=100, first="51-0", last_entry="100-0"))
    assert (a.lag, a.source) == (50, LagSource.BEFORE_FIRST)
    assert assess_lag(info(3, 0, 3, "0-0", added=3, first="1-0", last_entry="3-0")).lag == 3


@pytest.mark.parametrize("reported", [None, -1, 51])
def test_nil_or_impossible_reports_need_a_count(reported: int | None) -> None:
    i = info(reported, 10, 50, "20-0", added=100, first="11-0", last_entry="100-0")
    assert needs_count(i)
    a = lag_from_count(i, 37)
    assert (a.lag, a.source) == (37, LagSource.COUNTED)


def test_zero_is_trusted_redis_never_reports_too_little() -> None:
    assert assess_lag(info(0, 10, 50, "20-0", added=100, first="11-0")).lag == 0


def test_nothing_removed_means_reported_is_exact() -> None:
    assert assess_lag(info(7, 13, 20, added=20, first="1-0", last_entry="20-0")).lag == 7
    # lag + entries-read = entries-added: no XINFO STREAM needed to know it.
    a = assess_lag(info(7, 13, 20))
    assert (a.lag, a.source) == (7, LagSource.REPORTED)


def test_something_removed_and_no_calibration_needs_a_count() -> None:
    i = info(15, 6, 18, "30-0", added=21, first="24-0", last_entry="40-0")
    assert needs_count(i)
    counted = lag_from_count(i, 13)
    assert counted.lag == 13 and counted.calibration == Calibration((30, 0), 6, 21, 2)


def test_without_stream_facts_an_unverifiable_report_needs_a_count() -> None:
    assert needs_count(info(15, 6, 18))


def test_calibration_carries_forward_while_no_trim_passes_the_group() -> None:
    cal = Calibration((30, 0), 6, 21, 2)
    later = info(23, 8, 30, "32-0", added=31, first="24-0", last_entry="50-0")
    a = assess_lag(later, cal)
    assert (a.lag, a.source) == (21, LagSource.CALIBRATED)
    assert a.calibration == Calibration((32, 0), 8, 31, 2)


@pytest.mark.parametrize("later", [
    info(23, 8, 30, "32-0", added=31, first="31-0", last_entry="50-0"),  # trimmed beyond 30-0
    info(23, 5, 30, "32-0", added=31, first="24-0", last_entry="50-0"),  # entries-read went back
    info(23, 8, 30, "29-0", added=31, first="24-0", last_entry="50-0"),  # group moved back
    info(23, 8, 30, "32-0", added=20, first="24-0", last_entry="50-0"),  # stream recreated
    info(None, 8, 30, "32-0", added=31, first="24-0", last_entry="50-0"),  # nil report
    info(40, 8, 30, "32-0", added=31, first="24-0", last_entry="50-0"),  # impossible
    info(1, 8, 30, "32-0", added=31, first="24-0", last_entry="50-0"),  # would go negative
])
def test_calibration_is_dropped_when_it_may_no_longer_hold(later: GroupLagInfo) -> None:
    assert needs_count(later, Calibration((30, 0), 6, 21, 2))


def test_uncounted_fallback_is_an_upper_bound() -> None:
    i = info(15, 6, 18, "30-0", added=21, first="24-0")
    assert lag_from_count(i, None).lag == 15
    assert lag_from_count(i, None).source is LagSource.ESTIMATE
    assert lag_from_count(info(None, None, 18, "30-0", first="24-0"), None).lag == 18
    assert lag_from_count(info(99, 6, 18, "30-0", first="24-0"), None).lag == 18


def test_count_is_clamped_and_never_calibrates_from_a_low_report() -> None:
    i = info(5, 6, 18, "30-0", added=21, first="24-0")
    assert lag_from_count(i, 99).lag == 18
    assert lag_from_count(i, 9).calibration is None  # 5 < 9: "never too low" broke


def test_quick_lag_covers_the_common_cases() -> None:
    assert quick_lag(0, 5, 10) == 0
    assert quick_lag(None, None, 0) == 0
    assert quick_lag(3, 7, 10) == 3
    assert quick_lag(3, 6, 10) is None
    assert quick_lag(None, 6, 10) is None


@pytest.mark.parametrize(("reported", "read", "length", "expected"), [
    (1, 9, 10, 1),  # the smallest non-zero report that adds up is exact
    (1, 0, 1, 1),  # a one-entry stream is not empty
    (None, None, 1, None),
    (-1, 11, 10, None),  # adds up, but a negative lag is no lag: assess_lag decides
])
def test_quick_lag_at_its_bounds(reported: int | None, read: int | None, length: int,
                                 expected: int | None) -> None:
    assert quick_lag(reported, read, length) == expected


def test_waiting_sums_and_ignores_negatives() -> None:
    assert waiting(3, 4, 5) == 12
    assert waiting(-1, 0, 2) == 2
    assert waiting(0, 0, 0) == 0


@given(st.integers(1, 500), st.integers(0, 500), st.integers(0, 500), st.integers(0, 50))
def test_property_count_wins_and_stays_in_range(length: int, reported: int, count: int,
                                                 read: int) -> None:
    i = info(reported, read, length, "1000-0", added=length + 7, first="900-0",
             last_entry="2000-0")
    lag = lag_from_count(i, count).lag
    assert lag == min(count, length)
    a = assess_lag(i)
    assert a.lag is None or 0 <= a.lag <= length


# --- boundaries of the rules ----------------------------------------------------------------

def test_a_group_at_the_first_entry_has_read_it() -> None:
    # last-delivered == the first entry: not "before the first", so only a count tells.
    i = info(None, None, 18, "24-0", first="24-0", last_entry="40-0")
    assert needs_count(i)
    assert lag_from_count(i, 17).lag == 17


def test_before_the_first_entry_everything_is_unread_whatever_redis_says() -> None:
    # XGROUP SETID ... ENTRIESREAD takes any number, so a report can be too low here.
    i = info(5, 16, 18, "10-0", added=21, first="24-0", last_entry="40-0")
    assert (assess_lag(i).lag, assess_lag(i).source) == (18, LagSource.BEFORE_FIRST)
    assert (lag_from_count(i, None).lag, lag_from_count(i, 3).lag) == (18, 18)


def test_a_fully_read_group_needs_no_count_even_when_asked() -> None:
    i = info(40, 60, 50, "100-0", added=100, first="51-0", last_entry="100-0")
    for count in (None, 7):
        a = lag_from_count(i, count)
        assert (a.lag, a.source) == (0, LagSource.FULLY_READ)


@pytest.mark.parametrize("reported", [None, -1, 21])
def test_an_impossible_report_is_counted_even_when_nothing_was_removed(
        reported: int | None) -> None:
    a = assess_lag(info(reported, 0, 20, added=20, first="1-0", last_entry="20-0"))
    assert (a.lag, a.source) == (None, LagSource.COUNTED)


def test_a_report_of_every_entry_is_plausible() -> None:
    a = assess_lag(info(20, 0, 20, "0-0"))  # a new group on a never-trimmed stream
    assert (a.lag, a.source) == (20, LagSource.REPORTED)


def test_a_report_of_zero_is_trusted_and_says_so() -> None:
    a = assess_lag(info(0, 10, 50, "20-0", added=100, first="11-0"))
    assert (a.lag, a.source) == (0, LagSource.REPORTED)
    assert lag_from_count(info(0, 10, 50, "20-0", added=100, first="11-0"), None).lag == 0


def test_an_unverifiable_report_needs_a_count_and_says_so() -> None:
    a = assess_lag(info(15, 6, 18, "30-0", added=21, first="24-0", last_entry="40-0"))
    assert (a.lag, a.source) == (None, LagSource.COUNTED)


def test_entries_added_from_xinfo_stream_outranks_the_sum() -> None:
    # Removed entries (added 21 > XLEN 18): a report that happens to add up to XLEN with
    # entries-read is not proof that nothing was removed.
    assert needs_count(info(12, 6, 18, "30-0", added=21, first="24-0", last_entry="40-0"))
    # Nothing removed (added == XLEN): exact even when the two do not add up.
    a = assess_lag(info(7, 10, 20, "13-0", added=20, first="1-0", last_entry="20-0"))
    assert (a.lag, a.source) == (7, LagSource.REPORTED)


def test_calibration_needs_every_stream_fact() -> None:
    cal = Calibration((30, 0), 6, 21, 2)
    for later in (info(23, None, 30, "32-0", added=31, first="24-0", last_entry="50-0"),
                  info(23, 8, 30, "32-0", added=None, first="24-0", last_entry="50-0"),
                  info(23, 8, 30, "32-0", added=31, first=None, last_entry="50-0")):
        assert needs_count(later, cal)


def test_uncounted_calibration_needs_the_report_and_both_counters() -> None:
    for i in (info(None, 6, 18, "30-0", added=21, first="24-0"),
              info(15, None, 18, "30-0", added=21, first="24-0"),
              info(15, 6, 18, "30-0", first="24-0")):
        assert lag_from_count(i, 13).calibration is None


def test_an_exact_report_calibrates_with_no_error() -> None:
    counted = lag_from_count(info(13, 8, 18, "30-0", added=21, first="24-0"), 13)
    assert counted.calibration == Calibration((30, 0), 8, 21, 0)


CAL = Calibration((30, 0), 6, 21, 2)


@pytest.mark.parametrize(("later", "lag"), [
    # nothing happened since the count: same position, counters and first entry
    (info(15, 6, 18, "30-0", added=21, first="24-0", last_entry="40-0"), 13),
    # trimmed up to the entry the group had read at calibration: no unread entry removed
    (info(15, 6, 18, "30-0", added=21, first="30-0", last_entry="40-0"), 13),
    (info(2, 8, 18, "32-0", added=21, first="24-0", last_entry="40-0"), 0),  # all read
])
def test_calibration_holds_up_to_its_bounds(later: GroupLagInfo, lag: int) -> None:
    assert not needs_count(later, CAL)
    a = assess_lag(later, CAL)
    assert (a.lag, a.source) == (lag, LagSource.CALIBRATED)


def test_a_calibrated_lag_may_be_every_entry() -> None:
    exact = Calibration((30, 0), 6, 21, 0)
    a = assess_lag(info(18, 8, 18, "32-0", added=31, first="24-0", last_entry="50-0"), exact)
    assert (a.lag, a.source) == (18, LagSource.CALIBRATED)
