"""The SDK on a real Redis Cluster: 3 primaries, 3 replicas, on loopback.

Queues are provisioned with the operator's own code (queue plan, Functions library, ACL
users on every primary, consumer group); agents use the role users' credentials from
the Secret data the operator would write (``REDIS_CLUSTER=1``). A queue's partitions
hash to slots on different primaries, so these tests show that the SDK's reads,
pipelines and transactions never cross a slot, and that MOVED/failover are absorbed.
The failover drill at the end kills a primary (SIGKILL) under load.
"""

from __future__ import annotations

import asyncio
import collections
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import redis.asyncio as aioredis

from agentqueue.models import Role
from agentqueue.planning import acl
from agentqueue.redisgw import connection, users
from agentqueue.redisgw.connection import RedisClient, RedisTarget
from agentqueue.redisgw.errors import RedisUnavailable
from agentqueue.services.queues import secret_data
from agentqueue_client import ClientConfig, Consumer, Message, Outgoing, Producer, keys
from agentqueue_client._streams import ClusterStreamBackend
from agentqueue_devtools.redisserver import RedisCluster

from . import queue_harness as harness
from .agents.aio import eventually
from .queue_harness import Queue
from .redis_fixtures import need_redis_server

pytestmark = pytest.mark.cluster

NS = "team-c"
GROUP = "workers"
DRILLS = Path(__file__).resolve().parent.parent / "docs" / "drills.md"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    """Its own cluster: the drill kills a primary (the session `redis_cluster` has no
    replicas and is shared)."""
    need_redis_server()
    c = RedisCluster(tmp_path_factory.mktemp("client-cluster"), replicas=1)
    c.start()
    yield c
    c.stop()


@pytest_asyncio.fixture
async def admin(cluster: RedisCluster) -> AsyncIterator[RedisClient]:
    client = await connection.connect(RedisTarget(cluster.url, cluster.admin_username,
                                                  cluster.admin_password))
    assert connection.is_cluster(client)
    yield client
    await connection.close_client(client)


async def provision_queue(admin: RedisClient, cluster: RedisCluster, name: str,
                          **raw: Any) -> Queue:
    return await harness.provision_queue(admin, RedisTarget(cluster.url), NS, name, GROUP,
                                         **raw)


def slot_owners(cluster_client: Any, q: Queue) -> dict[int, str]:
    """Partition -> name of the primary that serves its slot."""
    return {p.partition: cluster_client.get_node_from_key(p.queue_key).name
            for p in q.parts}


async def pending_total(admin: RedisClient, q: Queue) -> int:
    return sum([int((await admin.xpending(p.queue_key, GROUP))["pending"]) for p in q.parts])


def consumer(q: Queue, name: str, **kwargs: Any) -> Consumer:
    kwargs.setdefault("block_ms", 200)
    kwargs.setdefault("promote_interval", 0.05)
    return Consumer(q.consumer, group=GROUP, consumer_name=name, **kwargs)


async def run_consumers(consumers: list[Consumer], handler: Any) -> list[asyncio.Task[None]]:
    return [asyncio.create_task(c.run(handler, concurrency=4, install_signal_handlers=False))
            for c in consumers]


async def stop_all(consumers: list[Consumer], tasks: list[asyncio.Task[None]]) -> None:
    for c in consumers:
        c.stop()
    await asyncio.wait_for(asyncio.gather(*tasks), 20)


# --- configuration ------------------------------------------------------------------------


async def test_secret_says_cluster_and_the_sdk_connects_as_one(admin: RedisClient,
                                                               cluster: RedisCluster) -> None:
    q = await provision_queue(admin, cluster, "cfg", partitions=2)
    assert q.producer.cluster and q.consumer.cluster
    assert q.consumer.role == "consumer" and q.consumer.username == f"aq.{NS}.cfg.worker"
    client = q.consumer.connect()
    try:
        assert isinstance(client, aioredis.RedisCluster)
        assert await client.hget(q.part(1).meta, "partitions") == b"2"
    finally:
        await client.aclose()
    # a standalone Redis: no REDIS_CLUSTER field, a plain client (no round trip spent)
    plain = secret_data(RedisTarget("redis://r:6379"), NS, "cfg", q.spec, Role.CONSUMER,
                        "u", "p")
    assert "REDIS_CLUSTER" not in plain
    cfg = ClientConfig.from_env(plain)
    assert not cfg.cluster
    standalone = cfg.connect()
    assert type(standalone) is aioredis.Redis
    await standalone.aclose()
    assert ClientConfig.from_env({**plain, "REDIS_CLUSTER": "true"}).cluster


# --- Stream queue -------------------------------------------------------------------------


async def test_stream_every_message_handled_once_across_shards(admin: RedisClient,
                                                               cluster: RedisCluster) -> None:
    q = await provision_queue(admin, cluster, "orders", partitions=8)
    owners = slot_owners(admin, q)
    assert len(set(owners.values())) == 3, owners  # every shard holds partitions
    n = 600
    async with Producer(q.producer) as p1, Producer(q.producer) as p2:
        sent = await asyncio.gather(
            p1.send_many([Outgoing({"n": i}, idempotency_key=f"o-{i}") for i in range(0, n, 2)]),
            p2.send_many([Outgoing({"n": i}, key=f"customer-{i}") for i in range(1, n, 2)]))
        # a duplicate (same idempotency key, so the same partition) adds nothing
        again = await p2.send({"n": 0, "again": True}, idempotency_key="o-0")
        assert again == sent[0][0]
    lengths = [await admin.xlen(p.queue_key) for p in q.parts]
    assert sum(lengths) == n and sum(1 for x in lengths if x) == 8
    seen: collections.Counter[int] = collections.Counter()

    async def handle(msg: Message) -> None:
        seen[msg.payload["n"]] += 1

    cs = [consumer(q, f"c{i}") for i in range(3)]
    for c in cs:
        await c.start()
        assert isinstance(c._backend, ClusterStreamBackend)
    tasks = await run_consumers(cs, handle)
    await eventually(lambda: _async(sum(seen.values()) >= n), timeout=20)
    await eventually(lambda: _pending_is(admin, q, 0), timeout=5)
    await stop_all(cs, tasks)
    assert set(seen) == set(range(n)) and max(seen.values()) == 1
    assert sum(seen.values()) == n  # exactly once: nothing redelivered


async def _async(value: Any) -> Any:
    return value


async def _pending_is(admin: RedisClient, q: Queue, n: int) -> bool:
    return await pending_total(admin, q) == n


async def test_stream_nack_retry_and_dead_letter_across_shards(admin: RedisClient,
                                                               cluster: RedisCluster) -> None:
    q = await provision_queue(admin, cluster, "retries", partitions=6, delivery={
        "maxDeliveries": 3, "retry": {"initialDelay": "50ms", "maxDelay": "200ms",
                                      "jitter": False}})
    n = 60  # n % 3: 0 ok, 1 fails once, 2 always fails
    async with Producer(q.producer) as producer:
        await producer.send_many([Outgoing({"n": i}, key=f"k{i}") for i in range(n)])
    attempts: dict[int, list[int]] = collections.defaultdict(list)
    done: set[int] = set()

    async def handle(msg: Message) -> None:
        i = msg.payload["n"]
        attempts[i].append(msg.attempt)
        if i % 3 == 2 or (i % 3 == 1 and msg.attempt == 0):
            raise RuntimeError(f"boom {i}")
        done.add(i)

    cs = [consumer(q, f"r{i}") for i in range(2)]
    tasks = await run_consumers(cs, handle)

    async def dead_letters() -> int:
        return sum([await admin.xlen(p.dead_letter) for p in q.parts])

    await eventually(lambda: _async(len(done) == 2 * n // 3), timeout=20)
    await eventually(lambda: _async_eq(dead_letters(), n // 3), timeout=20)
    await eventually(lambda: _pending_is(admin, q, 0), timeout=5)
    await stop_all(cs, tasks)
    assert done == {i for i in range(n) if i % 3 != 2}
    for i in range(n):
        want = {0: [0], 1: [0, 1], 2: [0, 1, 2]}[i % 3]
        assert attempts[i] == want, (i, attempts[i])  # redelivered after each nack
    letters = [e for p in q.parts for e in await admin.xrange(p.dead_letter)]
    assert sorted(json.loads(f["d"])["n"] for _, f in letters) == list(range(2, n, 3))
    assert all(f["x.error"].startswith("exhausted 3 deliveries") and f["x.group"] == GROUP
               for _, f in letters)
    assert sum([await admin.zcard(p.retry) for p in q.parts]) == 0
    retries = sum([int(await admin.hget(p.stats, "retries") or 0) for p in q.parts])
    assert retries == n // 3 + 2 * n // 3  # one per fails-once, two per always-fails


async def _async_eq(coro: Any, want: Any) -> bool:
    return bool(await coro == want)


async def test_stream_reclaim_after_a_consumer_dies(admin: RedisClient,
                                                    cluster: RedisCluster) -> None:
    q = await provision_queue(admin, cluster, "reclaim", partitions=4)
    async with Producer(q.producer) as producer:
        await producer.send_many([{"n": i} for i in range(8)])
    dead = consumer(q, "dead", batch_size=8, heartbeat=False)
    got = []
    while len(got) < 8:  # handed out, never acked: the process "dies" holding them
        got.append(await asyncio.wait_for(dead.next_message(), 5))
    assert {m.partition for m in got} == {0, 1, 2, 3}
    dead._closed = True  # no release: as after a crash
    if dead._maintenance is not None:
        dead._maintenance.cancel()
    async with consumer(q, "alive") as alive:
        again = []
        while len(again) < 8:
            msg = await asyncio.wait_for(alive.next_message(), 5)
            assert msg.deliveries == 2
            # once(): WATCH/MULTI on the message's partition (one slot), effect included
            mark = q.part(msg.partition).idempotency(f"effect-{msg.id}")
            assert await msg.once("mark", lambda pipe, k=mark: pipe.set(k, "1"))
            assert not await msg.once("mark", lambda pipe, k=mark: pipe.set(k, "2"))
            assert await admin.get(mark) == "1"
            again.append(msg)
            await msg.ack()
        await alive.flush_acks()
    await dead._client.aclose()
    assert await pending_total(admin, q) == 0


# --- List queue ---------------------------------------------------------------------------


async def test_list_queue_across_shards(admin: RedisClient, cluster: RedisCluster) -> None:
    q = await provision_queue(admin, cluster, "tasks", type="List", partitions=4,
                              priorityLevels=2, delivery={
                                  "maxDeliveries": 2,
                                  "retry": {"initialDelay": "50ms", "jitter": False}})
    assert len(set(slot_owners(admin, q).values())) >= 2
    n = 120  # n % 4 == 3 always fails; n % 4 == 1 fails once
    async with Producer(q.producer) as producer:
        await producer.send_many([
            Outgoing({"n": i}, idempotency_key=f"t-{i}" if i % 2 else None,
                     priority=i % 2, key=f"k{i}") for i in range(n)])
        # the idempotent send is a WATCH/MULTI on one slot: a duplicate adds nothing
        assert await producer.send({"n": 1}, idempotency_key="t-1", key="k1")
    depth = sum([await admin.llen(p.priority_key(level)) for p in q.parts
                 for level in (0, 1)])
    assert depth == n
    seen: collections.Counter[int] = collections.Counter()
    done: set[int] = set()

    async def handle(msg: Message) -> None:
        i = msg.payload["n"]
        seen[i] += 1
        if i % 4 == 3 or (i % 4 == 1 and msg.attempt == 0):
            raise RuntimeError("no")
        done.add(i)

    cs = [consumer(q, f"l{i}") for i in range(3)]
    tasks = await run_consumers(cs, handle)

    async def dead_letters() -> int:
        return sum([await admin.xlen(p.dead_letter) for p in q.parts])

    await eventually(lambda: _async(len(done) == 3 * n // 4), timeout=20)
    await eventually(lambda: _async_eq(dead_letters(), n // 4), timeout=20)
    await stop_all(cs, tasks)
    assert done == {i for i in range(n) if i % 4 != 3}
    assert all(seen[i] == {0: 1, 1: 2, 2: 1, 3: 2}[i % 4] for i in range(n)), seen
    for p in q.parts:  # nothing left in flight or waiting
        assert await admin.zcard(p.retry) == 0
        for name in ("l0", "l1", "l2"):
            assert await admin.llen(p.processing(name)) == 0


# --- failover drill -----------------------------------------------------------------------


async def test_failover_drill_primary_killed_under_load(admin: RedisClient,
                                                        cluster: RedisCluster) -> None:
    """SIGKILL a primary while producers and consumers run: its replica is promoted by
    the cluster, the operator's user provisioning runs again on the new primary (users
    are not replicated), and no message a producer saw acknowledged is lost."""
    q = await provision_queue(admin, cluster, "drill", partitions=6)
    owners = slot_owners(admin, q)
    victim = next(node for node in cluster.nodes[:3]
                  if node.port != cluster.nodes[0].port
                  and f"127.0.0.1:{node.port}" in owners.values())
    victim_name = f"127.0.0.1:{victim.port}"
    victim_parts = {p for p, name in owners.items() if name == victim_name}
    load = harness.Traffic()
    cs = [consumer(q, f"f{i}") for i in range(3)]
    tasks = await run_consumers(cs, load.handle)
    producer_task = asyncio.create_task(load.produce(q.producer))
    await eventually(lambda: _async(len(load.seen) >= 300), timeout=15)

    killed_at = time.monotonic()
    victim.kill()
    # The cluster's failure detection (cluster-node-timeout 1000 ms) promotes the replica.
    replica = cluster.nodes[3 + cluster.nodes.index(victim)]
    await eventually(lambda: _async(_role(replica) == "master"), timeout=15, every=0.05)
    promoted_at = time.monotonic()
    # What the operator does when it sees a new run_id: users again on every primary.
    # Right after the promotion some nodes still list the dead primary: the operator's
    # calls fail (RedisUnavailable) and its reconcile is retried, as here.
    async def reassert_users() -> bool:
        try:
            await connection.server_ids(admin)
            for username, (rules, hashes) in q.users.items():
                await users.ensure_user(admin, username, rules, hashes)
        except RedisUnavailable:
            await asyncio.sleep(0.2)
            return False
        return True

    await eventually(reassert_users, timeout=15)
    users_at = time.monotonic()
    # Consumers continue, on the partitions that moved too.
    first_after = await eventually(
        lambda: _async(next((i for i, t in load.handled_at.items()
                             if t > users_at and _partition_of(q, i) in victim_parts), None)),
        timeout=20)
    recovered_at = load.handled_at[first_after]
    await asyncio.sleep(1.0)
    load.stop.set()
    await producer_task
    await eventually(lambda: _async(load.acked <= set(load.seen)), timeout=20)
    await eventually(lambda: _pending_is(admin, q, 0), timeout=15)
    await stop_all(cs, tasks)
    figures = {
        **load.figures(),
        "partitions_moved": sorted(victim_parts),
        "promoted_s": round(promoted_at - killed_at, 2),
        "users_s": round(users_at - killed_at, 2),
        "consuming_again_s": round(recovered_at - killed_at, 2),
    }
    print(f"failover drill: {figures}")
    assert figures["lost"] == 0
    assert sum([await admin.xlen(p.dead_letter) for p in q.parts]) == 0
    assert figures["consuming_again_s"] < 15


def _role(node: Any) -> str:
    try:
        with node.client(socket_timeout=1.0) as c:
            return str(c.info("replication").get("role"))
    except Exception:
        return "unreachable"


def _partition_of(q: Queue, i: int) -> int:
    from agentqueue_client import partition_for
    return partition_for(f"d-{i}", q.spec.partitions)


async def test_cli_tools_read_a_cluster_queue_as_the_observer(admin: RedisClient,
                                                              cluster: RedisCluster) -> None:
    """`agentqueue status` (live figures), `peek` and `dlq ls` with the observer's and
    consumer's Secret data on a cluster: partitions on every shard, pipelines split."""
    from agentqueue.tools import dlq, live
    from agentqueue.tools.cli_entry import client_for
    from agentqueue.tools.peek import peek as peek_messages

    q = await provision_queue(admin, cluster, "clitools", partitions=6,
                              access={"producers": [{"name": "intake"}],
                                      "consumers": [{"name": "worker"}],
                                      "observers": [{"name": "dash"}]})
    assert len(set(slot_owners(admin, q).values())) == 3
    producer = Producer(q.producer)
    try:
        await producer.send_many([Outgoing({"n": i}, key=f"k{i}") for i in range(12)])
    finally:
        await producer.close()
    username = keys.acl_username(NS, q.name, "dash")
    password = users.new_password()
    rules = acl.acl_rules(Role.OBSERVER, NS, q.name, q.spec.type, q.spec.partitions)
    await users.ensure_user(admin, username, rules, [users.sha256_hex(password)])
    env = {"REDIS_URL": cluster.url, "REDIS_USERNAME": username, "REDIS_PASSWORD": password,
           "REDIS_CLUSTER": "1"}
    client = client_for(env, timeout=5)
    try:
        assert isinstance(client, aioredis.RedisCluster)
        fig = await live.read_queue(client, NS, q.name, "Stream", 6, {GROUP: 30_000})
        peeked = await peek_messages(client, NS, q.name, count=20)
    finally:
        await client.aclose()
    assert fig.length == 12 and fig.groups[GROUP].lag == 12 and fig.groups[GROUP].found
    assert len(peeked) == 12
    worker = q.consumer
    client = client_for({"REDIS_URL": cluster.url, "REDIS_USERNAME": worker.username or "",
                         "REDIS_PASSWORD": worker.password or "", "REDIS_CLUSTER": "1"})
    try:
        assert await dlq.dlq_list(client, NS, q.name) == []
    finally:
        await client.aclose()
