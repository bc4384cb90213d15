"""RetentionPolicy end to end: trimming that never silently drops undelivered work."""

from __future__ import annotations

import time
from typing import Any

import pytest

from .operator_fixtures import condition, get_obj, wait_for, wait_ready
from .test_operator_queue import admin, apply, queue

pytestmark = pytest.mark.k8s


def policy(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "agentqueue.io/v1alpha1", "kind": "RetentionPolicy",
            "metadata": {"name": name}, "spec": {"interval": "1s", **spec}}


def labeled(q: dict[str, Any], **labels: str) -> dict[str, Any]:
    q["metadata"]["labels"] = labels
    return q


def status_of(kubectl: Any, kind: str, name: str, ns: str) -> dict[str, Any]:
    return (get_obj(kubectl, kind, name, ns) or {}).get("status") or {}


def drain(r: Any, key: str, group: str) -> None:
    while True:
        got = r.xreadgroup(group, "c", {key: ">"}, count=500)
        if not got or not got[0][1]:
            return
        r.xack(key, group, *[entry_id for entry_id, _ in got[0][1]])


def test_protection_blocks_then_trims(operator: Any, kubectl: Any, namespace: str,
                                      operator_redis: Any) -> None:
    r = admin(operator_redis)
    apply(kubectl, namespace, labeled(queue("keep"), tier="std"))
    wait_ready(kubectl, "agentqueues", "keep", namespace)
    key = f"aq:{{{namespace}/keep/0}}:q"
    for g in ("fast", "slow"):
        r.xgroup_create(key, g, id="0")
    for i in range(50):
        r.xadd(key, {"d": str(i)})
    drain(r, key, "fast")
    apply(kubectl, namespace, policy("std", selector={"matchLabels": {"tier": "std"}},
                                     maxLength=10, exact=True))
    obj = wait_for(lambda: (o := get_obj(kubectl, "agentqueues", "keep", namespace)) and
                   (condition(o, "RetentionBlockedByLag") or {}).get("status") == "True" and o,
                   timeout=20, what="RetentionBlockedByLag")
    assert "slow" in condition(obj, "RetentionBlockedByLag")["message"]
    assert r.xlen(key) == 50  # nothing undelivered was dropped
    st = wait_for(lambda: (s := status_of(kubectl, "retentionpolicies", "std", namespace))
                  .get("protectedTotal") == 40 and s, timeout=10, what="protectedTotal")
    assert st["matchedQueues"] == ["keep"]
    drain(r, key, "slow")  # the lagging group catches up
    wait_for(lambda: r.xlen(key) == 10, timeout=15, what="trim after catch-up")
    obj = wait_for(lambda: (o := get_obj(kubectl, "agentqueues", "keep", namespace)) and
                   (condition(o, "RetentionBlockedByLag") or {}).get("status") == "False" and o,
                   timeout=10, what="unblocked")
    st = wait_for(lambda: (s := status_of(kubectl, "retentionpolicies", "std", namespace))
                  .get("trimmedTotal", 0) >= 40 and s, timeout=10, what="trimmedTotal")
    assert st["trimmedTotal"] == 40
    assert obj["status"]["retentionPolicy"] == "std"


def test_unprotected_counts_dropped_and_age_and_dlq(operator: Any, kubectl: Any,
                                                     namespace: str, operator_redis: Any) -> None:
    r = admin(operator_redis)
    apply(kubectl, namespace, labeled(queue("lossy"), tier="lossy"))
    wait_ready(kubectl, "agentqueues", "lossy", namespace)
    key = f"aq:{{{namespace}/lossy/0}}:q"
    dlq = f"aq:{{{namespace}/lossy/0}}:dlq"
    r.xgroup_create(key, "g", id="0")
    old_ms = int(time.time() * 1000) - 3_600_000
    for i in range(5):  # an hour old: maxAge trims them
        r.xadd(key, {"d": f"old{i}"}, id=f"{old_ms + i}-0")
    for i in range(30):
        r.xadd(key, {"d": str(i)})
    for i in range(12):
        r.xadd(dlq, {"d": str(i)})
    apply(kubectl, namespace, policy("lossy", selector={"matchLabels": {"tier": "lossy"}},
                                     maxLength=10, exact=True, maxAge="10m",
                                     protectUndelivered=False, deadLetter={"maxLength": 5}))
    wait_for(lambda: r.xlen(key) == 10, timeout=20, what="trim without protection")
    wait_for(lambda: r.xlen(dlq) == 5, timeout=10, what="DLQ retention")
    st = wait_for(lambda: (s := status_of(kubectl, "retentionpolicies", "lossy", namespace))
                  .get("droppedUndeliveredTotal") == 25 and s, timeout=10,
                  what="exact dropped count")
    assert st["droppedUndeliveredTotal"] == 25  # 5 old + 20 over the length, none delivered

    # Deleting the policy stops trimming and leaves the data.
    kubectl("delete", "retentionpolicies", "lossy", "-n", namespace, "--wait=true")
    for i in range(20):
        r.xadd(key, {"d": str(i)})
    time.sleep(2.5)
    assert r.xlen(key) == 30


def test_conflicts_reported_in_both(operator: Any, kubectl: Any, namespace: str) -> None:
    apply(kubectl, namespace, labeled(queue("shared"), tier="x", team="a"))
    wait_ready(kubectl, "agentqueues", "shared", namespace)
    apply(kubectl, namespace, policy("older", selector={"matchLabels": {"tier": "x"}},
                                     maxLength=1000))
    time.sleep(1.1)  # creation timestamps have one-second resolution
    apply(kubectl, namespace, policy("newer", selector={"matchLabels": {"team": "a"}},
                                     maxLength=10))
    older = wait_for(lambda: (s := status_of(kubectl, "retentionpolicies", "older", namespace))
                     .get("conflicts") and s, timeout=15, what="conflict on older")
    newer = wait_for(lambda: (s := status_of(kubectl, "retentionpolicies", "newer", namespace))
                     .get("conflicts") and s, timeout=15, what="conflict on newer")
    assert older["matchedQueues"] == ["shared"] and "newer" in older["conflicts"][0]
    assert newer["matchedQueues"] == [] and "governed by older" in newer["conflicts"][0]
    # An explicit ref wins over selectors.
    apply(kubectl, namespace, labeled(queue("shared", retentionPolicyRef={"name": "newer"}),
                                      tier="x", team="a"))
    wait_for(lambda: status_of(kubectl, "retentionpolicies", "newer", namespace)
             .get("matchedQueues") == ["shared"], timeout=15, what="explicit ref wins")


def test_a_policy_takes_a_new_queue_at_once(operator: Any, kubectl: Any,
                                            namespace: str) -> None:
    """Events, not timers: a queue appearing makes its namespace's policies run (the
    retention keeper, 0.5 s after the queue's handler), not their interval (1 h here).
    Bound: the queue's Ready + 0.5 s + a run + 2.5 s margin."""
    apply(kubectl, namespace, policy("hourly", interval="1h",
                                     selector={"matchLabels": {"tier": "h"}}, maxLength=100))
    wait_for(lambda: status_of(kubectl, "retentionpolicies", "hourly", namespace)
             .get("lastRun"), timeout=10, what="the policy's first run")
    apply(kubectl, namespace, labeled(queue("late"), tier="h"))
    wait_ready(kubectl, "agentqueues", "late", namespace)
    t0 = time.monotonic()
    wait_for(lambda: status_of(kubectl, "retentionpolicies", "hourly", namespace)
             .get("matchedQueues") == ["late"], timeout=3, interval=0.1,
             what="the new queue matched")
    print(f"matched {time.monotonic() - t0:.2f}s after the queue was Ready")
