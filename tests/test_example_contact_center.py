"""The Contact Center Copilot example (examples/contact-center) end to end: the manifests
applied to the real operator, then a shortened flow with the example's own agents
(in-process, asyncio): loadgen -> classify -> specialists -> escalation -> evaluate, with
every outcome published on the feedback channel."""

from __future__ import annotations

import asyncio
import importlib.util
import sys
import time
from collections import Counter
from types import ModuleType
from typing import Any

import pytest

from agentqueue_client import Consumer, Message, keys

from .operator_fixtures import ROOT, wait_ready
from .test_operator_queue import admin, secret_values

pytestmark = pytest.mark.k8s

EXAMPLE = ROOT / "examples" / "contact-center"
QUEUES = ("intake", "billing", "tech", "retention", "escalation", "feedback")
# ConsumerGroup resource -> its Stream queue.
GROUPS = {"classifier": "intake", "billing-agents": "billing", "tech-agents": "tech",
          "retention-agents": "retention"}
# ConsumerGroup resource -> its List queue (no Redis group: the SDK's group name).
LIST_GROUPS = {"human-desk": "escalation"}
N = 30


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"contact_center_{name}",
                                                  EXAMPLE / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # loadgen's dataclass looks its module up there
    spec.loader.exec_module(module)
    return module


agents = _load("agents")
loadgen = _load("loadgen")


async def _flow(creds: dict[str, dict[str, str]], run: str) -> list[dict[str, Any]]:
    feedback: list[dict[str, Any]] = []
    dashboard = Consumer.from_env(creds["feedback.dashboard"])
    await dashboard.start()  # subscribed before anything is published

    async def collect(msg: Message) -> None:
        feedback.append(msg.payload)

    stop = asyncio.Event()
    tasks = [
        asyncio.create_task(dashboard.run(collect, install_signal_handlers=False)),
        asyncio.create_task(agents.classify(
            creds["intake.classifier"],
            {q: creds[f"{q}.classifier"] for q in agents.SPECIALISTS}, stop=stop)),
        *(asyncio.create_task(agents.specialist(
            q, creds[f"{q}.{q}-agent"], creds[f"escalation.{q}-agent"],
            creds[f"feedback.{q}-agent"], stop=stop)) for q in agents.SPECIALISTS),
        asyncio.create_task(agents.evaluate_agent(
            creds["escalation.evaluator"], creds["feedback.evaluator"], stop=stop)),
    ]
    try:
        first = await loadgen.send(creds["intake.loadgen"], N, run)
        # The telephony system retries: same idempotency keys, nothing new enqueued.
        assert await loadgen.send(creds["intake.loadgen"], N, run) == first
        deadline = time.monotonic() + 30
        while len(feedback) < N and time.monotonic() < deadline:
            for t in tasks:
                if t.done():
                    t.result()  # surface an agent's crash now
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)  # a late duplicate would show up here
    finally:
        stop.set()
        dashboard.stop()
        await asyncio.wait_for(asyncio.gather(*tasks), 20)
    return feedback


def test_contact_center_flow(operator: Any, kubectl: Any, namespace: str,
                             operator_redis: Any) -> None:
    t0 = time.monotonic()
    kubectl("apply", "-n", namespace, "-f", str(EXAMPLE / "manifests.yaml"))
    for q in QUEUES:
        wait_ready(kubectl, "agentqueues", q, namespace)
    for g in [*GROUPS, *LIST_GROUPS]:
        wait_ready(kubectl, "consumergroups", g, namespace)
    print(f"contact-center ready after {time.monotonic() - t0:.2f}s")

    entries = ["intake.loadgen", "intake.classifier", "escalation.evaluator",
               "feedback.evaluator", "feedback.dashboard"]
    for q in agents.SPECIALISTS:
        entries += [f"{q}.classifier", f"{q}.{q}-agent", f"escalation.{q}-agent",
                    f"feedback.{q}-agent"]
    creds = {e: secret_values(kubectl, namespace, e) for e in entries}
    assert creds["escalation.evaluator"]["AQ_QUEUE_TYPE"] == "List"
    assert creds["feedback.dashboard"]["AQ_QUEUE_TYPE"] == "PubSub"
    assert creds["intake.loadgen"]["AQ_PARTITIONS"] == "2"

    t1 = time.monotonic()
    feedback = asyncio.run(_flow(creds, run="t"))
    print(f"{N} conversations through the fabric in {time.monotonic() - t1:.2f}s")

    # Every conversation ends exactly once, resolved or escalated as the rules say.
    convs = {c["id"]: c for c in loadgen.conversations(N, "t")}
    counts = Counter(f["id"] for f in feedback)
    assert set(counts) == set(convs), f"missing: {set(convs) - set(counts)}"
    assert all(n == 1 for n in counts.values()), f"duplicates: {counts.most_common(3)}"
    for f in feedback:
        conv = convs[f["id"]]
        expected = ("resolved" if agents.escalation_priority(conv["text"]) is None
                    else "escalated")
        assert f["outcome"] == expected, (conv, f)
        if expected == "resolved":
            assert f["by"] == agents.route(conv["text"])
        else:
            assert f["by"] == "human-desk"
    outcomes = Counter(f["outcome"] for f in feedback)
    assert outcomes["resolved"] and outcomes["escalated"]
    assert {f["by"] for f in feedback} == {*agents.SPECIALISTS, "human-desk"}

    # Nothing left pending: no unacked stream entries, no waiting or in-flight list items.
    r = admin(operator_redis)
    for group_name, q in GROUPS.items():
        for p in keys.partition_keys(namespace, q, 2 if q == "intake" else 1):
            info = {g["name"]: g for g in r.xinfo_groups(p.queue_key)}
            assert info[group_name]["pending"] == 0, (q, info)
            assert info[group_name]["lag"] in (0, None), (q, info)
            assert r.xlen(p.dead_letter) == 0
            assert r.zcard(p.retry) == 0
    # The escalation List (its ConsumerGroup `human-desk` is the SDK's group name there,
    # no Redis group): every level drained, nothing in flight; the group's settings are
    # what the evaluator read.
    (esc,) = keys.partition_keys(namespace, "escalation", 1)
    assert r.hget(esc.meta, "visibilityMs:human-desk") == "30000"
    for level in range(3):
        assert r.llen(esc.priority_key(level)) == 0
    assert r.zcard(esc.retry) == 0
    for key in r.scan_iter(match=esc.processing_pattern):
        if r.type(key) == "list":  # processing lists (proc:#consumers is a heartbeat zset)
            assert r.llen(key) == 0, key
    assert r.xlen(esc.dead_letter) == 0
    # Region keys spread intake over both partitions.
    assert all(r.xlen(p.queue_key) for p in keys.partition_keys(namespace, "intake", 2))
