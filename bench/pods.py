"""Scaling with real pods on the local node: the loop the product exists for.

Runs against the node stack of `agentqueue dev up` (started here, and stopped at the end,
when none is running; a running one is reused and left running). The agents are the
example agent (`agentqueue-agent:dev`, examples/agent/agent.py), scaled by a ConsumerGroup.

* **cold start**, per trial (the group at zero replicas, no pod left): send one message and
  time (a) the first consumer pod started (its container running or already done: a pod
  that handles one message and is scaled straight back down may never report Running) and
  (b) the message acked. ``pollInterval: 1s``,
  ``cooldown: 0s``, no scale-down window, so each trial resets within seconds.
  Baseline: a default KEDA + HPA setup (a model: KEDA polls every 30 s, the HPA syncs every
  15 s, so it notices after U(0, 30 s) + U(0, 15 s)) *plus the pod start measured here*
  (send → first pod Running minus our own notice time is not separable, so the model adds
  the whole measured send → ack time of each trial: a lower bound for KEDA).
* **drain**: 10,000 messages, each taking 10 ms of simulated work (``AQ_WORK_MS``, one at a
  time per pod), with ``maxReplicas`` 1, 5 and 10; time from the send to the last ack.
  Baseline: the same drain with ``maxReplicas: 1``, measured in the same run.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import random
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from .common import (
    MissingPrerequisite,
    Row,
    fmt_s,
    latency_triplet,
    log,
    main,
    percentile,
)

NAME = "pods"
ROOT = Path(__file__).resolve().parents[1]
AGENT_IMAGE = "agentqueue-agent:dev"
KEDA_POLL_S, HPA_SYNC_S = 30.0, 15.0


class NodeStack:
    """The running node stack (ready.json), or one started for this run."""

    def __init__(self) -> None:
        from agentqueue_devtools.stack import read_ready, state_dir

        self.started_here = False
        ready = read_ready(state_dir())
        if ready is None:
            from agentqueue_devtools.stack import choose_mode
            with_node, why_not = choose_mode(None)
            if not with_node:
                raise MissingPrerequisite(f"no node can run here: {why_not}")
            log("pods: starting the node stack (agentqueue dev up)")
            got = subprocess.run([sys.executable, "-m", "agentqueue.cli", "dev", "up", "--node"],
                                 cwd=ROOT, stdin=subprocess.DEVNULL)
            if got.returncode != 0:
                raise RuntimeError("agentqueue dev up failed")
            self.started_here = True
            ready = read_ready(state_dir())
        if not ready or ready.get("mode") != "node":
            raise MissingPrerequisite("the running dev stack has no node (--no-node)")
        self.ready = ready
        from kubernetes import client, config
        self.api = config.new_client_from_config(config_file=ready["kubeconfig"])
        self.core = client.CoreV1Api(self.api)
        self.apps = client.AppsV1Api(self.api)
        self.custom = client.CustomObjectsApi(self.api)
        import redis
        self.redis = redis.Redis.from_url(ready["redis_url"], decode_responses=True)

    def close(self) -> None:
        self.api.close()
        if self.started_here:
            subprocess.run([sys.executable, "-m", "agentqueue.cli", "dev", "down"], cwd=ROOT,
                           stdin=subprocess.DEVNULL, check=False)

    def apply(self, namespace: str, objects: list[dict[str, Any]]) -> None:
        subprocess.run([self.ready["kubectl"], "--kubeconfig", self.ready["kubeconfig"], "-n",
                        namespace, "apply", "-f", "-"], check=True, text=True,
                       input="\n".join(json.dumps(o) for o in objects),
                       stdout=subprocess.DEVNULL)

    def wait_ready(self, plural: str, namespace: str, name: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            obj: dict[str, Any] = self.custom.get_namespaced_custom_object(  # type: ignore[assignment]
                "agentqueue.io", "v1alpha1", namespace, plural, name)
            conds = (obj.get("status") or {}).get("conditions") or []
            if any(c["type"] == "Ready" and c["status"] == "True" for c in conds):
                return
            time.sleep(0.2)
        raise TimeoutError(f"{plural}/{name} not Ready after {timeout:.0f}s")

    def creds(self, namespace: str, secret: str) -> dict[str, str]:
        data = self.core.read_namespaced_secret(secret, namespace).data or {}
        values = {k: base64.b64decode(v).decode() for k, v in data.items()}
        url = urlsplit(values["REDIS_URL"])
        host = urlsplit(self.ready["redis_url"]).hostname
        values["REDIS_URL"] = urlunsplit(url._replace(netloc=f"{host}:{url.port or 6379}"))
        return values

    def running_pods(self, namespace: str, app: str) -> int:
        pods = self.core.list_namespaced_pod(namespace, label_selector=f"app={app}").items
        return sum(1 for p in pods if p.status is not None and p.status.phase == "Running"
                   and p.metadata is not None and p.metadata.deletion_timestamp is None)

    def started_pods(self, namespace: str, app: str) -> int:
        """Pods whose container has started. Not only phase Running: a pod that handles one
        message and is scaled straight back down can go from Pending to Succeeded between
        two of the kubelet's status updates, never showing Running."""
        pods = self.core.list_namespaced_pod(namespace, label_selector=f"app={app}").items
        return sum(1 for p in pods if p.status is not None and (
            p.status.phase in ("Running", "Succeeded", "Failed")
            or any(c.state is not None and (c.state.running or c.state.terminated)
                   for c in p.status.container_statuses or [])))

    def any_pods(self, namespace: str, app: str) -> int:
        return len(self.core.list_namespaced_pod(namespace, label_selector=f"app={app}").items)


def manifests(name: str, *, max_replicas: int, work_ms: int, partitions: int,
              lag_per_replica: int) -> list[dict[str, Any]]:
    labels = {"app": name}
    return [
        {"apiVersion": "agentqueue.io/v1alpha1", "kind": "AgentQueue",
         "metadata": {"name": name},
         "spec": {"type": "Stream", "partitions": partitions,
                  "access": {"producers": [{"name": "sender"}],
                             "consumers": [{"name": "agent"}]}}},
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
         "spec": {"replicas": 0, "selector": {"matchLabels": labels},
                  "template": {"metadata": {"labels": labels}, "spec": {
                      "terminationGracePeriodSeconds": 5,
                      "containers": [{"name": "agent", "image": AGENT_IMAGE,
                                      "imagePullPolicy": "IfNotPresent",
                                      "env": [{"name": "AQ_GROUP", "value": name},
                                              {"name": "AQ_WORK_MS", "value": str(work_ms)}],
                                      "envFrom": [{"secretRef": {"name": f"{name}.agent"}}]}]}}}},
        {"apiVersion": "agentqueue.io/v1alpha1", "kind": "ConsumerGroup",
         "metadata": {"name": name},
         "spec": {"queueRef": {"name": name},
                  "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment",
                                     "name": name},
                  "scaling": {"minReplicas": 0, "maxReplicas": max_replicas,
                              "lagPerReplica": lag_per_replica, "activationLag": 1,
                              "pollInterval": "1s", "cooldown": "0s",
                              "scaleDown": {"stabilizationWindow": "0s"}}}},
    ]


def backlog(stack: NodeStack, namespace: str, name: str, partitions: int) -> tuple[int, int]:
    """(entries read by the group, pending + lag) over all partitions, one pipeline."""
    pipe = stack.redis.pipeline(transaction=False)
    for p in range(partitions):
        pipe.xinfo_groups(f"aq:{{{namespace}/{name}/{p}}}:q")
    read = waiting = 0
    for groups in pipe.execute():
        for g in groups:
            if g["name"] == name:
                read += int(g.get("entries-read") or 0)
                waiting += int(g["pending"]) + int(g["lag"] or 0)
    return read, waiting


def send(stack: NodeStack, namespace: str, name: str, n: int) -> None:
    from agentqueue_client import Outgoing, Producer

    async def _send() -> None:
        async with Producer.from_env(stack.creds(namespace, f"{name}.sender")) as p:
            for start in range(0, n, 1000):
                await p.send_many(Outgoing({"n": i}) for i in range(start, min(n, start + 1000)))
    asyncio.run(_send())


def wait(pred: Any, timeout: float, what: str, interval: float = 0.02) -> float:
    deadline = time.monotonic() + timeout
    while True:
        now = time.monotonic()
        if pred():
            return now
        if now > deadline:
            raise TimeoutError(f"{what} not reached after {timeout:.0f}s")
        time.sleep(interval)


def cold_start(stack: NodeStack, namespace: str, trials: int) -> tuple[list[float], list[float]]:
    name = "cold"
    stack.apply(namespace, manifests(name, max_replicas=1, work_ms=0, partitions=1,
                                     lag_per_replica=10))
    stack.wait_ready("agentqueues", namespace, name)
    stack.wait_ready("consumergroups", namespace, name)
    rng = random.Random(7)
    to_pod: list[float] = []
    to_ack: list[float] = []
    for i in range(trials):
        wait(lambda: stack.any_pods(namespace, name) == 0, 120, "no agent pod left", 0.2)
        time.sleep(rng.uniform(0, 1.0))  # land at every phase of the 1 s poll
        read_before, _ = backlog(stack, namespace, name, 1)
        t0 = time.monotonic()
        send(stack, namespace, name, 1)
        t_pod = wait(lambda: stack.started_pods(namespace, name) > 0, 120,
                     "a consumer pod started", 0.05)
        want = (read_before + 1, 0)
        t_ack = wait(lambda want=want: backlog(stack, namespace, name, 1) == want, 120,
                     "the message acked")
        to_pod.append(t_pod - t0)
        to_ack.append(t_ack - t0)
        log(f"pods: cold start {i + 1}/{trials}: pod started {t_pod - t0:.2f}s, "
            f"acked {t_ack - t0:.2f}s")
    return to_pod, to_ack


def drain(stack: NodeStack, namespace: str, n: int, max_replicas: int) -> float:
    name = f"drain{max_replicas}"
    partitions = 10
    stack.apply(namespace, manifests(name, max_replicas=max_replicas, work_ms=10,
                                     partitions=partitions, lag_per_replica=100))
    stack.wait_ready("agentqueues", namespace, name)
    stack.wait_ready("consumergroups", namespace, name)
    t0 = time.monotonic()
    send(stack, namespace, name, n)
    t1 = wait(lambda: backlog(stack, namespace, name, partitions) == (n, 0), 1800,
              f"{n} messages drained", 0.2)
    peak = stack.running_pods(namespace, name)
    log(f"pods: drained {n} with maxReplicas {max_replicas} in {t1 - t0:.1f}s "
        f"({peak} pods at the end)")
    return t1 - t0


def keda_model_plus(measured: list[float], samples: int = 20000) -> list[float]:
    """The KEDA + HPA default notice delay (model) added to each measured trial."""
    rng = random.Random(11)
    return [rng.uniform(0, KEDA_POLL_S) + rng.uniform(0, HPA_SYNC_S) + rng.choice(measured)
            for _ in range(samples)]


def run(quick: bool) -> list[Row]:
    trials = 3 if quick else 20
    sizes = (200,) if quick else (10_000,)
    replicas = (1, 2) if quick else (1, 5, 10)
    stack = NodeStack()
    namespace = f"bench-pods-{uuid.uuid4().hex[:6]}"
    from kubernetes import client
    stack.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
    rows: list[Row] = []
    try:
        to_pod, to_ack = cold_start(stack, namespace, trials)
        base = keda_model_plus(to_ack)
        rows.append(Row(NAME, f"work at 0 replicas → first consumer pod started, p50 / p95 / "
                              f"max ({trials} trials)", latency_triplet(to_pod)))
        rows.append(Row(NAME, f"work at 0 replicas → first message acked, p50 / p95 / max "
                              f"({trials} trials) vs KEDA+HPA defaults (model) + the same "
                              "measured pod start",
                        latency_triplet(to_ack),
                        f"{fmt_s(percentile(base, 50))} / {fmt_s(percentile(base, 95))} / "
                        f"{fmt_s(max(base))}",
                        f"{percentile(base, 95) / percentile(to_ack, 95):.0f}× faster (p95)"))
        for n in sizes:
            times = {r: drain(stack, namespace, n, r) for r in replicas}
            one = times[replicas[0]]
            for r, t in times.items():
                rows.append(Row(NAME, f"drain {n:,} messages (10 ms of work each), maxReplicas "
                                      f"{r} vs maxReplicas {replicas[0]}", fmt_s(t), fmt_s(one),
                                f"{one / t:.1f}× faster" if r != replicas[0] else ""))
        log(f"pods: cold-start ack median {statistics.median(to_ack):.2f}s")
    finally:
        stack.core.delete_namespace(namespace)
        stack.close()
    return rows


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main(NAME, run))
