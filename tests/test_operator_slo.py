"""Queue SLOs end to end: the real operator, a real apiserver and redis-server. A breach
shows as the SLOBreached condition (which objective, by how much), an Event and the
agentqueue_queue_slo_breached gauge scraped over HTTP; so does the recovery."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

import pytest

from agentqueue.planning.slo import RetryCounters
from agentqueue.redisgw.backlog import oldest_waiting_age, retry_counters
from agentqueue_client import ClientConfig, Consumer, Producer, keys

from .operator_fixtures import condition, get_obj, wait_for, wait_ready
from .test_metrics_scrape import samples, scrape
from .test_operator_groups import group
from .test_operator_queue import apply, queue, secret_values

ACCESS = {"producers": [{"name": "intake"}], "consumers": [{"name": "worker"}]}


def slo_condition(kubectl: Any, namespace: str, name: str) -> dict[str, Any] | None:
    return condition(get_obj(kubectl, "agentqueues", name, namespace), "SLOBreached")


def wait_slo(kubectl: Any, namespace: str, name: str, status: str, reason: str | None = None,
             message: str = "", timeout: float = 30.0) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        cond = slo_condition(kubectl, namespace, name)
        if cond and cond["status"] == status and (reason is None or cond["reason"] == reason) \
                and message in cond["message"]:
            return cond
        return None
    return wait_for(check, timeout, interval=0.3,  # type: ignore[no-any-return]
                    what=f"SLOBreached={status} {reason or ''} on {name}")


def slo_gauges(operator: Any, namespace: str, name: str) -> dict[str, float]:
    return {dict(k[1])["objective"]: v
            for k, v in samples(scrape(operator.metrics_url)).items()
            if k[0] == "agentqueue_queue_slo_breached"
            and ("namespace", namespace) in k[1] and ("queue", name) in k[1]}


def wait_gauges(operator: Any, namespace: str, name: str, want: dict[str, float]) -> None:
    wait_for(lambda: slo_gauges(operator, namespace, name) == want, timeout=20, interval=0.3,
             what=f"slo gauges {want}")


def slo_events(kubectl: Any, namespace: str, name: str) -> list[dict[str, Any]]:
    out = kubectl("get", "events", "-n", namespace, "-o", "json").stdout
    items = [e for e in json.loads(out)["items"]
             if e["involvedObject"].get("name") == name
             and e["involvedObject"].get("kind") == "AgentQueue"
             and (e.get("message") or "").startswith(("SLO breached", "SLO recovered"))]
    return sorted(items, key=lambda e: e.get("firstTimestamp") or e.get("eventTime") or "")


@pytest.mark.k8s
def test_stream_slo_breach_and_recovery(operator: Any, kubectl: Any, namespace: str) -> None:
    apply(kubectl, namespace, queue("work", access=ACCESS,
                                    slo={"maxDepth": 3, "maxWaitingAge": "3s"}))
    wait_ready(kubectl, "agentqueues", "work", namespace)
    apply(kubectl, namespace, group("agents", queueRef={"name": "work"}, startFrom="Beginning",
                                    visibilityTimeout="10m"))
    wait_ready(kubectl, "consumergroups", "agents", namespace)
    cond = wait_slo(kubectl, namespace, "work", "False", "SLOMet")
    assert cond["message"] == "all objectives met"
    wait_gauges(operator, namespace, "work", {"maxDepth": 0.0, "maxWaitingAge": 0.0})
    creds = {n: secret_values(kubectl, namespace, f"work.{n}") for n in ("intake", "worker")}

    async def produce(n: int) -> None:
        async with Producer(ClientConfig.from_env(creds["intake"])) as producer:
            for i in range(n):
                await producer.send({"n": i})

    # Past maxDepth: 5 waiting, 2 over. Seen from the shared poll within a poll interval.
    asyncio.run(produce(5))
    cond = wait_slo(kubectl, namespace, "work", "True", message="depth 5 is 2 over maxDepth 3")
    assert cond["message"].startswith("depth 5 is 2 over maxDepth 3"), cond
    assert slo_gauges(operator, namespace, "work")["maxDepth"] == 1.0
    # Nobody reads: after 3s the oldest undelivered entry breaches maxWaitingAge too.
    cond = wait_slo(kubectl, namespace, "work", "True", "ObjectivesBreached")
    assert "depth 5 is 2 over maxDepth 3" in cond["message"]
    assert "over maxWaitingAge 3s" in cond["message"]
    wait_gauges(operator, namespace, "work", {"maxDepth": 1.0, "maxWaitingAge": 1.0})
    obj = get_obj(kubectl, "agentqueues", "work", namespace)
    assert condition(obj)["status"] == "True"  # type: ignore[index]  # Ready untouched

    # Consume and ack everything: both objectives recover.
    async def consume(n: int) -> None:
        async with Consumer(ClientConfig.from_env(creds["worker"]), group="agents",
                            consumer_name="c1", block_ms=200) as consumer:
            for _ in range(n):
                msg = await asyncio.wait_for(consumer.next_message(), 10)
                assert msg is not None
                await msg.ack()
            await consumer.flush_acks()

    asyncio.run(consume(5))
    cond = wait_slo(kubectl, namespace, "work", "False", "SLOMet")
    assert cond["message"] == "all objectives met"
    wait_gauges(operator, namespace, "work", {"maxDepth": 0.0, "maxWaitingAge": 0.0})

    # Events on transitions only: the breach, the second objective, the recovery.
    events = wait_for(lambda: (ev := slo_events(kubectl, namespace, "work"))
                      and any(e["reason"] == "SLOMet" for e in ev) and ev, what="SLO events")
    warnings = [e for e in events if e["type"] == "Warning"]
    assert [e["reason"] for e in warnings] == ["DepthExceeded", "ObjectivesBreached"]
    assert all(e.get("count", 1) == 1 for e in events)
    assert [e["reason"] for e in events if e["type"] == "Normal"] == ["SLOMet"]

    # No SLO any more: no condition, no series; a deleted queue leaves no series.
    apply(kubectl, namespace, queue("work", access=ACCESS))
    wait_for(lambda: slo_condition(kubectl, namespace, "work") is None, timeout=20,
             what="SLOBreached removed")
    wait_gauges(operator, namespace, "work", {})
    kubectl("delete", "agentqueues", "work", "-n", namespace, "--wait=true", "--timeout=30s")
    text = scrape(operator.metrics_url)
    assert f'namespace="{namespace}",partition="0",queue="work"' not in text


@pytest.mark.k8s
def test_list_and_pubsub_say_what_is_not_measured(operator: Any, kubectl: Any,
                                                  namespace: str) -> None:
    slo = {"maxDepth": 2, "maxWaitingAge": "1h", "maxRetryRate": 0.1}
    apply(kubectl, namespace, queue("desk", type="List", access=ACCESS, slo=slo))
    apply(kubectl, namespace, queue("news", type="PubSub", access=ACCESS, slo=slo))
    wait_ready(kubectl, "agentqueues", "desk", namespace)
    wait_ready(kubectl, "agentqueues", "news", namespace)

    cond = wait_slo(kubectl, namespace, "news", "Unknown", "NotMeasured")
    assert "maxDepth (a PubSub channel stores no messages)" in cond["message"]
    assert "maxRetryRate (a PubSub channel stores no messages)" in cond["message"]
    wait_gauges(operator, namespace, "news", {})  # unmeasured: no series at all

    cond = wait_slo(kubectl, namespace, "desk", "False", "SLOMet")
    assert cond["message"].startswith(
        "objectives met: maxDepth, maxWaitingAge; not measured: maxRetryRate")
    creds = secret_values(kubectl, namespace, "desk.intake")

    async def produce() -> None:
        async with Producer(ClientConfig.from_env(creds)) as producer:
            for i in range(3):
                await producer.send({"n": i})

    asyncio.run(produce())
    cond = wait_slo(kubectl, namespace, "desk", "True", "DepthExceeded")
    assert cond["message"].startswith("depth 3 is 1 over maxDepth 2; not measured: "
                                      "maxRetryRate"), cond
    wait_gauges(operator, namespace, "desk", {"maxDepth": 1.0, "maxWaitingAge": 0.0})


class FlakyAgents:
    """A producer sending steadily and a consumer that nacks (retry in 50 ms) the first
    delivery of 4 messages in 5 while `nacking`, and acks everything else: 0.8 retries
    per message, 1.8 deliveries, a retry rate of 0.44. Runs in a thread."""

    def __init__(self, creds: dict[str, dict[str, str]]) -> None:
        self.creds = creds
        self.nacking = True
        self.nacked = self.acked = 0
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> FlakyAgents:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=15)
        assert not self.thread.is_alive()
        if self.error is not None:
            raise self.error

    def _run(self) -> None:
        try:
            asyncio.run(self._agents())
        except BaseException as exc:  # surfaced by __exit__
            self.error = exc

    async def _agents(self) -> None:
        async with Producer(ClientConfig.from_env(self.creds["intake"])) as producer, \
                Consumer(ClientConfig.from_env(self.creds["worker"]), group="agents",
                         consumer_name="c1", block_ms=100, promote_interval=0.05) as consumer:
            async def produce() -> None:
                n = 0
                while not self.stop.is_set():
                    await producer.send({"n": n})
                    n += 1
                    await asyncio.sleep(0.03)

            sending = asyncio.create_task(produce())
            try:
                while not self.stop.is_set():
                    try:
                        msg = await asyncio.wait_for(consumer.next_message(), 0.5)
                    except TimeoutError:
                        continue
                    assert msg is not None
                    if self.nacking and msg.attempt == 0 and msg.payload["n"] % 5:
                        await msg.nack("flaky", delay=0.05)
                        self.nacked += 1
                    else:
                        await msg.ack()
                        self.acked += 1
            finally:
                sending.cancel()
                await asyncio.gather(sending, return_exceptions=True)
                await consumer.flush_acks()


@pytest.mark.k8s
def test_retry_rate_breach_and_recovery(operator: Any, kubectl: Any, namespace: str) -> None:
    apply(kubectl, namespace, queue("flaky", access=ACCESS, slo={"maxRetryRate": 0.2},
                                    delivery={"maxDeliveries": 5}))
    wait_ready(kubectl, "agentqueues", "flaky", namespace)
    apply(kubectl, namespace, group("agents", queueRef={"name": "flaky"},
                                    startFrom="Beginning", visibilityTimeout="10m"))
    wait_ready(kubectl, "consumergroups", "agents", namespace)
    # Nothing delivered yet: no figure, no series (never a made-up 0).
    cond = wait_slo(kubectl, namespace, "flaky", "Unknown", "NotMeasured")
    assert cond["message"].startswith("not measured: maxRetryRate ("), cond
    wait_gauges(operator, namespace, "flaky", {})
    creds = {n: secret_values(kubectl, namespace, f"flaky.{n}") for n in ("intake", "worker")}

    with FlakyAgents(creds) as agents:
        cond = wait_slo(kubectl, namespace, "flaky", "True", "RetryRateExceeded")
        assert cond["message"].startswith("retry rate "), cond
        assert "over maxRetryRate 0.200" in cond["message"], cond
        rate = float(cond["message"].split()[2])
        assert 0.25 < rate <= 1.0, cond  # 0.44 in steady state
        wait_gauges(operator, namespace, "flaky", {"maxRetryRate": 1.0})
        retries = wait_for(lambda: (v := sum(
            value for k, value in samples(scrape(operator.metrics_url)).items()
            if k[0] == "agentqueue_queue_retries_total" and ("queue", "flaky") in k[1]
            and ("namespace", namespace) in k[1])) > 0 and v, what="retries_total")
        assert retries <= agents.nacked

        agents.nacking = False  # every message acked from now on: no retries
        cond = wait_slo(kubectl, namespace, "flaky", "False", "SLOMet")
        assert cond["message"] == "all objectives met"
        wait_gauges(operator, namespace, "flaky", {"maxRetryRate": 0.0})
    assert agents.nacked > 0 and agents.acked > 0

    events = wait_for(lambda: (ev := slo_events(kubectl, namespace, "flaky"))
                      and any(e["reason"] == "SLOMet" for e in ev) and ev, what="SLO events")
    assert [e["reason"] for e in events if e["type"] == "Warning"] == ["RetryRateExceeded"]


async def test_oldest_waiting_age_from_ids(redis_client: Any) -> None:
    """Stream: the first undelivered entry of the slowest group (or the first entry
    without a group); List: the oldest queued element's id. Against Redis' clock."""
    r = redis_client
    now_ms = int((await r.time())[0]) * 1000
    part = keys.partition_keys("slo", "s", 1)[0]
    assert await oldest_waiting_age(r, [part], "Stream") == 0.0  # no key yet
    await r.xadd(part.queue_key, {"d": "old"}, id=f"{now_ms - 60_000}-0")
    await r.xadd(part.queue_key, {"d": "new"}, id=f"{now_ms - 5_000}-0")
    age = await oldest_waiting_age(r, [part], "Stream")
    assert age is not None and 60 <= age < 62  # no group: the first entry waits
    await r.xgroup_create(part.queue_key, "fast", id=f"{now_ms - 60_000}-0")  # read "old"
    await r.xgroup_create(part.queue_key, "done", id="$")
    age = await oldest_waiting_age(r, [part], "Stream")
    assert age is not None and 5 <= age < 7  # "new" was delivered to nobody in "fast"
    await r.xgroup_setid(part.queue_key, "fast", "$")
    assert await oldest_waiting_age(r, [part], "Stream") == 0.0  # everything delivered

    lst = keys.partition_keys("slo", "l", 1)[0]
    await r.lpush(lst.priority_key(1), f'{{"i":"{now_ms - 30_000}-abc","d":"x"}}')
    await r.lpush(lst.priority_key(0), f'{{"i":"{now_ms - 10_000}-def","d":"y"}}',
                  "not an SDK element")
    age = await oldest_waiting_age(r, [lst], "List", priority_levels=2)
    assert age is not None and 30 <= age < 32
    assert await oldest_waiting_age(r, [lst], "PubSub") is None


async def test_retry_counters_from_stats_and_entries_read(redis_client: Any) -> None:
    """The keeper's read of the maxRetryRate counters: the stats hash's retries, and
    deliveries from each group's entries-read (Stream) or the stats hash (List)."""
    r = redis_client
    p0, p1 = keys.partition_keys("slo", "rc", 2)
    empty = await retry_counters(r, [p0, p1], "Stream")
    assert empty == RetryCounters({0: 0, 1: 0}, {})  # nothing there yet
    for i in range(5):
        await r.xadd(p0.queue_key, {"d": str(i)})
    await r.xgroup_create(p0.queue_key, "a", id="0")
    await r.xgroup_create(p0.queue_key, "b", id="0")
    await r.xreadgroup("a", "c", {p0.queue_key: ">"}, count=3)
    await r.hincrby(p0.stats, "retries", 2)
    ids = [e[0] for e in await r.xrange(p0.queue_key)]
    got = await retry_counters(r, [p0, p1], "Stream")
    # "b" has read nothing: Redis does not know its entries-read yet (it stays put)
    assert got == RetryCounters({0: 2, 1: 0}, {(0, "a"): 3, (0, "b"): None},
                                {(0, "a"): ids[2], (0, "b"): "0-0"})
    await r.xreadgroup("b", "c", {p0.queue_key: ">"}, count=1)
    await r.xreadgroup("a", "c", {p0.queue_key: ">"}, count=1)
    got = await retry_counters(r, [p0], "Stream")
    assert got.deliveries == {(0, "a"): 4, (0, "b"): 1}

    lst = keys.partition_keys("slo", "rl", 1)[0]
    await r.hset(lst.stats, mapping={"retries": 1, "deliveries": 9})
    assert await retry_counters(r, [lst], "List") == RetryCounters({0: 1}, {(0, ""): 9})
    await r.delete(lst.stats)
    await r.set(lst.stats, "not a hash")  # never fails the observation
    assert await retry_counters(r, [lst], "List") == RetryCounters({0: 0}, {(0, ""): 0})
    assert await retry_counters(r, [lst], "PubSub") is None
