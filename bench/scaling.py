"""Scaling reaction: from work crossing the activation threshold to the target's
``spec.replicas`` changing.

On the local stack: a Deployment (apps/v1, replicas 0; no pods run here), a
one-partition Stream AgentQueue and a ConsumerGroup with ``scaleTargetRef`` and
``activationLag: 1``, ``cooldown: 0s``, no scale-down window (so each trial resets fast).

A trial: wait a random fraction of the poll interval (so trials land at every phase
of the poll loop), XADD one entry to ``aq:{<ns>/<queue>/0}:q`` and note the time, then
read the Deployment's /scale every 10 ms until ``spec.replicas`` is no longer 0. Reset:
read and XACK the entry as the group, wait for the operator to scale back to 0.

Goal: p95 <= 2 s with ``pollInterval: 1s`` (also measured at 200ms).

Baseline (a model, not measured: KEDA is not installed here): a default KEDA + HPA setup
notices work at KEDA's ``pollingInterval`` (30 s) and acts at the HPA's sync period
(15 s), so the delay is U(0, 30 s) + U(0, 15 s): p50 22.5 s, p95 38.3 s, max 45 s.
"""

from __future__ import annotations

import random
import sys
import time
from typing import Any

from .common import (
    Row,
    fmt_s,
    latency_triplet,
    log,
    main,
    met,
    percentile,
)
from .stack import LocalStack

NAME = "scaling"
API_VERSION = "agentqueue.io/v1alpha1"
NS, QUEUE, CG, DEPLOY = "bench-scaling", "work", "agents", "agent"
GOAL_P95_S = 2.0
KEDA_POLL_S, HPA_SYNC_S = 30.0, 15.0


def keda_hpa_baseline() -> tuple[float, float, float]:
    """p50, p95, max of U(0, 30) + U(0, 15) (closed form of the trapezoid)."""
    a, b = KEDA_POLL_S, HPA_SYNC_S

    def quantile(q: float) -> float:
        # CDF of the sum of U(0, a) and U(0, b), a >= b, inverted piecewise.
        if q <= b / (2 * a):
            return (2 * a * b * q) ** 0.5
        if q <= 1 - b / (2 * a):
            return q * a + b / 2
        return a + b - (2 * a * b * (1 - q)) ** 0.5

    return quantile(0.5), quantile(0.95), a + b


def deployment(name: str) -> dict[str, Any]:
    labels = {"app": name}
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
            "spec": {"replicas": 0, "selector": {"matchLabels": labels},
                     "template": {"metadata": {"labels": labels},
                                  "spec": {"containers": [{"name": "agent",
                                                           "image": "example/agent:1"}]}}}}


def consumer_group(poll: str, name: str = CG, queue: str = QUEUE,
                   deploy: str = DEPLOY) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": "ConsumerGroup", "metadata": {"name": name},
            "spec": {"queueRef": {"name": queue},
                     "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment",
                                        "name": deploy},
                     "scaling": {"minReplicas": 0, "maxReplicas": 10, "lagPerReplica": 10,
                                 "activationLag": 1, "pollInterval": poll, "cooldown": "0s",
                                 "scaleDown": {"stabilizationWindow": "0s",
                                               "maxStepPercent": 100}}}}


class Scaling:
    """One queue + group + Deployment (names overridable: bench/scale.py puts one busy
    group among many idle ones)."""

    def __init__(self, stack: LocalStack, ns: str = NS, queue: str = QUEUE, cg: str = CG,
                 deploy: str = DEPLOY) -> None:
        from kubernetes import client

        self.stack = stack
        self.ns, self.queue, self.cg, self.deploy = ns, queue, cg, deploy
        self.apps = client.AppsV1Api(stack.api)
        self.redis = stack.redis.client()
        self.stream = f"aq:{{{ns}/{queue}/0}}:q"
        self.group = cg

    def setup(self, poll: str, create_namespace: bool = True, timeout: float = 120) -> None:
        stack, ns = self.stack, self.ns
        if create_namespace:
            stack.create_namespace(ns)
        body: Any = deployment(self.deploy)
        self.apps.create_namespaced_deployment(ns, body)
        stack.create("agentqueues", ns, {"apiVersion": API_VERSION, "kind": "AgentQueue",
                                         "metadata": {"name": self.queue},
                                         "spec": {"type": "Stream", "partitions": 1}})
        stack.wait_ready("agentqueues", ns, self.queue, timeout)
        stack.create("consumergroups", ns,
                     consumer_group(poll, self.cg, self.queue, self.deploy))
        stack.wait_ready("consumergroups", ns, self.cg, timeout)
        status = stack.get("consumergroups", ns, self.cg).get("status") or {}
        self.group = status.get("groupName") or self.cg

    def set_poll(self, poll: str) -> None:
        from kubernetes import client

        api = client.CustomObjectsApi(self.stack.api)
        api.patch_namespaced_custom_object("agentqueue.io", "v1alpha1", self.ns,
                                           "consumergroups", self.cg,
                                           {"spec": {"scaling": {"pollInterval": poll}}})
        self.stack.wait_ready("consumergroups", self.ns, self.cg, 60)

    def replicas(self) -> int:
        scale = self.apps.read_namespaced_deployment_scale(self.deploy, self.ns)
        return int(scale.spec.replicas or 0) if scale.spec is not None else 0

    def wait_replicas(self, pred: Any, timeout: float) -> float:
        deadline = time.monotonic() + timeout
        while True:
            n = self.replicas()
            now = time.monotonic()
            if pred(n):
                return now
            if now > deadline:
                self.stack.check_operator()
                cg = self.stack.get("consumergroups", self.ns, self.cg).get("status") or {}
                raise TimeoutError(f"replicas still {n} after {timeout:.0f}s; group status: "
                                   f"waiting={cg.get('waiting')} "
                                   f"desired={cg.get('desiredReplicas')} "
                                   f"conditions={cg.get('conditions')}")
            time.sleep(0.01)

    def drain(self) -> None:
        """Read and ack everything as the group, so no work is waiting."""
        while True:
            out = self.redis.xreadgroup(self.group, "bench", {self.stream: ">"}, count=100)
            ids = [eid for _, entries in out or [] for eid, _ in entries]
            if not ids:
                break
            self.redis.xack(self.stream, self.group, *ids)
        pending = self.redis.xpending_range(self.stream, self.group, "-", "+", 100)
        if pending:
            self.redis.xack(self.stream, self.group, *[p["message_id"] for p in pending])

    def trials(self, n: int, poll_s: float) -> list[float]:
        rng = random.Random(7)
        out: list[float] = []
        for _ in range(n):
            self.drain()
            self.wait_replicas(lambda r: r == 0, 60)
            time.sleep(0.3 + rng.uniform(0, poll_s))
            t0 = time.monotonic()
            self.redis.xadd(self.stream, {"d": b'{"task":"noop"}'})
            t1 = self.wait_replicas(lambda r: r != 0, 30)
            out.append(t1 - t0)
        self.drain()
        return out


def run(quick: bool) -> list[Row]:
    trials = 3 if quick else 20
    rows: list[Row] = []
    p50_base, p95_base, max_base = keda_hpa_baseline()
    baseline = f"{fmt_s(p50_base)} / {fmt_s(p95_base)} / {fmt_s(max_base)}"
    with LocalStack() as stack:
        sc = Scaling(stack)
        sc.setup("1s")
        for poll, poll_s in (("1s", 1.0), ("200ms", 0.2)):
            if poll != "1s":
                sc.set_poll(poll)
            log(f"scaling: {trials} trials at pollInterval {poll}")
            lat = sc.trials(trials, poll_s)
            p95 = percentile(lat, 95)
            goal = "p95 ≤ 2 s" if poll == "1s" else ""
            rows.append(Row(NAME, f"work → spec.replicas 0→1, pollInterval {poll}, p50 / p95 / "
                            f"max ({len(lat)} trials) vs KEDA+HPA defaults (model)",
                            latency_triplet(lat), baseline, f"{p95_base / p95:.0f}× faster (p95)",
                            goal, met(p95 <= GOAL_P95_S) if goal else ""))
    return rows


if __name__ == "__main__":
    sys.exit(main(NAME, run))
