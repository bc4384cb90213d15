"""Documented ConsumerGroup behaviour that had no test (issue 17): fallbackReplicas while
Redis is down, lastActiveTime and deadLetterCursor surviving an operator restart, and a
KEDA ScaledObject on the same workload as a conflict.

Bounds are the documented figure plus ``MARGIN_S`` (docs/design.md, "Scaling"): a poll
interval (200 ms here) is how often the operator looks; the margin covers a kubectl round
trip and scheduling on a loaded 2-core machine.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from agentqueue_devtools.redisserver import RedisServer

from .operator_fixtures import condition, get_obj, wait_for, wait_ready, wait_reason
from .test_drills_redis import admin_secret
from .test_operator_groups import deployment, group, replicas
from .test_operator_queue import admin, apply, queue

pytestmark = pytest.mark.k8s

MARGIN_S = 2.0
POLL = "200ms"


def status(kubectl: Any, namespace: str, name: str) -> dict[str, Any]:
    return (get_obj(kubectl, "consumergroups", name, namespace) or {}).get("status") or {}


def parse_iso(value: str) -> float:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def test_fallback_replicas_while_redis_is_down(operator: Any, kubectl: Any, namespace: str,
                                               redis_server_factory: Any) -> None:
    """Redis unreadable: Ready=False reason FallbackReplicas and the target goes to
    fallbackReplicas (3, from 1, within step limits) within a poll + margin; back to the
    work-based count once Redis answers again."""
    server: RedisServer = redis_server_factory()
    admin_secret(kubectl, namespace, "fb", server)
    apply(kubectl, namespace, queue("fbq", redis={"secretRef": {"name": "fb"}}))
    wait_ready(kubectl, "agentqueues", "fbq", namespace)
    apply(kubectl, namespace, deployment("fbw", replicas=0))
    apply(kubectl, namespace, group("fbg", queueRef={"name": "fbq"}, startFrom="Beginning",
                                    scaleTargetRef={"name": "fbw"},
                                    scaling={"minReplicas": 0, "maxReplicas": 5,
                                             "lagPerReplica": 10, "pollInterval": POLL,
                                             "cooldown": "1h", "fallbackReplicas": 3}))
    wait_ready(kubectl, "consumergroups", "fbg", namespace)
    server.client().xadd(f"aq:{{{namespace}/fbq/0}}:q", {"d": "1"})
    wait_for(lambda: replicas(kubectl, namespace, "fbw") == 1, timeout=1 + MARGIN_S,
             interval=0.05, what="one replica for one message")
    server.stop()
    t0 = time.monotonic()
    wait_for(lambda: replicas(kubectl, namespace, "fbw") == 3, timeout=1 + MARGIN_S,
             interval=0.05, what="fallbackReplicas while Redis is down")
    print(f"fallback after {time.monotonic() - t0:.2f}s")
    obj = wait_for(lambda: (o := get_obj(kubectl, "consumergroups", "fbg", namespace))
                   and (condition(o) or {}).get("reason") == "FallbackReplicas" and o,
                   timeout=MARGIN_S, what="Ready=False FallbackReplicas")
    assert (condition(obj) or {})["status"] == "False"
    time.sleep(1.0)  # several polls: it stays at the fallback count
    assert replicas(kubectl, namespace, "fbw") == 3
    server.start()
    # Redis restarted empty: no work waiting, cooldown 1h → one replica stays.
    wait_for(lambda: (condition(get_obj(kubectl, "consumergroups", "fbg", namespace))
                      or {}).get("reason") == "Active", timeout=10, what="Active again")
    wait_for(lambda: replicas(kubectl, namespace, "fbw") == 1, timeout=5,
             what="work-based count again")


def test_cooldown_and_dead_letter_cursor_survive_a_restart(
        operator: Any, kubectl: Any, namespace: str, operator_redis: Any) -> None:
    """lastActiveTime and deadLetterCursor live in status: after an operator restart the
    cooldown still counts from the last work (the target is not dropped to zero early)
    and dead letters written while the operator was down are counted once."""
    cooldown = 12.0
    apply(kubectl, namespace, queue("rs"))
    wait_ready(kubectl, "agentqueues", "rs", namespace)
    apply(kubectl, namespace, deployment("rsw", replicas=0))
    apply(kubectl, namespace, group("rsg", queueRef={"name": "rs"}, startFrom="Beginning",
                                    scaleTargetRef={"name": "rsw"},
                                    scaling={"minReplicas": 0, "maxReplicas": 2,
                                             "lagPerReplica": 10, "pollInterval": POLL,
                                             "cooldown": f"{cooldown:g}s"}))
    wait_ready(kubectl, "consumergroups", "rsg", namespace)
    r = admin(operator_redis)
    key, dlq = f"aq:{{{namespace}/rs/0}}:q", f"aq:{{{namespace}/rs/0}}:dlq"

    def dead_letter(n: int) -> None:
        for i in range(n):
            r.xadd(dlq, {"x.id": f"1-{i}", "x.group": "rsg", "x.deliveries": "5",
                         "x.error": "test", "d": "{}"})

    r.xadd(key, {"d": "1"})
    wait_for(lambda: replicas(kubectl, namespace, "rsw") == 1, timeout=1 + MARGIN_S,
             interval=0.05, what="scale up")
    for _, entries in r.xreadgroup("rsg", "c", {key: ">"}, count=10):
        for entry_id, _ in entries:
            r.xack(key, "rsg", entry_id)
    dead_letter(2)
    st = wait_for(lambda: (s := status(kubectl, namespace, "rsg")).get("deadLettered") == 2
                  and s.get("waiting") == 0 and s.get("deadLetterCursor") and s,
                  timeout=5, what="idle, 2 dead letters and a cursor in status")
    last_active = parse_iso(st["lastActiveTime"])

    operator.stop()
    dead_letter(3)  # while the operator is down
    operator.start()
    # Until the cooldown has passed since the last work, one replica stays.
    while time.time() < last_active + cooldown - 1.5:
        assert replicas(kubectl, namespace, "rsw") == 1, (
            f"scaled to zero {last_active + cooldown - time.time():.1f}s before the "
            "cooldown ended: lastActiveTime was not restored")
        time.sleep(0.2)
    wait_for(lambda: replicas(kubectl, namespace, "rsw") == 0,
             timeout=last_active + cooldown + MARGIN_S + 1 - time.time(), interval=0.1,
             what="zero once the cooldown ended")
    wait_for(lambda: status(kubectl, namespace, "rsg").get("deadLettered") == 5,
             timeout=MARGIN_S, what="the 3 dead letters written during the restart")
    time.sleep(1.0)  # more polls do not count anything twice
    assert status(kubectl, namespace, "rsg")["deadLettered"] == 5


KEDA_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
    "metadata": {"name": "scaledobjects.keda.sh"},
    "spec": {"group": "keda.sh", "scope": "Namespaced",
             "names": {"kind": "ScaledObject", "plural": "scaledobjects",
                       "singular": "scaledobject", "listKind": "ScaledObjectList"},
             "versions": [{"name": "v1alpha1", "served": True, "storage": True,
                           "schema": {"openAPIV3Schema": {
                               "type": "object",
                               "x-kubernetes-preserve-unknown-fields": True}}}]},
}


@pytest.fixture
def keda_crd(kubectl: Any) -> Iterator[None]:
    """KEDA's ScaledObject CRD (only the parts the operator reads)."""
    kubectl("apply", "-f", "-", input=json.dumps(KEDA_CRD))
    kubectl("wait", "--for=condition=Established", "crd/scaledobjects.keda.sh",
            "--timeout=30s")
    yield
    kubectl("delete", "crd", "scaledobjects.keda.sh", "--wait=false")


def test_keda_scaled_object_is_a_scaling_conflict(operator: Any, kubectl: Any,
                                                  namespace: str, operator_redis: Any,
                                                  keda_crd: None) -> None:
    apply(kubectl, namespace, queue("kq"))
    wait_ready(kubectl, "agentqueues", "kq", namespace)
    apply(kubectl, namespace, deployment("kw", replicas=1))
    apply(kubectl, namespace, {
        "apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject",
        "metadata": {"name": "kw-scaler"},
        "spec": {"scaleTargetRef": {"name": "kw"}, "minReplicaCount": 1,
                 "triggers": [{"type": "redis-streams", "metadata": {"stream": "x"}}]}})
    apply(kubectl, namespace, group("kg", queueRef={"name": "kq"}, startFrom="Beginning",
                                    scaleTargetRef={"name": "kw"},
                                    scaling={"maxReplicas": 5, "lagPerReplica": 1,
                                             "pollInterval": POLL}))
    obj = wait_reason(kubectl, "consumergroups", "kg", namespace,
                      "HorizontalPodAutoscalerConflict", type_="ScalingConflict", timeout=10)
    assert "ScaledObject/kw-scaler" in (condition(obj, "ScalingConflict") or {})["message"]
    r = admin(operator_redis)
    for i in range(20):
        r.xadd(f"aq:{{{namespace}/kq/0}}:q", {"d": str(i)})
    time.sleep(1.5)  # several polls
    assert replicas(kubectl, namespace, "kw") == 1
