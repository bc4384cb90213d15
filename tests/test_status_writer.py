"""The one status writer (status.py): merge patches, conditions merged once, validation
against the status models, and no API call when nothing changes."""

from __future__ import annotations

from typing import Any, cast

import pytest

from agentqueue.conditions import set_condition
from agentqueue.keepers.objects import Objects, trimmed
from agentqueue.kube import KubeNotFound
from agentqueue.status import StatusFieldUnknown, StatusWriter, merge_patch, validated


class Kube:
    """Records the patches the writer sends (the gateway's one method it uses)."""

    def __init__(self) -> None:
        self.patches: list[tuple[str, str, str, dict[str, Any]]] = []
        self.gone = False

    async def patch_status(self, plural: str, namespace: str, name: str,
                           status: dict[str, Any]) -> None:
        if self.gone:
            raise KubeNotFound("gone")
        self.patches.append((plural, namespace, name, status))


def body(status: dict[str, Any] | None = None, kind: str = "AgentQueue") -> dict[str, Any]:
    return {"kind": kind, "metadata": {"namespace": "ns", "name": "q", "generation": 1},
            "spec": {}, "status": status or {}}


def writer(objects: Objects) -> tuple[StatusWriter, Kube]:
    kube = Kube()
    return StatusWriter(cast(Any, kube), objects), kube


def test_merge_patch_sends_changes_and_nulls_removed_keys_at_any_depth() -> None:
    current = {"length": 1, "users": [{"name": "a"}], "credentials": {
        "lastRotation": "t0", "previousExpires": "t1"}, "channel": "c"}
    new = {"length": 1, "users": [{"name": "b"}], "credentials": {"lastRotation": "t0"}}
    assert merge_patch(current, new) == {"users": [{"name": "b"}],
                                         "credentials": {"previousExpires": None},
                                         "channel": None}
    assert merge_patch(new, new) == {}


def test_validated_refuses_a_field_the_crd_does_not_declare() -> None:
    validated("AgentQueue", {"length": 3, "keyPattern": "aq:{ns/q/*"})
    with pytest.raises(StatusFieldUnknown, match="lenght"):
        validated("AgentQueue", {"lenght": 3})
    with pytest.raises(ValueError):
        validated("ConsumerGroup", {"lag": "many"})


async def test_nothing_changed_means_no_api_call() -> None:
    objects = Objects()
    ready = set_condition([], "Ready", True, "Provisioned", now="t0")
    objects.put("AgentQueue", body({"length": 2, "conditions": ready}))
    w, kube = writer(objects)
    seen = {"length": 2, "conditions": ready}
    assert not await w.write("AgentQueue", "ns", "q", {"length": 2, "conditions": ready}, seen)
    assert kube.patches == []
    assert await w.write("AgentQueue", "ns", "q", {"length": 5}, seen)
    assert kube.patches == [("agentqueues", "ns", "q", {"length": 5})]


async def test_a_caller_with_an_older_body_keeps_the_other_parts_conditions() -> None:
    """The keeper computed Ready from an old body; meanwhile the SLO was set (by this
    writer): only the condition the keeper changed is replaced, the SLO's stays."""
    objects = Objects()
    old = set_condition([], "Ready", True, "Provisioned", now="t0")
    objects.put("AgentQueue", body({"conditions": old}))
    w, kube = writer(objects)
    slo = set_condition(old, "SLOBreached", True, "DepthExceeded", now="t1")
    assert await w.write("AgentQueue", "ns", "q", {"conditions": slo}, {"conditions": old})
    # The watch has not shown that write yet: the writer's own last write counts.
    ready_false = set_condition(old, "Ready", False, "RedisUnavailable", now="t2")
    assert await w.write("AgentQueue", "ns", "q", {"conditions": ready_false},
                         {"conditions": old})
    sent = kube.patches[-1][3]["conditions"]
    assert {c["type"]: c["reason"] for c in sent} == {"Ready": "RedisUnavailable",
                                                      "SLOBreached": "DepthExceeded"}


async def test_deleted_objects_are_not_written() -> None:
    objects = Objects()
    w, kube = writer(objects)
    assert not await w.write("AgentQueue", "ns", "q", {"length": 1}, {})
    objects.put("AgentQueue", body())
    kube.gone = True
    assert not await w.write("AgentQueue", "ns", "q", {"length": 1}, {})
    assert kube.patches == []


def test_the_store_keeps_bodies_trimmed_and_groups_by_queue() -> None:
    objects = Objects()
    group = {"kind": "ConsumerGroup",
             "metadata": {"namespace": "ns", "name": "g", "managedFields": [{"x": 1}],
                          "annotations": {
                              "agentqueue.io/last-handled-configuration": "{...}",
                              "agentqueue.io/rotate-credentials": "1", "team": "a"}},
             "spec": {"queueRef": {"name": "q1"}}}
    objects.put("ConsumerGroup", group)
    stored = objects.get("ConsumerGroup", "ns", "g")
    assert stored is not None
    assert "managedFields" not in stored["metadata"]
    assert stored["metadata"]["annotations"] == {"agentqueue.io/rotate-credentials": "1",
                                                 "team": "a"}
    assert trimmed({"metadata": {"annotations": {
        "agentqueue.io/x": "1"}}})["metadata"] == {}
    assert objects.groups_of("ns", "q1") == ["g"]
    group["spec"]["queueRef"]["name"] = "q2"  # the store holds a copy
    stored["spec"]["queueRef"]["name"] = "q3"  # and hands out copies
    assert (objects.get("ConsumerGroup", "ns", "g") or {})["spec"]["queueRef"]["name"] == "q1"
    objects.put("ConsumerGroup", group)
    assert objects.groups_of("ns", "q1") == [] and objects.groups_of("ns", "q2") == ["g"]
    objects.drop("ConsumerGroup", "ns", "g")
    assert objects.groups_of("ns", "q2") == [] and objects.count("ConsumerGroup") == 0
