"""The ACL matrix on a real redis-server: each generated credential, logged in through
redis-py, may do what its role needs and nothing else."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio as aredis
from redis.exceptions import AuthenticationError, ConnectionError, NoPermissionError

from agentqueue.models.queue import QueueType, Role
from agentqueue.planning.acl import acl_rules
from agentqueue.redisgw import connection, functions, users
from agentqueue.redisgw.connection import RedisClient, RedisTarget
from agentqueue.redisgw.errors import RedisAuthError
from agentqueue_client.keys import PartitionKeys, acl_username

NS, Q = "team-a", "jobs"
MINE = PartitionKeys(NS, Q, 0)
MINE1 = PartitionKeys(NS, Q, 1)
OTHER_QUEUE = PartitionKeys(NS, "jobs2", 0)  # name shares a prefix
OTHER_NS = PartitionKeys("team-b", Q, 0)
GROUP = "g"

Login = Callable[[Role, QueueType], Awaitable[aredis.Redis]]


@pytest.fixture
async def login(redis_client: RedisClient, redis_target: RedisTarget
                ) -> AsyncIterator[Login]:
    """Create the ACL user for (role, type) and return a client logged in as it."""
    await functions.ensure_library(redis_client)
    opened: list[RedisClient] = []

    async def make(role: Role, qtype: QueueType) -> aredis.Redis:
        name = acl_username(NS, Q, f"{role}-{qtype}".lower())
        password = users.new_password()
        rules = acl_rules(role, NS, Q, qtype, 2)
        assert await users.ensure_user(redis_client, name, rules, [users.sha256_hex(password)])
        target = RedisTarget(redis_target.url, name, password)
        client = await connection.connect(target)
        opened.append(client)
        assert isinstance(client, aredis.Redis)
        return client

    yield make
    for c in opened:
        await connection.close_client(c)


async def denied(call: Awaitable[Any]) -> None:
    with pytest.raises(NoPermissionError):
        await call


async def _forbidden_everywhere(c: aredis.Redis) -> None:
    """What no role may ever do."""
    await denied(c.flushall())
    await denied(c.flushdb())
    await denied(c.config_get("*"))
    await denied(c.keys("*"))
    await denied(c.scan())
    await denied(c.acl_list())
    await denied(c.execute_command("ACL", "SETUSER", "evil", "on", "+@all", "~*"))
    await denied(c.function_load(functions.LIBRARY_CODE, replace=True))
    await denied(c.function_flush())
    await denied(c.eval("return 1", 0))
    await denied(c.info())
    await denied(c.client_list())
    await denied(c.delete(MINE.queue_key))
    await denied(c.xadd(OTHER_QUEUE.queue_key, {"d": "x"}))
    await denied(c.xadd(OTHER_NS.queue_key, {"d": "x"}))
    await denied(c.hgetall(OTHER_QUEUE.meta))
    await denied(c.hgetall(OTHER_NS.meta))
    await denied(c.hset(MINE.meta, "maxDeliveries", "1"))
    # the retry-rate counters: only a consumer of the queue increments them
    await denied(c.hincrby(OTHER_QUEUE.stats, "retries", 1))
    await denied(c.hincrby(OTHER_NS.stats, "retries", 1))
    await denied(c.hset(MINE.stats, "retries", "0"))
    await denied(c.delete(MINE.stats))
    assert await c.ping()


async def _seed(admin: RedisClient, qtype: str = "Stream") -> None:
    for p in (MINE, MINE1, OTHER_QUEUE, OTHER_NS):
        await admin.hset(p.meta, mapping={"type": qtype, "partitions": "2"})
    if qtype != "Stream":
        return
    await admin.xadd(MINE.queue_key, {"d": "seed"})
    await admin.xgroup_create(MINE.queue_key, GROUP, id="0")
    await admin.xadd(OTHER_QUEUE.queue_key, {"d": "not yours"})


async def test_stream_producer(login: Login, redis_client: RedisClient) -> None:
    await _seed(redis_client)
    c = await login(Role.PRODUCER, QueueType.STREAM)
    res = await functions.enqueue(c, MINE, {"d": "hi"}, idem_key="k1")
    assert (await functions.enqueue(c, MINE, {"d": "hi"}, idem_key="k1")).id == res.id
    await functions.enqueue(c, MINE1, {"d": "p1"})
    assert await c.xadd(MINE.queue_key, {"d": "direct"})
    assert (await c.hgetall(MINE.meta))["type"] == "Stream"
    assert await c.fcall_ro("aq_version", 0) == functions.LIBRARY_VERSION
    # producers cannot read messages
    await denied(c.xrange(MINE.queue_key))
    await denied(c.xlen(MINE.queue_key))
    await denied(c.xread({MINE.queue_key: "0"}))
    await denied(c.xreadgroup(GROUP, "c", {MINE.queue_key: ">"}))
    await denied(c.xack(MINE.queue_key, GROUP, "0-1"))
    # GET/SET only on idempotency keys, never over the stream or meta
    await denied(c.set(MINE.queue_key, "x"))
    await denied(c.set(MINE.meta, "x"))
    await denied(c.get(MINE.meta))
    await denied(c.xadd(MINE.dead_letter, {"d": "x"}))
    await denied(c.hincrby(MINE.stats, "retries", 1))
    await denied(c.hgetall(MINE.stats))
    with pytest.raises(RedisAuthError):
        await functions.enqueue(c, OTHER_QUEUE, {"d": "x"})
    with pytest.raises(RedisAuthError):
        await functions.nack(c, MINE, GROUP, "0-1", 1, "e")
    with pytest.raises(RedisAuthError):
        await functions.promote(c, MINE, 1)
    await _forbidden_everywhere(c)


async def test_stream_consumer(login: Login, redis_client: RedisClient) -> None:
    await _seed(redis_client)
    c = await login(Role.CONSUMER, QueueType.STREAM)
    await redis_client.xadd(MINE.queue_key, {"d": "two"})
    await redis_client.xadd(MINE.queue_key, {"d": "three"})
    got = await c.xreadgroup(GROUP, "c1", {MINE.queue_key: ">"}, count=3)
    ids = [e[0] for e in got[0][1]]
    assert await c.xack(MINE.queue_key, GROUP, ids[0]) == 1
    assert await functions.nack(c, MINE, GROUP, ids[1], due_ms=1, error="e")
    assert await redis_client.hget(MINE.stats, "retries") == "1"  # counted by aq_nack
    assert await functions.promote(c, MINE, now_ms=2) == 1
    assert await functions.deadletter(c, MINE, GROUP, ids[2], "c1", "bad", 3, 1)
    assert await c.xautoclaim(MINE.queue_key, GROUP, "c2", 0)
    assert (await c.xpending(MINE.queue_key, GROUP))["pending"] == 0
    assert await c.xlen(MINE.dead_letter) == 1
    assert await c.xinfo_groups(MINE.queue_key)
    assert (await c.hgetall(MINE.meta))["partitions"] == "2"
    assert await c.zcard(MINE.retry) == 0
    # not a producer, not an admin of groups
    with pytest.raises(RedisAuthError):
        await functions.enqueue(c, MINE, {"d": "x"})
    await denied(c.xgroup_create(MINE.queue_key, "new", id="0"))
    await denied(c.xgroup_destroy(MINE.queue_key, GROUP))
    await denied(c.xtrim(MINE.queue_key, maxlen=0))
    await denied(c.xdel(MINE.queue_key, ids[0]))
    await denied(c.delete(MINE.idempotency("k")))  # may read/mark, never delete
    await denied(c.xreadgroup(GROUP, "c1", {OTHER_QUEUE.queue_key: ">"}))
    await denied(c.xrange(OTHER_NS.queue_key))
    # the stats hash: increment, nothing else (no other command creates or reads it)
    assert await c.hincrby(MINE1.stats, "retries", 2) == 2
    await denied(c.xadd(MINE.stats, {"d": "x"}))
    await denied(c.zadd(MINE.stats, {"x": 1}))
    await denied(c.hget(MINE.stats, "retries"))
    await denied(c.fcall("aq_nack", 3, MINE.queue_key, MINE.retry, OTHER_QUEUE.stats,
                         GROUP, ids[0], 1, "e"))
    await denied(c.fcall("aq_deadletter", 3, MINE.queue_key, MINE.dead_letter, MINE.stats,
                         GROUP, ids[0], "c1", "e", 1, 1))
    await _forbidden_everywhere(c)


async def test_stream_observer(login: Login, redis_client: RedisClient) -> None:
    await _seed(redis_client)
    await redis_client.zadd(MINE.retry, {"m": 1})
    await redis_client.hset(MINE.stats, "retries", 4)
    c = await login(Role.OBSERVER, QueueType.STREAM)
    assert await c.xlen(MINE.queue_key) == 1
    assert await c.xrange(MINE.queue_key)
    assert await c.xrevrange(MINE.queue_key)
    assert await c.xinfo_groups(MINE.queue_key)
    assert await c.xinfo_stream(MINE.queue_key)
    assert await c.xinfo_consumers(MINE.queue_key, GROUP) == []
    assert (await c.xpending(MINE.queue_key, GROUP))["pending"] == 0
    assert await c.zcard(MINE.retry) == 1
    assert await c.hgetall(MINE.meta)
    assert await c.hgetall(MINE.stats) == {"retries": "4"}
    # read-only
    await denied(c.hincrby(MINE.stats, "retries", 1))
    await denied(c.xadd(MINE.queue_key, {"d": "x"}))
    await denied(c.xreadgroup(GROUP, "c", {MINE.queue_key: ">"}))
    await denied(c.xack(MINE.queue_key, GROUP, "0-1"))
    await denied(c.zadd(MINE.retry, {"x": 1}))
    await denied(c.fcall("aq_enqueue", 1, MINE.queue_key, 1, "d", "x"))
    await denied(c.xlen(OTHER_QUEUE.queue_key))
    await denied(c.xlen(OTHER_NS.queue_key))
    await _forbidden_everywhere(c)


async def test_list_roles(login: Login, redis_client: RedisClient) -> None:
    await _seed(redis_client, "List")
    producer = await login(Role.PRODUCER, QueueType.LIST)
    consumer = await login(Role.CONSUMER, QueueType.LIST)
    observer = await login(Role.OBSERVER, QueueType.LIST)
    assert await producer.lpush(MINE.queue_key, "a", "b") == 2
    assert await producer.rpush(MINE.priority_key(1), "urgent-ish") == 1
    assert await producer.set(MINE.idempotency("k"), "1", nx=True, px=1000)
    await denied(producer.lrange(MINE.queue_key, 0, -1))
    await denied(producer.rpop(MINE.queue_key))
    await denied(producer.llen(MINE.queue_key))
    await denied(producer.set(MINE.queue_key, "x"))
    await denied(producer.lpush(OTHER_QUEUE.queue_key, "x"))
    await denied(producer.hincrby(MINE.stats, "deliveries", 1))
    await denied(producer.lpush(MINE.stats, "x"))

    proc = MINE.processing("c1")
    assert await consumer.lmove(MINE.queue_key, proc, "RIGHT", "LEFT") == "a"
    assert await consumer.lrem(proc, 1, "a") == 1
    assert await consumer.lmove(MINE.priority_key(1), proc) == "urgent-ish"
    assert await consumer.xadd(MINE.dead_letter, {"d": "urgent-ish", "x.error": "e"})
    assert await consumer.zadd(MINE.retry, {"{}": 5}) == 1
    await denied(consumer.lpush(OTHER_QUEUE.queue_key, "x"))
    await denied(consumer.lmove(OTHER_QUEUE.queue_key, proc))
    await denied(consumer.delete(proc))
    assert await consumer.hincrby(MINE.stats, "deliveries", 2) == 2
    assert await consumer.hincrby(MINE.stats, "retries", 1) == 1
    await denied(consumer.lpush(MINE.stats, "x"))
    await denied(consumer.zadd(MINE.stats, {"x": 1}))
    await denied(consumer.hget(MINE.stats, "retries"))

    assert await observer.llen(MINE.queue_key) == 1
    assert await observer.hgetall(MINE.stats) == {"deliveries": "2", "retries": "1"}
    await denied(observer.hincrby(MINE.stats, "retries", 1))
    assert await observer.lrange(proc, 0, -1) == ["urgent-ish"]
    assert await observer.xlen(MINE.dead_letter) == 1
    await denied(observer.lpop(MINE.queue_key))
    await denied(observer.lpush(MINE.queue_key, "x"))
    for c in (producer, consumer, observer):
        await _forbidden_everywhere(c)


async def test_pubsub_roles(login: Login, redis_client: RedisClient) -> None:
    await _seed(redis_client, "PubSub")
    channel = MINE.channel
    producer = await login(Role.PRODUCER, QueueType.PUBSUB)
    consumer = await login(Role.CONSUMER, QueueType.PUBSUB)
    observer = await login(Role.OBSERVER, QueueType.PUBSUB)
    pubsub = consumer.pubsub()
    await pubsub.subscribe(channel)
    assert (await pubsub.get_message(timeout=1.0))["type"] == "subscribe"
    assert await producer.publish(channel, "hello") == 1
    msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=2.0)
    assert msg and msg["data"] == "hello"
    await pubsub.aclose()
    assert await observer.pubsub_numsub(channel) == [(channel, 0)]
    assert (await producer.hgetall(MINE.meta))["type"] == "PubSub"
    await denied(producer.publish(OTHER_QUEUE.channel, "x"))
    await denied(consumer.publish(channel, "x"))
    await denied(observer.publish(channel, "x"))
    await denied(producer.xadd(MINE.queue_key, {"d": "x"}))
    other = consumer.pubsub()
    with pytest.raises(NoPermissionError):
        await other.subscribe(OTHER_NS.channel)
        await other.get_message(timeout=1.0)
    await other.aclose()
    for c in (producer, consumer, observer):
        await _forbidden_everywhere(c)


@pytest.mark.parametrize("qtype", list(QueueType))
@pytest.mark.parametrize("role", list(Role))
async def test_no_drift_after_apply_and_repair(redis_client: RedisClient, role: Role,
                                               qtype: QueueType) -> None:
    name = f"aq.{NS}.{Q}.x"
    rules = acl_rules(role, NS, Q, qtype, 1)
    hashes = [users.sha256_hex("pw1")]
    assert await users.ensure_user(redis_client, name, rules, hashes) is True
    assert await users.ensure_user(redis_client, name, rules, hashes) is False
    await redis_client.execute_command("ACL", "SETUSER", name, "+flushall")
    assert await users.ensure_user(redis_client, name, rules, hashes) is True
    await redis_client.execute_command("ACL", "SETUSER", name, "~*")
    assert await users.ensure_user(redis_client, name, rules, hashes) is True
    await redis_client.execute_command("ACL", "SETUSER", name, "off")
    assert await users.ensure_user(redis_client, name, rules, hashes) is True
    assert await users.ensure_user(redis_client, name, rules, [*hashes, "a" * 64]) is True
    assert await users.password_hashes(redis_client, name) == sorted([*hashes, "a" * 64])


async def test_password_rotation_with_grace(redis_client: RedisClient,
                                            redis_target: RedisTarget) -> None:
    name = acl_username(NS, Q, "rotating")
    rules = acl_rules(Role.OBSERVER, NS, Q, QueueType.STREAM, 1)
    old, new = users.new_password(), users.new_password()
    assert len(old) >= 43 and old != new
    await users.ensure_user(redis_client, name, rules, [users.sha256_hex(old)])

    async def can_login(password: str) -> bool:
        try:
            c = await connection.connect(RedisTarget(redis_target.url, name, password))
        except RedisAuthError:
            return False
        await connection.close_client(c)
        return True

    assert await can_login(old) and not await can_login(new)
    await users.ensure_user(redis_client, name, rules,
                            [users.sha256_hex(new), users.sha256_hex(old)])
    assert await can_login(old) and await can_login(new)  # grace period
    await users.ensure_user(redis_client, name, rules, [users.sha256_hex(new)])
    assert await can_login(new) and not await can_login(old)


async def test_delete_user_disconnects(redis_client: RedisClient,
                                       redis_target: RedisTarget) -> None:
    name = acl_username(NS, Q, "gone")
    pw = users.new_password()
    await users.ensure_user(redis_client, name, acl_rules(Role.OBSERVER, NS, Q, "Stream", 1),
                            [users.sha256_hex(pw)])
    c = aredis.Redis(host=redis_target.host, port=redis_target.port, username=name,
                     password=pw, retry=None)
    assert await c.ping()
    assert name in await users.list_usernames(redis_client, f"aq.{NS}.")
    assert await users.delete_user(redis_client, name) is True
    assert await users.delete_user(redis_client, name) is False
    with pytest.raises((ConnectionError, AuthenticationError)):
        await c.ping()
    await c.aclose()
    assert await users.password_hashes(redis_client, name) == []


async def test_users_recreated_after_restart(redis_server_factory: Any) -> None:
    server = redis_server_factory()
    client = await connection.connect(RedisTarget.from_secret_data(server.secret_data()))
    try:
        name, pw = acl_username(NS, Q, "p"), users.new_password()
        rules = acl_rules(Role.PRODUCER, NS, Q, "Stream", 1)
        before = await connection.server_ids(client)
        assert await users.ensure_user(client, name, rules, [users.sha256_hex(pw)])
        await functions.ensure_library(client)
        server.restart()  # no persistence: users and functions are gone
        assert await connection.server_ids(client) != before
        assert await users.password_hashes(client, name) == []
        assert set((await functions.library_versions(client)).values()) == {None}
        assert await users.ensure_user(client, name, rules, [users.sha256_hex(pw)])
        assert await functions.ensure_library(client)
        agent = await connection.connect(RedisTarget(server.url, name, pw))
        assert (await functions.enqueue(agent, MINE, {"d": "x"})).id
        await connection.close_client(agent)
    finally:
        await connection.close_client(client)


async def test_cluster_users_on_every_primary(redis_cluster_client: RedisClient,
                                              redis_cluster: Any) -> None:
    client = redis_cluster_client
    await functions.ensure_library(client)
    name, pw = acl_username(NS, Q, "c"), users.new_password()
    rules = acl_rules(Role.CONSUMER, NS, Q, "Stream", 8)
    assert await users.ensure_user(client, name, rules, [users.sha256_hex(pw)])
    assert await users.ensure_user(client, name, rules, [users.sha256_hex(pw)]) is False
    nodes = await connection.primaries(client)
    assert len(nodes) == 3
    for node in nodes:
        assert await users.get_user(node, name) is not None
    # an agent logged in with a role user drives a cluster client
    producer_name, ppw = acl_username(NS, Q, "p"), users.new_password()
    await users.ensure_user(client, producer_name, acl_rules(Role.PRODUCER, NS, Q, "Stream", 8),
                            [users.sha256_hex(ppw)])
    agent = await connection.connect(RedisTarget(redis_cluster.url, producer_name, ppw))
    assert connection.is_cluster(agent)
    for p in range(8):
        await functions.enqueue(agent, PartitionKeys(NS, Q, p), {"d": str(p)}, idem_key="i")
    await connection.close_client(agent)
    worker = await connection.connect(RedisTarget(redis_cluster.url, name, pw))
    total = 0
    for p in range(8):
        keys = PartitionKeys(NS, Q, p)
        await client.xgroup_create(keys.queue_key, GROUP, id="0")
        got = await worker.xreadgroup(GROUP, "w", {keys.queue_key: ">"}, count=10)
        entry = got[0][1][0][0]
        assert await functions.deadletter(worker, keys, GROUP, entry, "w", "e", 1, 1)
        total += await worker.xlen(keys.dead_letter)
    assert total == 8
    await connection.close_client(worker)
    assert await users.delete_user(client, name)
    for node in nodes:
        assert await users.get_user(node, name) is None


@pytest.mark.parametrize("qtype", [QueueType.STREAM, QueueType.LIST])
async def test_sdk_nacks_under_an_older_operators_rules(redis_client: RedisClient,
                                                        redis_target: RedisTarget,
                                                        qtype: QueueType) -> None:
    """Users defined before the stats key existed (an operator older than the SDK): the
    consumer's nack gets NOPERM for the counters, retries without them, and works."""
    from agentqueue_client import ClientConfig, Consumer, Producer

    from .agents.harness import provision

    q = f"old-{qtype}".lower()
    rules = [r for r in acl_rules(Role.CONSUMER, NS, q, qtype, 1) if ":stats" not in r]
    name, password = acl_username(NS, q, "worker"), users.new_password()
    await users.ensure_user(redis_client, name, rules, [users.sha256_hex(password)])
    admin_cfg = ClientConfig(url=redis_target.url, namespace=NS, queue=q,
                             username=redis_target.username, password=redis_target.password,
                             queue_type=str(qtype))
    await provision(redis_client, admin_cfg, group=GROUP, retry_initial_ms=10)
    async with Producer(admin_cfg) as producer:
        await producer.send({"n": 1})
    cfg = ClientConfig(url=redis_target.url, namespace=NS, queue=q, username=name,
                       password=password, queue_type=str(qtype))
    async with Consumer(cfg, group=GROUP, consumer_name="c1", block_ms=100,
                        promote_interval=0.02) as consumer:
        first = await consumer.next_message()
        assert first is not None
        await first.nack("again")
        again = await consumer.next_message()
        assert again is not None and again.attempt == 1
        await again.ack()
    assert await redis_client.exists(PartitionKeys(NS, q, 0).stats) == 0


async def test_a_burst_of_user_checks_waits_for_connections_and_leaves_no_scratch_user(
        redis_client: RedisClient) -> None:
    """300 users checked at once, as after an operator restart with hundreds of objects:
    beyond the pool's 100 connections a command waits for a free one (redis-py's own
    pool failed it at once with "Too many connections", reported as an unreachable
    Redis); the scratch users that show how the server spells the rules never outlive
    their MULTI/EXEC (the 200-queue kill drill found them orphaned)."""
    assert isinstance(redis_client, aredis.Redis)
    assert redis_client.connection_pool.max_connections == connection.MAX_CONNECTIONS == 100
    users._references.clear()  # every call reads the server's spelling afresh

    async def one(i: int) -> bool:
        rules = acl_rules(Role.CONSUMER, NS, f"burst{i}", QueueType.STREAM, 1)
        return await users.ensure_user(redis_client, acl_username(NS, f"burst{i}", "c"),
                                       rules, [users.sha256_hex(f"pw{i}")])

    assert all(await asyncio.gather(*(one(i) for i in range(300))))  # created
    users._references.clear()
    assert not any(await asyncio.gather(*(one(i) for i in range(300))))  # no drift
    names = await redis_client.acl_users()
    assert not [n for n in names if n.startswith(users.REFERENCE_PREFIX)]
    assert sum(1 for n in names if n.startswith(f"aq.{NS}.burst")) == 300


async def test_scratch_users_an_older_operator_left_are_swept(redis_client: RedisClient
                                                              ) -> None:
    leftover = users.REFERENCE_PREFIX + "0123456789ab"
    await redis_client.execute_command("ACL", "SETUSER", leftover, "off", "resetpass")
    users._references.clear()
    users._swept.clear()
    rules = acl_rules(Role.PRODUCER, NS, Q, QueueType.STREAM, 1)
    await users.ensure_user(redis_client, acl_username(NS, Q, "p"), rules,
                            [users.sha256_hex("pw")])
    await users.ensure_user(redis_client, acl_username(NS, Q, "p"), rules,
                            [users.sha256_hex("pw")])  # reads a reference: sweeps first
    assert leftover not in await redis_client.acl_users()
