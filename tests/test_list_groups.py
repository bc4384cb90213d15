"""planning.list_groups: ConsumerGroups on List queues (fields that apply, processing
lists, the group's figures). Pure."""

from __future__ import annotations

import pytest

from agentqueue.models.group import ConsumerGroupSpec
from agentqueue.planning.list_groups import (
    MAX_PROCESSING_KEYS,
    ListGroupWork,
    ListPartitionWork,
    group_work,
    processing_keys,
    processing_partition,
    stream_only_fields,
)
from agentqueue_client.keys import PartitionKeys


def spec(**fields: object) -> ConsumerGroupSpec:
    return ConsumerGroupSpec.from_wire({"queueRef": {"name": "q"}, **fields})


# --- which fields a List queue refuses ------------------------------------------------------

def test_defaults_and_list_fields_are_accepted() -> None:
    assert stream_only_fields(spec()) == []
    # What the CRD fills in, written out, and everything that has a List meaning.
    assert stream_only_fields(spec(
        startFrom="NewMessages", deadConsumerTimeout="1h", groupName="human-desk",
        visibilityTimeout="5s", maxDeliveries=3, paused=True, pauseReason="x",
        scaleTargetRef={"name": "w"}, scaling={"minReplicas": 1, "maxReplicas": 4})) == []
    # The same duration written another way is still the default.
    assert stream_only_fields(spec(deadConsumerTimeout="60m")) == []
    assert stream_only_fields(spec(deadConsumerTimeout="3600s")) == []


@pytest.mark.parametrize("value", ["Beginning", "0", "1700000000000-0"])
def test_start_from_is_refused(value: str) -> None:
    (problem,) = stream_only_fields(spec(startFrom=value))
    assert problem.startswith(f"spec.startFrom ({value}) applies to Stream queues only")
    assert "remove the field" in problem


@pytest.mark.parametrize("value", ["59m", "2h", "1h1s", "10m"])
def test_dead_consumer_timeout_is_refused(value: str) -> None:
    (problem,) = stream_only_fields(spec(deadConsumerTimeout=value))
    assert problem.startswith(f"spec.deadConsumerTimeout ({value}) applies to Stream queues")
    assert "visibilityTimeout" in problem


def test_both_are_reported_in_field_order() -> None:
    problems = stream_only_fields(spec(startFrom="Beginning", deadConsumerTimeout="5m"))
    assert [p.split(" ")[0] for p in problems] == ["spec.startFrom", "spec.deadConsumerTimeout"]


# --- processing lists ------------------------------------------------------------------------

@pytest.mark.parametrize(("key", "partition"), [
    ("aq:{ns/q/0}:proc:agent-1", 0),
    ("aq:{ns/q/12}:proc:a:b", 12),
    ("aq:{ns/q/3}:proc:x", 3),
    ("aq:{ns/q/2}:proc:x}:proc:y", 2),  # a consumer name may hold anything
])
def test_processing_partition(key: str, partition: int) -> None:
    assert processing_partition(key, "ns", "q") == partition


@pytest.mark.parametrize("key", [
    "aq:{ns/q/0}:proc:#consumers",   # the heartbeat set
    "aq:{ns/q/0}:proc:",             # no consumer
    "aq:{ns/q/0}:q",                 # the queue itself
    "aq:{ns/q/0}:idem:k",
    "aq:{ns/q2/0}:proc:c",           # another queue whose name starts the same
    "aq:{ns2/q/0}:proc:c",           # another namespace
    "aq:{ns/q/x}:proc:c",            # not a partition number
    "aq:{ns/q/}:proc:c",
    "aq:{ns/q/01}:proc:c",           # not partition 1's tag
    "aq:{ns/q/-1}:proc:c",
    "xaq:{ns/q/0}:proc:c",
])
def test_not_a_processing_list(key: str) -> None:
    assert processing_partition(key, "ns", "q") is None


def test_processing_keys_merge_scan_and_heartbeats() -> None:
    p0, p1 = PartitionKeys("ns", "q", 0), PartitionKeys("ns", "q", 1)
    scanned = ["aq:{ns/q/0}:proc:b", "aq:{ns/q/1}:proc:c", "aq:{ns/q/0}:proc:#consumers",
               "aq:{ns/other/0}:proc:z"]
    assert processing_keys(p0, scanned, ["a", "b", "#consumers", ""]) == [
        "aq:{ns/q/0}:proc:a", "aq:{ns/q/0}:proc:b"]
    assert processing_keys(p1, scanned, []) == ["aq:{ns/q/1}:proc:c"]
    assert processing_keys(p1, [], []) == []


def test_processing_keys_are_bounded() -> None:
    p0 = PartitionKeys("ns", "q", 0)
    names = [f"c{i:05d}" for i in range(MAX_PROCESSING_KEYS + 5)]
    got = processing_keys(p0, [], names)
    assert len(got) == MAX_PROCESSING_KEYS
    assert got == sorted(got) and got[0] == "aq:{ns/q/0}:proc:c00000"


# --- the group's figures ---------------------------------------------------------------------

def part(queued: int = 0, in_flight: int = 0, due: int = 0, live: int = 0,
         now_ms: int = 100_000, oldest_ms: int | None = None) -> ListPartitionWork:
    return ListPartitionWork(queued, in_flight, due, live, now_ms, oldest_ms)


def test_group_work_sums_counts_and_takes_the_oldest() -> None:
    w = group_work([part(queued=7, in_flight=2, due=1, live=2, oldest_ms=95_000),
                    part(queued=3, in_flight=4, due=0, live=3, oldest_ms=99_500),
                    part(live=1)])
    assert w == ListGroupWork(lag=10, pending=6, due_retries=1, waiting=17, oldest_age_s=5.0,
                              consumers=3)


def test_group_work_empty_and_clock_skew() -> None:
    assert group_work([]) == ListGroupWork(0, 0, 0, 0, 0.0, 0)
    # An id from a consumer whose clock runs ahead of Redis: age 0, never negative.
    assert group_work([part(queued=1, oldest_ms=100_500)]).oldest_age_s == 0.0
    # Only in flight: still waiting work (a consumer may die holding it).
    assert group_work([part(in_flight=5)]).waiting == 5
    # Negative counts (never from Redis) count as nothing.
    assert group_work([part(queued=-3, in_flight=-1, due=-2, live=-1)]) == ListGroupWork(
        0, 0, 0, 0, 0.0, 0)


def test_group_work_ages_per_partition_clock() -> None:
    # Each partition's age against its own reply's server time (Cluster: other nodes).
    w = group_work([part(now_ms=10_000, oldest_ms=9_000), part(now_ms=50_000,
                                                               oldest_ms=47_500)])
    assert w.oldest_age_s == 2.5
