"""ConsumerGroup end to end: groups in Redis, reclaim/DLQ, and scaling a Deployment object
(no pods run: the envtest model) through /scale; on Stream and on List queues."""

from __future__ import annotations

import json
import time
import urllib.request
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from agentqueue_client import calls, keys
from agentqueue_client.codec import Envelope, encode_element

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


# ---- List queues ----------------------------------------------------------------------------

def group_series(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(sample name, sorted labels): value} of the operator's agentqueue_group_* series."""
    with urllib.request.urlopen(url, timeout=5) as resp:  # noqa: S310 - local test URL
        text = resp.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            if family.name.startswith("agentqueue_group_") for s in family.samples}


def list_element(n: int, priority: int = 0) -> str:
    """A List element as the SDK writes it (its id carries the enqueue time)."""
    env = Envelope(body=json.dumps({"n": n}).encode())
    return encode_element(env, f"{int(time.time() * 1000)}-{n}", priority).decode()


def test_list_queue_group_scales_by_levels_and_in_flight(operator: Any, kubectl: Any,
                                                         namespace: str,
                                                         operator_redis: Any) -> None:
    apply(kubectl, namespace, queue("esc", type="List", priorityLevels=3, partitions=2))
    wait_ready(kubectl, "agentqueues", "esc", namespace)
    apply(kubectl, namespace, deployment("desk", replicas=0))
    # visibilityTimeout outlasts the test's heartbeat (status is written every 5 s).
    spec = {"queueRef": {"name": "esc"}, "visibilityTimeout": "40s", "maxDeliveries": 3,
            "scaleTargetRef": {"name": "desk"},
            "scaling": {"minReplicas": 0, "maxReplicas": 5, "lagPerReplica": 10,
                        "pollInterval": "200ms", "cooldown": "2s",
                        "scaleDown": {"stabilizationWindow": "1s", "maxStepPercent": 50}}}
    apply(kubectl, namespace, group("human-desk", **spec))
    obj = wait_ready(kubectl, "consumergroups", "human-desk", namespace)
    assert "no Redis group" in (condition(obj) or {})["message"]
    r = admin(operator_redis)
    p0, p1 = keys.partition_keys(namespace, "esc", 2)
    # The group's settings for the SDK's consumers; nothing else in Redis (no stream).
    for p in (p0, p1):
        assert r.hget(p.meta, "visibilityMs:human-desk") == "40000"
        assert r.hget(p.meta, "maxDeliveries:human-desk") == "3"
        assert not r.exists(p.queue_key)

    # 30 messages over both partitions and all three priority levels → 3 replicas.
    r.lpush(p0.priority_key(0), *[list_element(i) for i in range(12)])
    r.lpush(p1.priority_key(1), *[list_element(i, 1) for i in range(12, 22)])
    r.lpush(p0.priority_key(2), *[list_element(i, 2) for i in range(22, 30)])
    wait_for(lambda: replicas(kubectl, namespace, "desk") == 3,
             timeout=SCALE_UP_S + 3 * POLL_S + MARGIN_S, interval=0.05, what="scale up to 3")
    obj = wait_for(lambda: (o := get_obj(kubectl, "consumergroups", "human-desk", namespace))
                   and o["status"].get("lag") == 30 and o, timeout=10, what="lag 30")
    assert obj["status"]["waiting"] == 30 and obj["status"]["pending"] == 0
    assert obj["status"]["oldestPendingAgeSeconds"] >= 0
    assert obj["status"]["groupName"] == "human-desk"

    # A consumer takes every message into its processing list (what the SDK's LMOVE
    # does) and holds them: still waiting work, so no scale-down past the cooldown.
    r.zadd(p0.processing("#consumers"), {"c1": int(time.time() * 1000)})
    r.zadd(p1.processing("#consumers"), {"c1": int(time.time() * 1000)})
    time.sleep(1.0)  # the heartbeat set is read: c1's lists are polled from now on
    pipe = r.pipeline(transaction=True)
    for p, level in ((p0, 0), (p1, 1), (p0, 2)):
        for _ in range(r.llen(p.priority_key(level))):
            pipe.lmove(p.priority_key(level), p.processing("c1"), "RIGHT", "LEFT")
    pipe.execute()
    obj = wait_for(lambda: (o := get_obj(kubectl, "consumergroups", "human-desk", namespace))
                   and o["status"].get("pending") == 30 and o, timeout=10,
                   what="30 in flight")
    assert obj["status"]["lag"] == 0 and obj["status"]["waiting"] == 30
    assert obj["status"]["consumers"] == 1, obj["status"]
    # The same figures as Prometheus series.
    labels = (("group", "human-desk"), ("namespace", namespace), ("queue", "esc"))
    series = wait_for(lambda: (m := group_series(operator.metrics_url))
                      .get(("agentqueue_group_pending", labels)) == 30 and m,
                      timeout=10, what="agentqueue_group_pending 30")
    assert series[("agentqueue_group_lag", labels)] == 0
    assert series[("agentqueue_group_consumers", labels)] == 1
    time.sleep(2.0 + 1.0 + MARGIN_S)  # cooldown + scale-down window + margin
    assert replicas(kubectl, namespace, "desk") == 3
    held = r.llen(p0.processing("c1")) + r.llen(p1.processing("c1"))
    assert held == 30  # the operator only reads them

    # Acknowledged (LREM: here all at once) → back to zero after the cooldown.
    r.delete(p0.processing("c1"), p1.processing("c1"))
    wait_for(lambda: replicas(kubectl, namespace, "desk") == 0,
             timeout=2.0 + 1.0 + 4 * POLL_S + MARGIN_S + 2.0, interval=0.1,
             what="scale to zero")
    obj = wait_for(lambda: (o := get_obj(kubectl, "consumergroups", "human-desk", namespace))
                   and o["status"].get("waiting") == 0 and o, timeout=10, what="drained")
    assert obj["status"]["desiredReplicas"] == 0

    # minReplicas is the floor when nothing waits.
    apply(kubectl, namespace, group("human-desk", **{**spec, "scaling": {
        **spec["scaling"], "minReplicas": 1}}))
    wait_for(lambda: replicas(kubectl, namespace, "desk") == 1, timeout=SCALE_UP_S + MARGIN_S,
             interval=0.05, what="minReplicas 1")

    # Deleting the group removes its settings; the queue's data stays.
    r.lpush(p0.priority_key(0), list_element(99))
    kubectl("delete", "consumergroups", "human-desk", "-n", namespace, "--wait=true",
            "--timeout=30s")
    assert r.hget(p0.meta, "visibilityMs:human-desk") is None
    assert r.llen(p0.priority_key(0)) == 1


def test_list_group_refuses_stream_only_fields(operator: Any, kubectl: Any, namespace: str,
                                               operator_redis: Any) -> None:
    apply(kubectl, namespace, queue("esc2", type="List"))
    wait_ready(kubectl, "agentqueues", "esc2", namespace)
    apply(kubectl, namespace, group("g", queueRef={"name": "esc2"}, startFrom="Beginning"))
    obj = wait_reason(kubectl, "consumergroups", "g", namespace, "StreamOnlyField")
    cond = condition(obj) or {}
    assert cond["status"] == "False"
    assert "AgentQueue 'esc2' is a List queue" in cond["message"]
    assert "spec.startFrom (Beginning) applies to Stream queues only" in cond["message"]
    wait_for(lambda: "StreamOnlyField" in kubectl("get", "events", "-n", namespace, "-o",
                                                  "json").stdout,
             timeout=20, what="Event StreamOnlyField")
    # Fixed: Ready. Then another Stream-only field: refused again, with its own message.
    apply(kubectl, namespace, group("g", queueRef={"name": "esc2"}))
    wait_ready(kubectl, "consumergroups", "g", namespace)
    apply(kubectl, namespace, group("g", queueRef={"name": "esc2"}, deadConsumerTimeout="5m"))
    obj = wait_reason(kubectl, "consumergroups", "g", namespace, "StreamOnlyField")
    assert "spec.deadConsumerTimeout (5m)" in (condition(obj) or {})["message"]
    # Deleted while refused: the settings the valid spec wrote go with it.
    meta = keys.partition_keys(namespace, "esc2", 1)[0].meta
    r = admin(operator_redis)
    assert r.hget(meta, "visibilityMs:g") == "30000"
    kubectl("delete", "consumergroups", "g", "-n", namespace, "--wait=true", "--timeout=30s")
    assert r.hget(meta, "visibilityMs:g") is None
    # A PubSub queue has no group of any kind.
    apply(kubectl, namespace, queue("news", type="PubSub"))
    wait_ready(kubectl, "agentqueues", "news", namespace)
    apply(kubectl, namespace, group("n", queueRef={"name": "news"}))
    obj = wait_reason(kubectl, "consumergroups", "n", namespace, "QueueTypeUnsupported")
    assert "Stream or List" in (condition(obj) or {})["message"]


def test_list_group_keeps_timeouts_and_max_deliveries_without_any_sdk_consumer(
        operator: Any, kubectl: Any, namespace: str, operator_redis: Any) -> None:
    """Foreign List consumers that never recover, promote or count (docs/protocol.md 7):
    the operator's sweep puts a dead consumer's message back, dead-letters it once its
    last allowed delivery timed out, and promotes a due retry. Bound: the visibility
    timeout (2 s) + one sweep interval (half of it while work is in flight) + a poll +
    MARGIN_S."""
    apply(kubectl, namespace, queue("calls", type="List"))
    wait_ready(kubectl, "agentqueues", "calls", namespace)
    apply(kubectl, namespace, group("phones", queueRef={"name": "calls"},
                                    visibilityTimeout="2s", maxDeliveries=2,
                                    scaling={"pollInterval": "200ms"}))
    wait_ready(kubectl, "consumergroups", "phones", namespace)
    r = admin(operator_redis)
    (p0,) = keys.partition_keys(namespace, "calls", 1)
    r.lpush(p0.queue_key, list_element(1))
    bound = 2.0 + 1.0 + POLL_S + MARGIN_S

    def crash_holding(consumer: str) -> None:
        r.zadd(p0.processing("#consumers"), {consumer: int(time.time() * 1000)})
        assert r.lmove(p0.queue_key, p0.processing(consumer), "RIGHT", "LEFT") is not None

    crash_holding("c1")
    back = wait_for(lambda: r.lrange(p0.queue_key, 0, -1), timeout=bound, interval=0.1,
                    what="the message back in the queue")
    assert json.loads(back[0])["a"] == 1 and r.llen(p0.processing("c1")) == 0
    crash_holding("c2")  # its last allowed delivery
    wait_for(lambda: r.xlen(p0.dead_letter) == 1, timeout=bound, interval=0.1,
             what="the message in the dead-letter queue")
    [(_, letter)] = r.xrange(p0.dead_letter)
    assert (letter["x.deliveries"], letter["x.consumer"]) == ("2", "c2")
    assert r.llen(p0.queue_key) == 0 and r.llen(p0.processing("c2")) == 0
    wait_for(lambda: (get_obj(kubectl, "consumergroups", "phones", namespace) or {})
             .get("status", {}).get("deadLettered") == 1, timeout=10, what="deadLettered 1")

    # A retry scheduled by a consumer that never promotes: back on the queue once due.
    env = Envelope(body=b'{"n": 2}', attempt=1, error="flaky")
    r.zadd(p0.retry, {encode_element(env, "m-2").decode(): int(time.time() * 1000)})
    wait_for(lambda: r.llen(p0.queue_key) == 1, timeout=1.0 + 2 * POLL_S + MARGIN_S,
             interval=0.1, what="the due retry promoted")
    assert r.zcard(p0.retry) == 0


def test_stream_retries_come_back_without_a_consumer_promoting(
        operator: Any, kubectl: Any, namespace: str, operator_redis: Any) -> None:
    """A consumer of another language nacks (aq_nack) and never promotes: the operator's
    sweep does, within one sweep interval (half the visibility timeout while a retry is
    due) + a poll + MARGIN_S after it falls due."""
    apply(kubectl, namespace, queue("tasks"))
    wait_ready(kubectl, "agentqueues", "tasks", namespace)
    apply(kubectl, namespace, group("solvers", queueRef={"name": "tasks"},
                                    visibilityTimeout="2s", scaling={"pollInterval": "200ms"}))
    wait_ready(kubectl, "consumergroups", "solvers", namespace)
    r = admin(operator_redis)
    (p0,) = keys.partition_keys(namespace, "tasks", 1)
    entry_id = r.xadd(p0.queue_key, {"d": '{"n": 1}'})
    assert r.xreadgroup("solvers", "foreign-1", {p0.queue_key: ">"})
    due = int(time.time() * 1000) + 500
    assert calls.nack(p0, "solvers", entry_id, due, "flaky").on(r) == 1
    assert r.xlen(p0.queue_key) == 0 or r.xpending(p0.queue_key, "solvers")["pending"] == 0
    wait_for(lambda: r.zcard(p0.retry) == 0, timeout=0.5 + 1.0 + 2 * POLL_S + MARGIN_S,
             interval=0.05, what="the due retry promoted")
    [(_, fields)] = r.xrange(p0.queue_key, f"({entry_id}", "+")
    assert (fields["d"], fields["a"], fields["e"]) == ('{"n": 1}', "1", "flaky")


def test_a_group_made_before_its_queue_turns_ready_within_a_second_of_it(
        operator: Any, kubectl: Any, namespace: str) -> None:
    """Events, not timers: a ConsumerGroup waiting for its queue (absent, then not Ready)
    retries as soon as the queue's handlers have run. Bound: 1 s (issue 15) + MARGIN_S
    for the two kubectl reads that observe it."""
    apply(kubectl, namespace, group("early", queueRef={"name": "later"}))
    wait_reason(kubectl, "consumergroups", "early", namespace, "QueueNotFound")
    time.sleep(1.0)  # now inside its retry wait (10 s by the old timer)
    apply(kubectl, namespace, queue("later"))
    wait_ready(kubectl, "agentqueues", "later", namespace)
    queue_ready = time.monotonic()
    wait_ready(kubectl, "consumergroups", "early", namespace, timeout=10)
    took = time.monotonic() - queue_ready
    print(f"group Ready {took:.2f}s after its queue")
    assert took <= 1.0 + MARGIN_S, took


def test_a_quiet_group_follows_its_queue_growing_within_a_second(
        operator: Any, kubectl: Any, namespace: str, operator_redis: Any) -> None:
    """Events, not timers: an idle group with nothing to sweep sleeps through unchanged
    polls for minutes (services/scaling_loop `_quiet`), so its queue's change must wake
    it: after `partitions: 1 → 2` the Redis group exists on the new partition within
    1 s (issue 15) + a poll + MARGIN_S (the queue's own reconcile creates the stream
    first, within the same bound)."""
    apply(kubectl, namespace, queue("grows", partitions=1))
    wait_ready(kubectl, "agentqueues", "grows", namespace)
    apply(kubectl, namespace, group("idle", queueRef={"name": "grows"}))
    wait_ready(kubectl, "consumergroups", "idle", namespace)
    time.sleep(3.0)  # settled and quiet
    r = admin(operator_redis)
    _, p1 = keys.partition_keys(namespace, "grows", 2)
    apply(kubectl, namespace, queue("grows", partitions=2))
    changed = time.monotonic()

    def has_group() -> bool:
        try:
            return any(g["name"] == "idle" for g in r.xinfo_groups(p1.queue_key))
        except Exception:  # noqa: BLE001 - the stream may not exist yet
            return False

    wait_for(has_group, timeout=10, interval=0.05, what="the group on partition 1")
    took = time.monotonic() - changed
    print(f"group on the new partition {took:.2f}s after the change")
    assert took <= 1.0 + POLL_S + MARGIN_S, took
