"""Pure tests of planning/queue_plan.py (they also judge its mutants: tests/mutation/run.py).

More of the plan is covered in tests/test_acl_plan.py (fresh, converged, List and PubSub
plans) and tests/test_properties.py (convergence); here: what a KeyConflict tells the
person who has to resolve it, the flags in the metadata hash, and which owned fields a
plan without a generation removes."""

from __future__ import annotations

import pytest

from agentqueue.models import AgentQueueSpec
from agentqueue.planning import queue_plan
from agentqueue.planning.queue_plan import (
    CreateStream,
    KeyConflict,
    LoadLibrary,
    ObservedPartition,
    ObservedQueue,
    WriteMeta,
)
from agentqueue_client import keys

PART = keys.PartitionKeys("n", "q", 0)


def spec(**raw: object) -> AgentQueueSpec:
    return AgentQueueSpec.model_validate(raw)


def observed(s: AgentQueueSpec, *parts: ObservedPartition) -> ObservedQueue:
    return ObservedQueue("n", "q", str(s.type), parts, library_versions={"node": "3"},
                         library_wanted="3")


@pytest.mark.parametrize(("queue_type", "field", "actual", "key", "expected"), [
    ("Stream", "queue_key_type", "list", PART.queue_key, "stream"),
    ("List", "queue_key_type", "stream", PART.queue_key, "list"),
    ("Stream", "dead_letter_type", "string", PART.dead_letter, "stream"),
    ("List", "retry_type", "hash", PART.retry, "zset"),
])
def test_key_conflict_names_the_key_what_it_holds_and_what_was_expected(
        queue_type: str, field: str, actual: str, key: str, expected: str) -> None:
    s = spec(type=queue_type)
    part = ObservedPartition(0, PART.queue_key, **{field: actual})  # type: ignore[arg-type]
    with pytest.raises(KeyConflict) as info:
        queue_plan.plan_queue(s, "n", "q", observed(s, part))
    assert str(info.value) == (f"key {key} holds a {actual}, expected {expected}; "
                               "delete or rename it to proceed")


def test_a_partition_redis_returned_nothing_for_is_created() -> None:
    # Nothing observed for partition 1: all its keys are absent (no conflict possible).
    s = spec(partitions=2)
    p1 = keys.PartitionKeys("n", "q", 1)
    existing = ObservedPartition(0, PART.queue_key, "stream", "stream", "zset",
                                 meta=queue_plan.desired_meta(s))
    assert queue_plan.plan_queue(s, "n", "q", observed(s, existing)) == [
        CreateStream(p1.queue_key), WriteMeta(p1.meta, queue_plan.desired_meta(s))]


@pytest.mark.parametrize("queue_type", ["Stream", "List"])
def test_keys_of_the_expected_types_are_no_conflict(queue_type: str) -> None:
    s = spec(type=queue_type)
    part = ObservedPartition(0, PART.queue_key, queue_type.lower(), "stream", "zset",
                             meta=queue_plan.desired_meta(s))
    assert queue_plan.plan_queue(s, "n", "q", observed(s, part)) == []


def test_pubsub_queues_own_no_keys_so_nothing_conflicts() -> None:
    s = spec(type="PubSub")
    part = ObservedPartition(0, PART.queue_key, "hash", "list", "string",
                             meta=queue_plan.desired_meta(s))
    assert queue_plan.plan_queue(s, "n", "q", observed(s, part)) == []


@pytest.mark.parametrize(("jitter", "dead_letter", "flags"), [
    (True, True, ("1", "1")),
    (False, True, ("0", "1")),
    (True, False, ("1", "0")),
])
def test_meta_flags_follow_the_spec(jitter: bool, dead_letter: bool,
                                    flags: tuple[str, str]) -> None:
    meta = queue_plan.desired_meta(spec(delivery={"retry": {"jitter": jitter}},
                                        deadLetter={"enabled": dead_letter}))
    assert (meta["retryJitter"], meta["deadLetter"]) == flags


def test_without_a_generation_dropped_fields_go_and_the_recorded_generation_stays() -> None:
    s = spec()
    meta = {**queue_plan.desired_meta(s, 4), "schema": "{}", "paused:g": "{}"}
    part = ObservedPartition(0, PART.queue_key, "stream", meta=meta)
    assert queue_plan.plan_queue(s, "n", "q", observed(s, part)) == [
        WriteMeta(PART.meta, {}, ("schema",))]


def test_write_meta_describes_every_changed_and_removed_field_in_order() -> None:
    action = WriteMeta("aq:{n/q/0}:meta", {"type": "Stream", "partitions": "2"}, ("schema",))
    assert action.describe() == "write metadata aq:{n/q/0}:meta (partitions, schema, type)"
    assert LoadLibrary().describe() == "load the agentqueue Functions library"
