"""ConsumerGroup end to end: groups in Redis, reclaim/DLQ, and scaling a Deployment object
(no pods run: the envtest model) through /scale."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from .operator_fixtures import condition, get_obj, wait_for, wait_ready, wait_reason
from .test_operator_queue import admin, apply, queue

pytestmark = pytest.mark.k8s

# Timing bounds = documented figure + margin (docs/design.md, "Scaling"): scale-up p95 <= 2 s
# (docs/benchmarks.md, at pollInterval 1s; these groups poll every 200 ms), pause at once
# (the next poll), zero after `cooldown`. MARGIN_S covers kubectl round trips and a loaded
# 2-core machine.
MARGIN_S = 1.5
SCALE_UP_S = 2.0
POLL_S = 0.2


def group(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "agentqueue.io/v1alpha1", "kind": "ConsumerGroup",
            "metadata": {"name": name}, "spec": spec}


def deployment(name: str, replicas: int = 0) -> dict[str, Any]:
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}},
                                  "spec": {"containers": [{"name": "a", "image": "agent"}]}}}}


def replicas(kubectl: Any, namespace: str, name: str) -> int:
    obj = get_obj(kubectl, "deployment", name, namespace)
    return int((obj or {}).get("spec", {}).get("replicas") or 0)


def test_group_lifecycle_and_dead_letter(operator: Any, kubectl: Any, namespace: str,
                                         operator_redis: Any) -> None:
    apply(kubectl, namespace, queue("work", partitions=2))
    wait_ready(kubectl, "agentqueues", "work", namespace)
    apply(kubectl, namespace, group("agents", queueRef={"name": "work"},
                                    visibilityTimeout="300ms", maxDeliveries=2,
                                    startFrom="Beginning"))
    wait_ready(kubectl, "consumergroups", "agents", namespace)
    r = admin(operator_redis)
    keys = [f"aq:{{{namespace}/work/{p}}}:q" for p in (0, 1)]
    for key in keys:
        assert [g["name"] for g in r.xinfo_groups(key)] == ["agents"]
    assert r.hget(f"aq:{{{namespace}/work/0}}:meta", "visibilityMs:agents") == "300"

    # A consumer reads and never acks; another claims it after the visibility timeout;
    # after maxDeliveries (2) the operator moves it to the dead-letter queue.
    mid = r.xadd(keys[0], {"d": json.dumps({"n": 1})})
    got = r.xreadgroup("agents", "c1", {keys[0]: ">"}, count=1)
    assert got[0][1][0][0] == mid
    time.sleep(0.4)
    claimed = r.xautoclaim(keys[0], "agents", "c2", 300, "0-0", count=10)
    assert [e[0] for e in claimed[1]] == [mid]
    dlq = f"aq:{{{namespace}/work/0}}:dlq"
    entries = wait_for(lambda: r.xrange(dlq), timeout=15, what="dead-lettered entry")
    fields = entries[0][1]
    assert fields["x.id"] == mid and fields["x.group"] == "agents"
    assert int(fields["x.deliveries"]) >= 2 and fields["d"] == json.dumps({"n": 1})
    assert r.xpending(keys[0], "agents")["pending"] == 0
    obj = wait_for(lambda: (o := get_obj(kubectl, "consumergroups", "agents", namespace))
                   and o["status"].get("deadLettered", 0) >= 1 and o, what="status")
    assert obj["status"]["deadLettered"] == 1

    kubectl("delete", "consumergroups", "agents", "-n", namespace, "--wait=true",
            "--timeout=30s")
    for key in keys:
        assert r.xinfo_groups(key) == []
    assert r.exists(keys[0])  # the queue's data stays


def test_scaling_up_down_zero_pause_conflict(operator: Any, kubectl: Any, namespace: str,
                                             operator_redis: Any) -> None:
    apply(kubectl, namespace, queue("jobs"))
    wait_ready(kubectl, "agentqueues", "jobs", namespace)
    apply(kubectl, namespace, deployment("worker", replicas=0))
    spec = {"queueRef": {"name": "jobs"}, "startFrom": "Beginning",
            "scaleTargetRef": {"name": "worker"},
            "scaling": {"minReplicas": 0, "maxReplicas": 5, "lagPerReplica": 10,
                        "pollInterval": "200ms", "cooldown": "2s",
                        "scaleDown": {"stabilizationWindow": "1s", "maxStepPercent": 50}}}
    apply(kubectl, namespace, group("workers", **spec))
    wait_ready(kubectl, "consumergroups", "workers", namespace)
    r = admin(operator_redis)
    key = f"aq:{{{namespace}/jobs/0}}:q"

    # Work arrives: 45 waiting → ceil(45/10) = 5 replicas (from zero at activationLag 1).
    t0 = time.monotonic()
    for i in range(45):
        r.xadd(key, {"d": str(i)})
    # 0 -> 1 -> 2 -> 4 -> 5 (maxStepPercent 100): the first replica, then a poll per step.
    wait_for(lambda: replicas(kubectl, namespace, "worker") == 5,
             timeout=SCALE_UP_S + 3 * POLL_S + MARGIN_S, interval=0.05, what="scale up to 5")
    print(f"scale-up reaction {time.monotonic() - t0:.2f}s")

    # Drain: consume and ack everything → down by at most 50% per step, then to zero.
    seen = []
    for _, entries in r.xreadgroup("workers", "c", {key: ">"}, count=100):
        for entry_id, _f in entries:
            r.xack(key, "workers", entry_id)
    t_drain = time.monotonic()

    zero_at = 0.0

    def watch() -> bool:
        nonlocal zero_at
        seen.append(replicas(kubectl, namespace, "worker"))
        zero_at = time.monotonic()
        return seen[-1] == 0
    # cooldown 2 s + down window 1 s + a poll per 50% step (5 -> 3 -> 2 -> 1) + margin
    wait_for(watch, timeout=2.0 + 1.0 + 4 * POLL_S + MARGIN_S, interval=0.1,
             what="scale to zero")
    steps = [n for i, n in enumerate(seen) if i == 0 or n != seen[i - 1]]
    print(f"scale-down steps {steps} in {time.monotonic() - t_drain:.2f}s")
    assert steps[0] in (5, 3)
    for a, b in zip(steps, steps[1:], strict=False):
        assert b >= a // 2, f"step {a}->{b} exceeds 50%"
    # Never before the cooldown: it counts from the last poll that saw work, at most one
    # poll interval (200 ms) before the drain, and zero is sampled every 100 ms.
    assert zero_at - t_drain >= 2.0 - 0.2 - 0.1, f"zero {zero_at - t_drain:.2f}s after drain"

    # New work from zero.
    r.xadd(key, {"d": "again"})
    wait_for(lambda: replicas(kubectl, namespace, "worker") == 1,
             timeout=SCALE_UP_S + MARGIN_S, interval=0.05, what="scale from zero")

    # Paused → zero, and the flag is in the queue's metadata.
    apply(kubectl, namespace, group("workers", **spec, paused=True, pauseReason="incident"))
    wait_for(lambda: replicas(kubectl, namespace, "worker") == 0, timeout=SCALE_UP_S + MARGIN_S,
             interval=0.05, what="paused")
    assert "incident" in (r.hget(f"aq:{{{namespace}/jobs/0}}:meta", "paused:workers") or "")
    # Replicas may reach zero (daemon) before the handler writes the condition.
    obj = wait_for(lambda: (o := get_obj(kubectl, "consumergroups", "workers", namespace))
                   and (condition(o, "Paused") or {}).get("status") == "True" and o,
                   timeout=10, what="Paused condition")
    assert obj["status"]["pausedReason"] == "incident"
    apply(kubectl, namespace, group("workers", **spec, paused=False))
    wait_for(lambda: replicas(kubectl, namespace, "worker") == 1, timeout=SCALE_UP_S + MARGIN_S,
             interval=0.05, what="unpaused")
    assert r.hget(f"aq:{{{namespace}/jobs/0}}:meta", "paused:workers") is None

    # A competing HPA: ScalingConflict and no more changes.
    hpa = {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
           "metadata": {"name": "worker"},
           "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment",
                                       "name": "worker"},
                    "minReplicas": 1, "maxReplicas": 3}}
    apply(kubectl, namespace, hpa)
    wait_reason(kubectl, "consumergroups", "workers", namespace,
                "HorizontalPodAutoscalerConflict", type_="ScalingConflict", timeout=20)
    for i in range(100):
        r.xadd(key, {"d": str(i)})
    time.sleep(1.5)
    assert replicas(kubectl, namespace, "worker") == 1


def test_group_for_missing_queue_is_reported(operator: Any, kubectl: Any,
                                             namespace: str) -> None:
    apply(kubectl, namespace, group("orphan", queueRef={"name": "nope"}))
    obj = wait_reason(kubectl, "consumergroups", "orphan", namespace, "QueueNotFound")
    assert "nope" in (condition(obj) or {})["message"]
