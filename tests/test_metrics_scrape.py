"""/metrics over HTTP, exact values: the real operator polls a real redis-server while the
SDK enqueues, consumes, acks, leaves work pending and dead-letters one message.

Every figure below is computed from the scenario, not read back from Redis: a wrong
figure in the operator fails the test."""

from __future__ import annotations

import asyncio
import time
import urllib.request
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from agentqueue_client import ClientConfig, Consumer, Message, Producer, partition_for

from .operator_fixtures import get_obj, wait_for, wait_ready
from .test_operator_groups import group
from .test_operator_queue import apply, queue, secret_values

pytestmark = pytest.mark.k8s

ACCESS = {"producers": [{"name": "intake"}], "consumers": [{"name": "worker"}],
          "observers": [{"name": "dash"}]}


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as resp:  # noqa: S310 - local test URL
        assert resp.status == 200
        return str(resp.read().decode())


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(sample name, sorted labels): value} of every sample in an exposition."""
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def keys_for(partition: int, n: int, partitions: int = 2) -> list[str]:
    """`n` routing keys that land on `partition`."""
    out: list[str] = []
    i = 0
    while len(out) < n:
        key = f"k{i}"
        if partition_for(key, partitions) == partition:
            out.append(key)
        i += 1
    return out


def wanted(ns: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every series of the scenario's queue and group, with its exact value."""
    q = (("namespace", ns), ("queue", "orders"))
    g = (("group", "agents"), ("namespace", ns), ("queue", "orders"))

    def part(p: int) -> tuple[tuple[str, str], ...]:
        return (("namespace", ns), ("partition", str(p)), ("queue", "orders"))

    return {
        ("agentqueue_queue_length", part(0)): 6,  # acked and dead-lettered entries stay
        ("agentqueue_queue_length", part(1)): 4,
        ("agentqueue_queue_dead_letter_length", part(0)): 1,
        ("agentqueue_queue_dead_letter_length", part(1)): 0,
        ("agentqueue_queue_scheduled_retries", part(0)): 0,
        ("agentqueue_queue_scheduled_retries", part(1)): 0,
        ("agentqueue_queue_retries_total", part(0)): 0,  # the nack dead-lettered: no retry
        ("agentqueue_queue_retries_total", part(1)): 0,
        ("agentqueue_queue_trimmed_total", q): 0,
        ("agentqueue_queue_dropped_undelivered_total", q): 0,
        ("agentqueue_group_lag", g): 4,  # 3 never read on partition 0, 1 on partition 1
        ("agentqueue_group_pending", g): 1,  # read, neither acked nor dead-lettered
        ("agentqueue_group_due_retries", g): 0,
        ("agentqueue_group_consumers", g): 1,
        ("agentqueue_group_expired_pending", g): 0,  # visibility timeout 10m
        ("agentqueue_group_dead_lettered_total", g): 1,  # by the consumer, not the sweep
    }


def test_metrics_exact_values(operator: Any, kubectl: Any, namespace: str) -> None:
    apply(kubectl, namespace, queue("orders", partitions=2, access=ACCESS))
    wait_ready(kubectl, "agentqueues", "orders", namespace)
    apply(kubectl, namespace, group("agents", queueRef={"name": "orders"},
                                    startFrom="Beginning", visibilityTimeout="10m",
                                    maxDeliveries=1))
    wait_ready(kubectl, "consumergroups", "agents", namespace)
    creds = {n: secret_values(kubectl, namespace, f"orders.{n}")
             for n in ("intake", "worker", "dash")}

    async def scenario() -> None:
        # 6 messages on partition 0, 4 on partition 1.
        async with Producer(ClientConfig.from_env(creds["intake"])) as producer:
            for i, key in enumerate(keys_for(0, 6)):
                await producer.send({"p": 0, "n": i}, key=key)
            for i, key in enumerate(keys_for(1, 4)):
                await producer.send({"p": 1, "n": i}, key=key)
        # One entry per partition per read: 3 reads deliver 3 + 3.
        consumer = Consumer(ClientConfig.from_env(creds["worker"]), group="agents",
                            consumer_name="c1", batch_size=1, block_ms=200)
        got: list[Message] = []
        async with consumer:
            while len(got) < 6:
                msg = await asyncio.wait_for(consumer.next_message(), 10)
                assert msg is not None
                got.append(msg)
            by_part = {p: [m for m in got if m.partition == p] for p in (0, 1)}
            assert [len(by_part[0]), len(by_part[1])] == [3, 3]
            for m in by_part[0][:2] + by_part[1][:2]:
                await m.ack()
            await by_part[0][2].nack("poison")  # maxDeliveries 1: dead-lettered at once
            await consumer.flush_acks()
        # by_part[1][2] stays pending: closing a consumer acks nothing.

    started = time.monotonic()
    asyncio.run(scenario())

    last: dict[Any, float] = {}

    def settled() -> bool:
        nonlocal last
        last = {k: v for k, v in samples(scrape(operator.metrics_url)).items()
                if ("namespace", namespace) in k[1]}
        return {k: v for k, v in last.items() if k in wanted(namespace)} == wanted(namespace)

    wait_for(settled, timeout=30, interval=0.5, what="the scenario's figures in /metrics")
    text = scrape(operator.metrics_url)
    got = {k: v for k, v in samples(text).items() if ("namespace", namespace) in k[1]}
    g = (("group", "agents"), ("namespace", namespace), ("queue", "orders"))
    age = got.pop(("agentqueue_group_oldest_pending_age_seconds", g))
    assert 0 < age <= time.monotonic() - started + 1
    memory = {k: got.pop(k) for k in list(got) if k[0] == "agentqueue_queue_memory_bytes"}
    assert len(memory) == 2 and all(v > 0 for v in memory.values())
    assert got == wanted(namespace)  # nothing more: no replicas without a scale target,
    # no SLO series without an SLO
    polls = samples(text).get(("agentqueue_redis_command_duration_seconds_count",
                               (("operation", "poll"),)), 0)
    assert polls > 0  # the shared lag poll is timed

    # Status reports the same observations.
    qstatus = get_obj(kubectl, "agentqueues", "orders", namespace)["status"]  # type: ignore[index]
    assert (qstatus["length"], qstatus["deadLetterLength"]) == (10, 1)
    gstatus = wait_for(lambda: (o := get_obj(kubectl, "consumergroups", "agents", namespace))
                       and o["status"].get("deadLettered") == 1 and o["status"],
                       what="deadLettered in status")
    assert (gstatus["lag"], gstatus["pending"], gstatus["consumers"]) == (4, 1, 1)

    # No credential anywhere in the exposition.
    secrets = [c["REDIS_PASSWORD"] for c in creds.values()]
    secrets.append(operator.env["AGENTQUEUE_REDIS_PASSWORD"])
    assert all(len(s) >= 8 for s in secrets)
    for secret in secrets:
        assert secret not in text

    # Deleted objects take their series along, even a group that outlived its queue.
    kubectl("delete", "agentqueues", "orders", "-n", namespace, "--wait=true", "--timeout=30s")
    kubectl("delete", "consumergroups", "agents", "-n", namespace, "--wait=true",
            "--timeout=30s")
    wait_for(lambda: f'namespace="{namespace}"' not in scrape(operator.metrics_url),
             timeout=15, what="no series of the deleted queue and group")
