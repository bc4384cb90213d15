"""The SLO's pure parts: what is measured from which observation, the condition and the
gauges; the metrics snapshot it is exported from; merging conditions of two writers."""

from __future__ import annotations

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from agentqueue import reasons
from agentqueue.conditions import merge_changed, set_condition
from agentqueue.metrics import GroupReport, Metrics
from agentqueue.models.queue import SLOSpec
from agentqueue.planning import slo
from agentqueue.planning.slo import GroupSample, QueueLoad, QueueSample, RetryCounters, RetryWindow
from agentqueue.redisgw.poller import GroupFigures

SLO = SLOSpec(max_depth=10, max_waiting_age="30s", max_retry_rate=0.02)


def group(lag: int = 0, pending: int = 0, due: int = 0, idle: float = 0.0) -> GroupSample:
    return GroupSample(lag=lag, pending=pending, due_retries=due, oldest_pending_age_s=idle)


# --- what is measured ----------------------------------------------------------------------

def test_stream_depth_is_the_slowest_groups_waiting_work() -> None:
    load = slo.queue_load("Stream", QueueSample(length=500, oldest_waiting_age_s=4.0),
                          {"fast": group(lag=1), "slow": group(lag=3, pending=2, due=1)})
    assert load.depth == 6  # lag + pending + due retries of "slow"; not the stream length
    assert load.oldest_waiting_age_s == 4.0
    assert load.notes == ()


def test_stream_age_is_the_older_of_pending_idle_and_undelivered_age() -> None:
    load = slo.queue_load("Stream", QueueSample(length=5, oldest_waiting_age_s=4.0),
                          {"g": group(pending=1, idle=12.5)})
    assert load.oldest_waiting_age_s == 12.5


def test_stream_without_groups_waits_on_every_entry() -> None:
    load = slo.queue_load("Stream", QueueSample(length=42, oldest_waiting_age_s=7.0), {})
    assert (load.depth, load.oldest_waiting_age_s) == (42, 7.0)


def test_stale_groups_are_named_not_counted() -> None:
    partial = slo.queue_load("Stream", QueueSample(length=9, oldest_waiting_age_s=None),
                             {"a": group(lag=2), "b": None})
    assert partial.depth == 2
    assert partial.notes == ("no current figures from ConsumerGroup(s) b",)
    none = slo.queue_load("Stream", QueueSample(length=9, oldest_waiting_age_s=1.0),
                          {"b": None})
    assert none.depth is None  # never the stream length: it holds acked entries too
    assert none.not_measured["maxDepth"] == "no current figures from ConsumerGroup(s) b"
    assert none.oldest_waiting_age_s == 1.0 and "undelivered entries only" in none.notes[0]


def test_list_and_pubsub() -> None:
    lst = slo.queue_load("List", QueueSample(length=3, oldest_waiting_age_s=61.0), {})
    assert (lst.depth, lst.oldest_waiting_age_s) == (3, 61.0)
    ps = slo.queue_load("PubSub", QueueSample(length=0, oldest_waiting_age_s=None), {},
                        RetryWindow(1, 2, ""))
    assert ps.depth is None and ps.oldest_waiting_age_s is None
    assert ps.deliveries is None and ps.retries is None
    assert ps.not_measured == {o: slo.PUBSUB_STORES_NOTHING for o in slo.OBJECTIVES}


def test_retry_rate_and_unobserved_queue_are_not_measured() -> None:
    load = slo.queue_load("Stream", None, {})
    assert load.depth is None and load.oldest_waiting_age_s is None
    assert load.not_measured["maxRetryRate"] == slo.NO_RETRY_WINDOW
    assert load.not_measured["maxWaitingAge"] == "no current observation of the queue"
    no_age = slo.queue_load("Stream", QueueSample(length=1, oldest_waiting_age_s=None), {})
    assert no_age.not_measured["maxWaitingAge"] == (
        "not read (no maxWaitingAge was set when observed)")
    for unobserved in (load, slo.queue_load("List", None, {})):
        assert unobserved.not_measured["maxDepth"] == "no current observation of the queue"
        # not measured is None, never a made-up figure
        assert unobserved.retries is None and unobserved.deliveries is None


def test_no_group_figures_at_all_names_every_group() -> None:
    for queue in (None, QueueSample(length=9, oldest_waiting_age_s=None)):
        load = slo.queue_load("Stream", queue, {"b": None, "a": None})
        assert load.depth is None
        assert load.not_measured["maxDepth"] == "no current figures from ConsumerGroup(s) a, b"
        assert load.notes == ()  # no waiting age to qualify


# --- the retry rate: counters read by two observations -------------------------------------

def stream_counters(retries: dict[int, int],
                    read: dict[tuple[int, str], int | None]) -> RetryCounters:
    return RetryCounters(retries, read)


def test_retry_window_sums_partitions_and_groups() -> None:
    before = stream_counters({0: 10, 1: 0}, {(0, "a"): 100, (0, "b"): 40, (1, "a"): 7})
    after = stream_counters({0: 13, 1: 2}, {(0, "a"): 110, (0, "b"): 45, (1, "a"): 12})
    window = slo.retry_window(before, after)
    assert (window.retries, window.deliveries) == (5, 20)
    assert window.rate == 0.25 and window.why == ""
    # List: the SDK's own count of deliveries
    lst = slo.retry_window(RetryCounters({0: 1}, {(0, ""): 10}),
                           RetryCounters({0: 1}, {(0, ""): 30}))
    assert (lst.retries, lst.deliveries, lst.rate) == (0, 20, 0.0)


def test_retry_window_without_a_figure_says_why() -> None:
    c = stream_counters({0: 5}, {(0, "a"): 50})
    assert slo.retry_window(None, c).why == slo.NO_RETRY_WINDOW  # the first observation
    assert slo.retry_window(c, None).why == slo.NO_RETRY_WINDOW  # PubSub, nothing read
    idle = slo.retry_window(c, c)
    assert idle.rate is None and idle.why == slo.NO_DELIVERIES
    # nacks of earlier deliveries, none new: still no figure (never a division by 0)
    late = slo.retry_window(c, stream_counters({0: 7}, {(0, "a"): 50}))
    assert late.rate is None and late.why == slo.NO_DELIVERIES
    # Redis restarted without persistence: counters back to 0, skip the window
    reset = slo.retry_window(c, stream_counters({0: 0}, {(0, "a"): 3}))
    assert reset.rate is None and reset.why == slo.COUNTERS_RESET
    setid = slo.retry_window(c, stream_counters({0: 9}, {(0, "a"): 20}))  # XGROUP SETID
    assert setid.why == slo.COUNTERS_RESET
    # a group came or went, a partition was added: no baseline for part of it
    for changed in (stream_counters({0: 6}, {(0, "a"): 60, (0, "b"): 1}),
                    stream_counters({0: 6}, {}),
                    stream_counters({0: 6, 1: 0}, {(0, "a"): 60})):
        assert slo.retry_window(c, changed).why == slo.COUNTERS_CHANGED
    unknown = slo.retry_window(c, stream_counters({0: 6}, {(0, "a"): None}))
    assert unknown.why == slo.ENTRIES_READ_UNKNOWN


def test_a_group_redis_has_no_entries_read_for() -> None:
    """A group that read nothing yet has no entries-read: it delivered nothing while
    its last-delivered id stays put; once it moved, that window has no figure."""
    idle = {(0, "new"): "0-0"}
    before = RetryCounters({0: 1}, {(0, "a"): 10, (0, "new"): None}, idle)
    after = RetryCounters({0: 2}, {(0, "a"): 14, (0, "new"): None}, idle)
    assert slo.retry_window(before, after) == RetryWindow(1, 4, "")
    moved = RetryCounters({0: 2}, {(0, "a"): 14, (0, "new"): None}, {(0, "new"): "5-0"})
    assert slo.retry_window(before, moved).why == slo.ENTRIES_READ_UNKNOWN
    first_read = RetryCounters({0: 2}, {(0, "a"): 14, (0, "new"): 700}, {(0, "new"): "5-0"})
    assert slo.retry_window(before, first_read).why == slo.ENTRIES_READ_UNKNOWN
    # whatever order the groups come in: the idle one does not hide the others' reads
    before = RetryCounters({0: 1}, {(0, "new"): None, (0, "a"): 10}, idle)
    after = RetryCounters({0: 2}, {(0, "new"): None, (0, "a"): 14}, idle)
    assert slo.retry_window(before, after) == RetryWindow(1, 4, "")


def test_retry_rate_measured_from_the_window() -> None:
    window = RetryWindow(retries=3, deliveries=4, why="")
    load = slo.queue_load("Stream", QueueSample(5, None), {"g": group()}, window)
    assert (load.retries, load.deliveries) == (3, 4)
    assert "maxRetryRate" not in load.not_measured
    out = slo.assess(SLOSpec(max_retry_rate=0.2), load)
    assert out is not None
    assert (out.status, out.reason) == ("True", reasons.RETRY_RATE_EXCEEDED)
    assert out.message == "retry rate 0.750 is 0.550 over maxRetryRate 0.200"
    assert out.gauges == {"maxRetryRate": 1.0}
    within = slo.assess(SLOSpec(max_retry_rate=0.2), slo.queue_load(
        "List", QueueSample(0, None), {}, RetryWindow(1, 5, "")))
    assert within is not None and (within.status, within.message) == (
        "False", "all objectives met")
    assert within.gauges == {"maxRetryRate": 0.0}
    idle = slo.assess(SLOSpec(max_retry_rate=0.2), slo.queue_load(
        "List", QueueSample(0, None), {}, RetryWindow(why=slo.NO_DELIVERIES)))
    assert idle is not None and (idle.status, idle.gauges) == ("Unknown", {})
    assert idle.message == f"not measured: maxRetryRate ({slo.NO_DELIVERIES})"


# --- evaluation and the condition -----------------------------------------------------------

def test_evaluate_skips_what_was_not_measured() -> None:
    assert slo.evaluate(SLO, QueueLoad()) == []
    breaches = slo.evaluate(SLO, QueueLoad(depth=11, oldest_waiting_age_s=31.0, deliveries=100,
                                           retries=3))
    assert [(b.objective, b.observed, b.limit) for b in breaches] == [
        ("maxDepth", 11, 10), ("maxWaitingAge", 31.0, 30.0), ("maxRetryRate", 0.03, 0.02)]
    assert slo.evaluate(SLO, QueueLoad(depth=10, oldest_waiting_age_s=30.0)) == []
    assert slo.evaluate(None, QueueLoad(depth=10**6)) == []


def test_breach_messages_say_by_how_much() -> None:
    assert slo.Breach("maxDepth", 812, 500).message == "depth 812 is 312 over maxDepth 500"
    assert slo.Breach("maxWaitingAge", 45.0, 30.0).message == (
        "oldest waiting message is 45.0s old, 15.0s over maxWaitingAge 30s")
    assert slo.Breach("maxRetryRate", 0.05, 0.02).message == (
        "retry rate 0.050 is 0.030 over maxRetryRate 0.020")


def test_assess_one_breach() -> None:
    out = slo.assess(SLOSpec(max_depth=10), QueueLoad(depth=12, not_measured={}))
    assert out is not None
    assert (out.status, out.reason) == ("True", reasons.DEPTH_EXCEEDED)
    assert out.message == "depth 12 is 2 over maxDepth 10"
    assert out.gauges == {"maxDepth": 1.0} and out.breached == {"maxDepth"}


def test_assess_several_breaches_and_what_was_not_measured() -> None:
    load = slo.queue_load("Stream", QueueSample(length=0, oldest_waiting_age_s=40.0),
                          {"g": group(lag=20)})
    out = slo.assess(SLO, load)
    assert out is not None
    assert (out.status, out.reason) == ("True", reasons.OBJECTIVES_BREACHED)
    assert out.message == (
        "depth 20 is 10 over maxDepth 10; oldest waiting message is 40.0s old, 10.0s over "
        f"maxWaitingAge 30s; not measured: maxRetryRate ({slo.NO_RETRY_WINDOW})")
    assert out.gauges == {"maxDepth": 1.0, "maxWaitingAge": 1.0}  # no series for the rate


def test_assess_within_and_unknown() -> None:
    met = slo.assess(SLOSpec(max_depth=10, max_waiting_age="1m"),
                     QueueLoad(depth=10, oldest_waiting_age_s=1.0))
    assert met is not None
    assert (met.status, met.reason, met.message) == ("False", reasons.SLO_MET,
                                                     "all objectives met")
    assert met.gauges == {"maxDepth": 0.0, "maxWaitingAge": 0.0}
    partly = slo.assess(SLO, slo.queue_load("List", QueueSample(3, 2.0), {}))
    assert partly is not None and partly.status == "False"
    assert partly.message.startswith("objectives met: maxDepth, maxWaitingAge; not measured: "
                                     "maxRetryRate")
    unknown = slo.assess(SLOSpec(max_retry_rate=0.1), QueueLoad(
        not_measured={"maxRetryRate": slo.NO_RETRY_WINDOW}))
    assert unknown is not None
    assert (unknown.status, unknown.reason) == ("Unknown", reasons.SLO_NOT_MEASURED)
    assert unknown.message == f"not measured: maxRetryRate ({slo.NO_RETRY_WINDOW})"
    assert unknown.gauges == {}
    assert slo.assess(None, QueueLoad(depth=1)) is None
    assert slo.assess(SLOSpec(), QueueLoad(depth=1)) is None


@pytest.mark.parametrize("deliveries", [None, 0])
def test_retries_without_deliveries_are_no_rate(deliveries: int | None) -> None:
    load = QueueLoad(deliveries=deliveries, retries=2)
    assert slo.evaluate(SLOSpec(max_retry_rate=0.1), load) == []
    out = slo.assess(SLOSpec(max_retry_rate=0.1), load)
    assert out is not None and (out.status, out.gauges) == ("Unknown", {})
    assert out.message == "not measured: maxRetryRate (no figure)"  # no reason was given


def test_assess_message_keeps_every_part() -> None:
    """Met objectives, the unmeasured ones with why, then the load's notes."""
    load = slo.queue_load("Stream", QueueSample(length=9, oldest_waiting_age_s=None),
                          {"a": group(lag=2), "b": None})
    out = slo.assess(SLO, load)
    assert out is not None
    assert (out.status, out.reason, out.breaches, out.breached) == (
        "False", reasons.SLO_MET, (), frozenset())
    assert out.message == (
        "objectives met: maxDepth; not measured: maxWaitingAge (not read (no maxWaitingAge "
        f"was set when observed)); maxRetryRate ({slo.NO_RETRY_WINDOW}); no current figures "
        "from ConsumerGroup(s) b")
    unknown = slo.assess(SLOSpec(max_depth=1), QueueLoad(notes=("a caveat",)))
    assert unknown is not None
    assert (unknown.status, unknown.breaches, unknown.breached) == ("Unknown", (), frozenset())
    assert unknown.message == "not measured: maxDepth (no figure); a caveat"


def test_configured_order() -> None:
    assert slo.configured(SLOSpec(max_retry_rate=0.1, max_depth=1)) == ("maxDepth",
                                                                         "maxRetryRate")


# --- metrics snapshot ---------------------------------------------------------------------

def _scrape(m: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(m.registry).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def test_metrics_keep_counters_across_observations_and_forget_slo_series() -> None:
    m = Metrics()
    m.observe_queue("ns", "q", {0: {"length": 3.0}})
    m.queues[("ns", "q")].trimmed_total += 5  # retention's counter
    m.set_slo("ns", "q", {"maxDepth": 1.0, "maxWaitingAge": 0.0})
    m.observe_queue("ns", "q", {0: {"length": 4.0}})  # the next observation
    got = _scrape(m)
    assert got[("agentqueue_queue_trimmed_total", (("namespace", "ns"), ("queue", "q")))] == 5
    assert got[("agentqueue_queue_length",
                (("namespace", "ns"), ("partition", "0"), ("queue", "q")))] == 4
    slo_key = ("agentqueue_queue_slo_breached",
               (("namespace", "ns"), ("objective", "maxDepth"), ("queue", "q")))
    assert got[slo_key] == 1.0
    m.set_slo("ns", "q", {"maxDepth": 0.0})
    assert _scrape(m)[slo_key] == 0.0
    # the retry counter: a series where the observation read it (not for PubSub)
    m.observe_queue("ns", "q", {0: {"length": 4.0, "retries_total": 7.0}, 1: {}})
    got = _scrape(m)
    assert got[("agentqueue_queue_retries_total",
                (("namespace", "ns"), ("partition", "0"), ("queue", "q")))] == 7
    assert not [k for k in got if k[0] == "agentqueue_queue_retries_total"
                and ("partition", "1") in k[1]]
    m.forget_queue("ns", "q")
    assert not [k for k in _scrape(m) if k[0].startswith("agentqueue_queue_")]
    m.set_slo("ns", "gone", {})  # nothing to export: no entry is made
    assert ("ns", "gone") not in m.queues


def test_group_figures_freshness_feeds_the_load() -> None:
    from agentqueue.models import AgentQueueSpec
    from agentqueue.services.queues import slo_load

    spec = AgentQueueSpec.from_wire({"slo": {"maxDepth": 1}})
    reports = {
        ("ns", "fresh"): GroupReport("q", GroupFigures(lag=5, waiting=5), observed_at=1000.0),
        ("ns", "old"): GroupReport("q", GroupFigures(lag=50, waiting=50), observed_at=900.0),
        ("ns", "other"): GroupReport("elsewhere", GroupFigures(lag=70, waiting=70),
                                     observed_at=1000.0),
        ("ns", "unread"): GroupReport("q", None, observed_at=1000.0),
    }
    load = slo_load(reports, "ns", "q", spec, QueueSample(0, None),
                    ["fresh", "old", "other", "unread"], now=1001.0)
    assert load.depth == 5
    assert load.notes == ("no current figures from ConsumerGroup(s) old, other, unread",)


# --- conditions of two writers ------------------------------------------------------------

def test_merge_changed_keeps_the_other_writers_conditions() -> None:
    seen = set_condition([], "Ready", True, "Provisioned", now="t0")
    ours = set_condition(seen, "Ready", False, "RedisUnavailable", now="t1")
    fresh = set_condition(seen, reasons.SLO_BREACHED, True, reasons.DEPTH_EXCEEDED, now="t1")
    merged = merge_changed(fresh, ours, seen)
    assert {c["type"]: c["reason"] for c in merged} == {
        "Ready": "RedisUnavailable", reasons.SLO_BREACHED: reasons.DEPTH_EXCEEDED}
    # Unchanged by us: fresh wins; removed by us: removed.
    assert merge_changed(fresh, seen, seen) == fresh
    assert merge_changed(fresh, [], seen) == [c for c in fresh if c["type"] != "Ready"]
