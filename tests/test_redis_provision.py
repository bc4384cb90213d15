"""Queue provisioning against a real redis-server: observe → plan → apply → observe."""

from __future__ import annotations

from typing import Any

import pytest

from agentqueue.models import AgentQueueSpec
from agentqueue.planning import queue_plan
from agentqueue.planning.queue_plan import CreateStream, KeyConflict, LoadLibrary, WriteMeta
from agentqueue.redisgw import functions, provision
from agentqueue.redisgw.connection import RedisClient
from agentqueue_client.keys import PartitionKeys, partition_keys

NS = "prov"


def spec(**raw: Any) -> AgentQueueSpec:
    return AgentQueueSpec.model_validate(raw)


async def converge(client: RedisClient, s: AgentQueueSpec, name: str,
                   generation: int | None = None) -> list[queue_plan.Action]:
    observed = await provision.observe_queue(client, NS, name, s)
    actions = queue_plan.plan_queue(s, NS, name, observed, generation=generation)
    await provision.apply(client, actions)
    again = await provision.observe_queue(client, NS, name, s)
    assert queue_plan.plan_queue(s, NS, name, again, generation=generation) == []
    return actions


async def test_stream_queue_provisioned_and_idempotent(redis_client: RedisClient) -> None:
    await redis_client.function_flush()
    s = spec(partitions=3, schema={"type": "object"})
    actions = await converge(redis_client, s, "orders", generation=4)
    assert sum(isinstance(a, CreateStream) for a in actions) == 3
    assert sum(isinstance(a, WriteMeta) for a in actions) == 3
    assert isinstance(actions[0], LoadLibrary)
    for p in partition_keys(NS, "orders", 3):
        assert await redis_client.type(p.queue_key) == "stream"
        assert await redis_client.xlen(p.queue_key) == 0
        info = await redis_client.xinfo_stream(p.queue_key)
        assert info["groups"] == 0 and info.get("entries-added", 0) == 0
        meta = await redis_client.hgetall(p.meta)
        assert meta["type"] == "Stream" and meta["partitions"] == "3"
        assert meta["retryInitialMs"] == "1000" and meta["retryMaxMs"] == "300000"
        assert meta["idempotencyTtlMs"] == str(24 * 3600 * 1000)
        assert meta["schema"] == '{"type":"object"}' and meta["generation"] == "4"
    assert await converge(redis_client, s, "orders", generation=4) == []


async def test_drift_is_repaired_and_foreign_fields_kept(redis_client: RedisClient) -> None:
    s = spec(partitions=2, schema={"type": "string"})
    await converge(redis_client, s, "drift")
    p0, p1 = partition_keys(NS, "drift", 2)
    await redis_client.delete(p1.queue_key)
    await redis_client.hset(p0.meta, mapping={"maxDeliveries": "99", "paused:g": "{}"})
    observed = await provision.observe_queue(redis_client, NS, "drift", s)
    actions = queue_plan.plan_queue(s, NS, "drift", observed)
    assert sorted(a.describe() for a in actions) == sorted([
            f"write metadata {p0.meta} (maxDeliveries)", f"create stream {p1.queue_key}"])
    await provision.apply(redis_client, actions)
    assert (await redis_client.hgetall(p0.meta))["paused:g"] == "{}"
    # the schema removed from the spec is removed from Redis
    s2 = spec(partitions=2)
    await converge(redis_client, s2, "drift")
    assert "schema" not in await redis_client.hgetall(p0.meta)


async def test_list_and_pubsub_queues_store_no_stream(redis_client: RedisClient) -> None:
    lst = spec(type="List", priorityLevels=3)
    actions = await converge(redis_client, lst, "tasks")
    assert not any(isinstance(a, CreateStream) for a in actions)
    p = PartitionKeys(NS, "tasks", 0)
    assert await redis_client.exists(p.queue_key) == 0
    await redis_client.lpush(p.queue_key, "a")
    await redis_client.lpush(p.priority_key(2), "b", "c")
    [fig] = provision.figures(await provision.observe_queue(redis_client, NS, "tasks", lst))
    assert fig["length"] == 3 and fig["memoryBytes"] > 0

    ps = spec(type="PubSub")
    actions = await converge(redis_client, ps, "news")
    assert [type(a) for a in actions] == [WriteMeta]
    assert await redis_client.keys("aq:{prov/news/*") == [PartitionKeys(NS, "news", 0).meta]


async def test_key_of_another_type_is_a_conflict(redis_client: RedisClient) -> None:
    s = spec()
    await redis_client.rpush(PartitionKeys(NS, "clash", 0).queue_key, "old list data")
    observed = await provision.observe_queue(redis_client, NS, "clash", s)
    with pytest.raises(KeyConflict, match="holds a list"):
        queue_plan.plan_queue(s, NS, "clash", observed)


async def test_figures(redis_client: RedisClient) -> None:
    s = spec(partitions=2)
    await converge(redis_client, s, "fig")
    p = PartitionKeys(NS, "fig", 1)
    for i in range(3):
        await functions.enqueue(redis_client, p, {"d": str(i)})
    await redis_client.xgroup_create(p.queue_key, "g", id="0")
    got = await redis_client.xreadgroup("g", "c", {p.queue_key: ">"}, count=2)
    a, b = (e[0] for e in got[0][1])
    await functions.nack(redis_client, p, "g", a, 10**13, "e")
    await functions.deadletter(redis_client, p, "g", b, "c", "e", 5, 1)
    figs = provision.figures(await provision.observe_queue(redis_client, NS, "fig", s))
    assert figs[0] == {"index": 0, "key": PartitionKeys(NS, "fig", 0).queue_key, "length": 0,
                       "deadLetterLength": 0, "scheduledRetries": 0,
                       "memoryBytes": figs[0]["memoryBytes"]}
    assert (figs[1]["length"], figs[1]["deadLetterLength"], figs[1]["scheduledRetries"]) == (
        3, 1, 1)
    assert figs[1]["memoryBytes"] > figs[0]["memoryBytes"] > 0


async def test_delete_queue_data_spares_neighbours(redis_client: RedisClient) -> None:
    s = spec(partitions=2, type="List")
    for name in ("billing", "billing2"):
        await converge(redis_client, s, name)
    await converge(redis_client, s, "billing")
    mine = PartitionKeys(NS, "billing", 1)
    await redis_client.set(mine.idempotency("x"), "1")
    await redis_client.lpush(mine.processing("c1"), "m")
    await redis_client.lpush(mine.queue_key, "m")
    other_ns = PartitionKeys("prov2", "billing", 0)
    await redis_client.set(other_ns.meta, "keep")
    deleted = await provision.delete_queue_data(redis_client, NS, "billing", 2)
    assert deleted == 5  # 2 meta + idem + proc + queue
    left = set(await redis_client.keys("*"))
    assert left == {PartitionKeys(NS, "billing2", 0).meta, PartitionKeys(NS, "billing2", 1).meta,
                    other_ns.meta}
    assert await provision.delete_queue_data(redis_client, NS, "billing", 2) == 0


async def test_provision_in_cluster(redis_cluster_client: RedisClient) -> None:
    client = redis_cluster_client
    s = spec(partitions=6)
    await converge(client, s, "wide")
    observed = await provision.observe_queue(client, NS, "wide", s)
    assert len(observed.library_versions) == 3 and observed.library_current
    parts = partition_keys(NS, "wide", 6)
    for p in parts:
        await functions.enqueue(client, p, {"d": "x"}, idem_key="k")
    figs = provision.figures(await provision.observe_queue(client, NS, "wide", s))
    assert [f["length"] for f in figs] == [1] * 6
    # 6 streams + 6 meta + 6 idempotency keys, spread over the nodes
    assert await provision.delete_queue_data(client, NS, "wide", 6) == 18
    for p in parts:
        assert await client.exists(p.queue_key) == 0


async def test_unchanged_partitions_are_reused_and_changes_seen(redis_client: RedisClient,
                                                               monkeypatch: pytest.MonkeyPatch
                                                               ) -> None:
    """The drift round's observation answers "unchanged" by digest: a partition that
    did not change is the same object as last time; any change of what it reads (a
    length, a type, the meta hash, a List level, memory) is a new one. Several chunks
    (two partitions per script call here)."""
    monkeypatch.setattr(provision, "PARTITIONS_PER_CALL", 2)
    s, lst = spec(partitions=3), spec(partitions=1, type="List", priorityLevels=2)
    await converge(redis_client, s, "same")
    await converge(redis_client, lst, "levels")
    first = await provision.observe_queues(redis_client, [(NS, "same", s), (NS, "levels", lst)])
    again = await provision.observe_queues(redis_client, [(NS, "same", s), (NS, "levels", lst)])
    assert all(a is b for q1, q2 in zip(first, again, strict=True)
               for a, b in zip(q1.partitions, q2.partitions, strict=True))
    p0, p1, p2 = partition_keys(NS, "same", 3)
    [lp] = partition_keys(NS, "levels", 1)
    await functions.enqueue(redis_client, p1, {"d": "x"})
    await redis_client.hset(p2.meta, "extra", "1")
    await redis_client.rpush(lp.priority_key(1), "m")
    [q, ql] = await provision.observe_queues(redis_client, [(NS, "same", s), (NS, "levels", lst)])
    assert q.partitions[0] is first[0].partitions[0]
    assert (q.partitions[1].length, q.partitions[2].meta.get("extra")) == (1, "1")
    assert q.partitions[1] is not first[0].partitions[1]
    assert ql.partitions[0].length == 1 and ql.partitions[0] is not first[1].partitions[0]
    await redis_client.delete(p0.retry)
    await redis_client.set(p0.retry, "not a zset")  # a type conflict is an observation
    [q] = await provision.observe_queues(redis_client, [(NS, "same", s)])
    assert q.partitions[0].retry_type == "string" and q.partitions[0].scheduled_retries == 0
