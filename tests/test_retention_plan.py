"""planning.retention: trim points, protection report, policy selection (pure)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agentqueue.models.retention import LabelSelector, RetentionPolicySpec
from agentqueue.planning.retention import (
    APPROXIMATE_LIMIT,
    GroupPosition,
    PartitionObservation,
    PolicyRef,
    RetentionSettings,
    TrimPlan,
    age_cut,
    effective_policy,
    first_unacked,
    floor_of,
    plan_dead_letter,
    plan_trim,
    selector_matches,
)

NOW = 1_000_000


def ids(n: int, start: int = 1) -> list[str]:
    return [f"{start + i}-0" for i in range(n)]


def obs(length: int, groups: list[GroupPosition], unacked: int | None = None,
        older: int | None = None, first: str = "1-0") -> PartitionObservation:
    return PartitionObservation(length, first, groups, unacked, older)


# ---- settings --------------------------------------------------------------------------------

def test_settings_from_spec() -> None:
    spec = RetentionPolicySpec.model_validate({
        "maxLength": 100, "maxAge": "1h", "exact": True, "protectUndelivered": False,
        "deadLetter": {"maxLength": 5, "maxAge": "30s"}, "idempotencyKeyTTL": "2h"})
    s = RetentionSettings.from_spec(spec)
    assert s == RetentionSettings(100, True, 3_600_000, False, 5, 30_000, 7_200_000)
    assert s.trims_queue and s.trims_dead_letters


def test_settings_from_an_empty_spec_trim_nothing() -> None:
    s = RetentionSettings.from_spec(RetentionPolicySpec.model_validate({}))
    assert s == RetentionSettings()
    assert not s.trims_queue and not s.trims_dead_letters


# ---- floors ----------------------------------------------------------------------------------

def test_first_unacked_is_oldest_pending_or_after_last_delivered() -> None:
    assert first_unacked(GroupPosition("g", "10-0")) == (10, 1)
    assert first_unacked(GroupPosition("g", "10-0", "7-0")) == (7, 0)


def test_floor_is_the_minimum_over_groups_with_its_holders() -> None:
    floor, holders = floor_of([GroupPosition("fast", "90-0"), GroupPosition("slow", "20-0"),
                               GroupPosition("stuck", "95-0", "20-1")])
    assert floor == (20, 1) and holders == ["slow", "stuck"]
    assert floor_of([]) == (None, [])


# ---- maxLength --------------------------------------------------------------------------------

def test_no_groups_plain_maxlen() -> None:
    p = plan_trim(RetentionSettings(max_length=10, exact=True), obs(50, []), NOW)
    assert p.xtrim_args() == [["MAXLEN", "=", "10"]]
    assert p.protected == 0 and p.dropped_undelivered(40) == 0


def test_approximate_uses_tilde_and_limit() -> None:
    p = plan_trim(RetentionSettings(max_length=10), obs(50, []), NOW)
    assert p.xtrim_args() == [["MAXLEN", "~", "10", "LIMIT", str(APPROXIMATE_LIMIT)]]


def test_nothing_to_do_when_short_enough_or_no_policy() -> None:
    assert not plan_trim(RetentionSettings(max_length=50), obs(50, []), NOW).trims
    assert not plan_trim(RetentionSettings(), obs(50, []), NOW).trims
    assert not plan_trim(RetentionSettings(max_length=5), obs(0, []), NOW).trims


@pytest.mark.parametrize(("settings", "length"), [
    (RetentionSettings(), 50),  # no limit: nothing to trim, nothing to report
    (RetentionSettings(max_length=5), 0),  # an empty stream
    (RetentionSettings(max_age_ms=1000), 0),
])
def test_no_trim_plans_an_empty_plan_even_with_lagging_groups(settings: RetentionSettings,
                                                              length: int) -> None:
    g = [GroupPosition("slow", "0-0")]
    assert plan_trim(settings, obs(length, g, unacked=length), NOW) == TrimPlan()


def test_a_one_entry_stream_is_trimmed_too() -> None:
    p = plan_trim(RetentionSettings(max_age_ms=1000, exact=True), obs(1, []), NOW)
    assert p.xtrim_args() == [["MINID", "=", f"{NOW - 1000}-0"]]


@pytest.mark.parametrize(("plan", "args"), [
    (TrimPlan(maxlen=5), [["MAXLEN", "~", "5", "LIMIT", str(APPROXIMATE_LIMIT)]]),
    # Redis refuses LIMIT with "=": an exact trim never carries one.
    (TrimPlan(maxlen=5, approximate=False), [["MAXLEN", "=", "5"]]),
    (TrimPlan(minid="7-0", maxlen=5, approximate=False),
     [["MINID", "=", "7-0"], ["MAXLEN", "=", "5"]]),
])
def test_xtrim_args_limit_only_with_approximate(plan: TrimPlan, args: list[list[str]]) -> None:
    assert plan.xtrim_args() == args
    assert plan.limit == (APPROXIMATE_LIMIT if plan.approximate else None)


def test_protected_maxlen_keeps_what_a_lagging_group_has_not_acked() -> None:
    # 100 entries; fast group read all, slow group has 70 unacked → keep 70, not 20.
    g = [GroupPosition("fast", "100-0"), GroupPosition("slow", "30-0")]
    p = plan_trim(RetentionSettings(max_length=20, exact=True), obs(100, g, unacked=70), NOW)
    assert p.maxlen == 20 and p.guard_unacked == 70
    assert p.protected == 50 and p.blocked_by == ("slow",) and p.protected_exact
    assert p.dropped_undelivered(30) == 0


def test_protected_maxlen_unaffected_when_groups_are_ahead() -> None:
    g = [GroupPosition("g", "95-0")]
    p = plan_trim(RetentionSettings(max_length=20, exact=True), obs(100, g, unacked=5), NOW)
    assert p.protected == 0 and p.blocked_by == () and p.guard_unacked == 5


def test_group_before_first_entry_protects_everything_without_a_count() -> None:
    g = [GroupPosition("new", "0-0")]
    p = plan_trim(RetentionSettings(max_length=20), obs(100, g, unacked=None), NOW)
    assert p.guard_unacked == 100 and p.protected == 80


def test_unknown_unacked_skips_a_protected_maxlen() -> None:
    g = [GroupPosition("g", "50-0")]
    p = plan_trim(RetentionSettings(max_length=20), obs(100, g, unacked=None), NOW)
    assert p.maxlen is None and p.skipped and p.protected_exact is False


@pytest.mark.parametrize("exact", [True, False])
def test_protected_maxlen_at_exactly_max_length_plans_nothing(exact: bool) -> None:
    g = [GroupPosition("slow", "10-0")]
    p = plan_trim(RetentionSettings(max_length=100, exact=exact), obs(100, g, unacked=90),
                  NOW)
    assert not p.trims and p.guard_unacked is None and p.protected == 0


@pytest.mark.parametrize(("exact", "mode", "extra"), [
    (True, "=", []),
    (False, "~", ["LIMIT", str(APPROXIMATE_LIMIT)]),
])
def test_protected_trims_keep_the_policy_mode(exact: bool, mode: str, extra: list[str]) -> None:
    g = [GroupPosition("slow", f"{NOW - 5000}-0")]
    p = plan_trim(RetentionSettings(max_length=10, max_age_ms=1000, exact=exact),
                  obs(100, g, unacked=60, older=12), NOW)
    assert p.protecting and p.xtrim_args() == [["MINID", mode, f"{NOW - 5000}-1", *extra],
                                               ["MAXLEN", mode, "10", *extra]]


def test_unprotected_reports_exactly_how_many_undelivered_were_dropped() -> None:
    g = [GroupPosition("slow", "30-0")]  # 30 acked before the floor, 70 unacked
    p = plan_trim(RetentionSettings(max_length=20, exact=True, protect_undelivered=False),
                  obs(100, g, unacked=70), NOW)
    assert p.xtrim_args() == [["MAXLEN", "=", "20"]] and p.guard_unacked is None
    assert p.dropped_undelivered(80) == 50
    assert p.dropped_undelivered(25) == 0  # an approximate trim that stopped short
    unknown = plan_trim(RetentionSettings(max_length=20, protect_undelivered=False),
                        obs(100, g, unacked=None), NOW)
    assert unknown.dropped_undelivered(80) is None


def test_unprotected_floor_at_the_first_entry_means_nothing_was_acked() -> None:
    # Known from the ids alone: no count of unacked entries is needed.
    g = [GroupPosition("slow", "9-0", "5-0")]  # the floor is its oldest pending entry
    p = plan_trim(RetentionSettings(max_length=20, protect_undelivered=False),
                  obs(100, g, unacked=None, first="5-0"), NOW)
    assert p.acked_before_floor == 0 and p.dropped_undelivered(80) == 80


def test_unprotected_count_racing_appends_never_reports_negative_acked_entries() -> None:
    # XLEN and the lag are read at slightly different times: an append in between can
    # make the unacked count exceed the length; nothing before the floor was acked.
    g = [GroupPosition("slow", "30-0")]
    p = plan_trim(RetentionSettings(max_length=20, protect_undelivered=False),
                  obs(100, g, unacked=103), NOW)
    assert p.acked_before_floor == 0 and p.dropped_undelivered(80) == 80


# ---- maxAge ----------------------------------------------------------------------------------

def test_max_age_is_a_minid_of_now_minus_age() -> None:
    p = plan_trim(RetentionSettings(max_age_ms=1000, exact=True), obs(10, []), NOW)
    assert p.xtrim_args() == [["MINID", "=", f"{NOW - 1000}-0"]]


def test_protected_max_age_stops_at_the_floor_and_counts_what_it_kept() -> None:
    g = [GroupPosition("slow", f"{NOW - 5000}-0")]
    p = plan_trim(RetentionSettings(max_age_ms=1000, exact=True),
                  obs(100, g, unacked=60, older=12), NOW)
    assert p.minid == f"{NOW - 5000}-1" and p.protected == 12 and p.blocked_by == ("slow",)
    unknown = plan_trim(RetentionSettings(max_age_ms=1000), obs(100, g, unacked=60), NOW)
    assert unknown.protected_exact is False and unknown.guard_unacked is None


def test_protected_max_age_with_the_floor_exactly_at_the_cut_protects_nothing() -> None:
    # MINID keeps the cut id itself, so a floor there costs nothing and needs no count.
    g = [GroupPosition("g", f"{NOW - 1000}-0", f"{NOW - 1000}-0")]
    p = plan_trim(RetentionSettings(max_age_ms=1000), obs(100, g, unacked=60), NOW)
    assert p.minid == f"{NOW - 1000}-0"
    assert p.protected == 0 and p.protected_exact is True and p.blocked_by == ()


def test_age_cut_before_the_epoch_is_zero() -> None:
    assert age_cut(5000, 1000) == (4000, 0)
    assert age_cut(500, 1000) == (0, 0)
    assert age_cut(1000, 1000) == (0, 0)


def test_protected_max_age_unaffected_when_floor_is_newer() -> None:
    g = [GroupPosition("g", f"{NOW}-5")]
    p = plan_trim(RetentionSettings(max_age_ms=1000), obs(100, g, unacked=0), NOW)
    assert p.minid == f"{NOW - 1000}-0" and p.protected == 0


def test_both_limits_protected_takes_the_larger_kept_count() -> None:
    g = [GroupPosition("slow", f"{NOW - 5000}-0")]
    p = plan_trim(RetentionSettings(max_length=10, max_age_ms=1000, exact=True),
                  obs(100, g, unacked=60, older=12), NOW)
    assert p.minid == f"{NOW - 5000}-1" and p.maxlen == 10 and p.protected == 50
    assert [a[0] for a in p.xtrim_args()] == ["MINID", "MAXLEN"]


# ---- dead letters ---------------------------------------------------------------------------

def test_dead_letter_plan() -> None:
    p = plan_dead_letter(RetentionSettings(dead_letter_max_length=5, dead_letter_max_age_ms=10,
                                           exact=True), NOW)
    assert p.xtrim_args() == [["MINID", "=", f"{NOW - 10}-0"], ["MAXLEN", "=", "5"]]
    assert not plan_dead_letter(RetentionSettings(max_length=5), NOW).trims
    approximate = plan_dead_letter(RetentionSettings(dead_letter_max_length=5), NOW)
    assert approximate.xtrim_args() == [["MAXLEN", "~", "5", "LIMIT", str(APPROXIMATE_LIMIT)]]


@given(st.integers(1, 300), st.integers(1, 300), st.integers(0, 300), st.booleans())
def test_property_protection_never_plans_past_the_floor(length: int, n: int, unacked: int,
                                                        protect: bool) -> None:
    unacked = min(unacked, length)
    g = [GroupPosition("g", f"{length - unacked}-0")]
    p = plan_trim(RetentionSettings(max_length=n, exact=True, protect_undelivered=protect),
                  obs(length, g, unacked=unacked), NOW)
    if length <= n:
        return
    if protect:
        assert p.maxlen is not None and p.guard_unacked is not None
        kept = max(p.maxlen, p.guard_unacked)
        assert kept >= unacked and length - kept <= length - unacked
        assert p.protected == max(0, unacked - n)
        assert p.dropped_undelivered(length - kept) == 0
    else:
        assert p.dropped_undelivered(length - n) == max(0, unacked - n)


# ---- policy selection ------------------------------------------------------------------------

@pytest.mark.parametrize(("selector", "labels", "expected"), [
    (None, {"a": "1"}, False),
    ({}, {}, True),
    ({"matchLabels": {"tier": "gold"}}, {"tier": "gold", "x": "y"}, True),
    ({"matchLabels": {"tier": "gold"}}, {"tier": "silver"}, False),
    ({"matchExpressions": [{"key": "env", "operator": "In", "values": ["a", "b"]}]},
     {"env": "b"}, True),
    ({"matchExpressions": [{"key": "env", "operator": "In", "values": ["a"]}]}, {}, False),
    ({"matchExpressions": [{"key": "env", "operator": "NotIn", "values": ["a"]}]}, {}, True),
    ({"matchExpressions": [{"key": "env", "operator": "NotIn", "values": ["a"]}]},
     {"env": "a"}, False),
    ({"matchExpressions": [{"key": "env", "operator": "Exists"}]}, {"env": ""}, True),
    ({"matchExpressions": [{"key": "env", "operator": "DoesNotExist"}]}, {"env": "x"}, False),
    ({"matchLabels": {"t": "g"}, "matchExpressions": [{"key": "e", "operator": "Exists"}]},
     {"t": "g"}, False),
])
def test_selector_matching(selector: dict | None, labels: dict[str, str], expected: bool) -> None:
    assert selector_matches(selector, labels) is expected


POLICIES = [
    ("newer", "2024-05-02T00:00:00Z", {"matchLabels": {"tier": "gold"}}),
    ("older", "2024-05-01T00:00:00Z", {"matchLabels": {"tier": "gold"}}),
    ("other", "2024-04-01T00:00:00Z", {"matchLabels": {"tier": "silver"}}),
    ("byref", "2024-03-01T00:00:00Z", None),
]


def test_oldest_matching_policy_wins_others_conflict() -> None:
    assert effective_policy({"tier": "gold"}, None, POLICIES) == ("older", ["newer"])
    assert effective_policy({"tier": "bronze"}, None, POLICIES) == (None, [])
    assert effective_policy(None, None, POLICIES) == (None, [])


def test_explicit_reference_wins() -> None:
    assert effective_policy({"tier": "gold"}, "byref", POLICIES) == ("byref", ["older", "newer"])
    assert effective_policy({}, "newer", POLICIES) == ("newer", [])
    assert effective_policy({"tier": "gold"}, "missing", POLICIES) == (None, ["older", "newer"])


def test_ties_break_by_name_and_refs_accepted() -> None:
    same = [PolicyRef("b", "2024-01-01T00:00:00Z", None),
            ("a", "2024-01-01T00:00:00Z", {})]
    assert effective_policy({}, None, same) == ("a", [])
    gold = LabelSelector.model_validate({"matchLabels": {"tier": "gold"}})
    typed = [PolicyRef("p", "2024-01-01T00:00:00Z", gold), ("q", "2024-02-01T00:00:00Z", gold)]
    assert effective_policy({"tier": "gold"}, None, typed) == ("p", ["q"])
