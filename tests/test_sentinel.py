"""Redis Sentinel (issue 16, item 6): an admin Secret naming sentinels and a master name.

1. Pure: the Secret's keys (`sentinels`, `sentinelMaster`, `sentinelUsername`,
   `sentinelPassword`), their refusals, the agents' Secret data, the SDK's config.
2. Against a real primary, 2 replicas and 3 sentinels on loopback (`RedisSentinel`): the
   operator's address policy on every sentinel and on the primary they name, before any
   connection to it; a queue provisioned with the operator's code through Sentinel and
   driven by the SDK with the role users' Secret data.
3. The failover drill (docs/drills.md section 11): SIGKILL the primary under traffic, the
   sentinels promote a replica, the operator's run_id watch sees it and re-asserts the
   users there, consumers continue, no acknowledged message is lost.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import pytest_asyncio
import redis.asyncio as aioredis
from redis.asyncio.sentinel import SentinelConnectionPool

from agentqueue import reasons
from agentqueue.config import OperatorConfig
from agentqueue.metrics import Metrics
from agentqueue.models import AgentQueueSpec, Role
from agentqueue.planning import queue_plan
from agentqueue.planning.address_policy import AddressPolicy, Endpoint
from agentqueue.pollhub import PollHub
from agentqueue.redisgw import connection, provision, users
from agentqueue.redisgw.connection import (
    RedisAddressRefused,
    RedisClient,
    RedisPool,
    RedisTarget,
    parse_sentinels,
)
from agentqueue.redisgw.errors import RedisUnavailable
from agentqueue.runtime import RestartWatcher, Runtime, policy_refusal
from agentqueue.services.errors import SpecProblem
from agentqueue.services.queues import secret_data
from agentqueue_client import ClientConfig, Consumer, Message, Producer, keys
from agentqueue_client.config import sentinel_client
from agentqueue_client.errors import ConfigError, is_transient, redis_errors
from agentqueue_devtools.redisserver import RedisSentinel

from . import queue_harness as harness
from .agents.aio import eventually
from .queue_harness import Queue
from .redis_fixtures import need_redis_server

NS = "team-s"
GROUP = "workers"
SECRET = "s3nt1nel-pa55"
MASTER = "aqmaster"


# --- 1. pure: the Secret's keys ----------------------------------------------------------

def test_secret_with_sentinels() -> None:
    t = RedisTarget.from_secret_data({
        "sentinels": b" 10.0.0.1:26379, sentinel-b.redis:26380 ,[fd00::1]:26381\n",
        "sentinelMaster": b"aqmaster\n", "username": b"op", "password": SECRET.encode(),
        "sentinelUsername": b"watcher", "sentinelPassword": (SECRET + "2").encode()})
    assert t.sentinels == (("10.0.0.1", 26379), ("sentinel-b.redis", 26380),
                           ("fd00::1", 26381))
    assert (t.sentinel_master, t.username, t.password) == ("aqmaster", "op", SECRET)
    assert (t.sentinel_username, t.sentinel_password) == ("watcher", SECRET + "2")
    assert t.sentinel_list() == "10.0.0.1:26379,sentinel-b.redis:26380,[fd00::1]:26381"
    assert t.display == f"sentinel://{t.sentinel_list()}/aqmaster"
    assert not t.tls and t.db == 0
    for shown in (repr(t), t.display, t.key):
        assert SECRET not in shown
    # anything that changes the connection changes the cache key
    other = RedisTarget.from_secret_data({"sentinels": b"10.0.0.1:26379",
                                          "sentinelMaster": b"aqmaster"})
    assert len({t.key, other.key, RedisTarget.from_secret_data(
        {"sentinels": b"10.0.0.1:26379", "sentinelMaster": b"other"}).key}) == 3


def test_secret_url_gives_scheme_database_and_credentials_only() -> None:
    t = RedisTarget.from_secret_data({"sentinels": b"10.0.0.1:26379",
                                      "sentinelMaster": b"m",
                                      "url": f"rediss://op:{SECRET}@ignored.example:1/3"})
    assert (t.tls, t.db, t.username, t.password) == (True, 3, "op", SECRET)
    assert t.url_without_credentials() == "rediss://10.0.0.1:26379/3"
    assert "ignored" not in t.display and "ignored" not in t.url


@pytest.mark.parametrize("data, match", [
    ({"sentinels": b"10.0.0.1:26379"}, "sentinelMaster"),
    ({"sentinelMaster": b"m"}, "sentinels"),
    ({"sentinels": b"10.0.0.1:26379", "sentinelMaster": b"bad name"}, "sentinelMaster"),
    ({"sentinels": b"10.0.0.1:26379", "sentinelMaster": b"m,n"}, "sentinelMaster"),
    ({"sentinelPassword": b"x", "url": b"redis://r:6379"}, "sentinels"),
    ({"sentinels": b" , ", "sentinelMaster": b"m"}, "empty"),
    ({"sentinels": b"10.0.0.1:26379", "sentinelMaster": b"m", "url": b"http://x"}, "redis://"),
])
def test_invalid_sentinel_combinations(data: dict[str, bytes], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        RedisTarget.from_secret_data(data)


@pytest.mark.parametrize("item", [
    "10.0.0.1", "10.0.0.1:", ":26379", "10.0.0.1:0", "10.0.0.1:65536", "10.0.0.1:port",
    "fd00::1:26379", "[fd00::1]", "[fd00::1]26379", "[not-v6]:26379", "u@host:26379",
    "host:26379/0", "host :26379", "host:+1", "[[::1]]:1", "host]:1",
])
def test_malformed_sentinel_addresses(item: str) -> None:
    with pytest.raises(ValueError, match="is not host:port"):
        parse_sentinels(f"10.0.0.9:26379,{item}")


def test_sentinel_list_bounds_and_duplicates() -> None:
    assert parse_sentinels("A.example:1,a.example:1,b:2") == (("a.example", 1), ("b", 2))
    assert parse_sentinels(",".join(f"h{i}:1" for i in range(16)))
    with pytest.raises(ValueError, match="at most 16"):
        parse_sentinels(",".join(f"h{i}:1" for i in range(17)))


def _spec() -> AgentQueueSpec:
    return AgentQueueSpec.model_validate({"access": {"consumers": [{"name": "worker"}]}})


def test_agents_secret_and_sdk_config() -> None:
    target = RedisTarget.from_secret_data({"sentinels": b"10.0.0.1:26379,[fd00::1]:26380",
                                           "sentinelMaster": b"aqmaster",
                                           "sentinelPassword": SECRET.encode()})
    data = secret_data(target, NS, "q", _spec(), Role.CONSUMER, "aq.team-s.q.worker", "pw")
    assert data["REDIS_SENTINELS"] == "10.0.0.1:26379,[fd00::1]:26380"
    assert data["REDIS_SENTINEL_MASTER"] == "aqmaster"
    assert data["REDIS_URL"] == "redis://10.0.0.1:26379"
    assert SECRET not in str(data)  # the operator's sentinel credentials stay with it
    plain = secret_data(RedisTarget("redis://r:6379"), NS, "q", _spec(), Role.CONSUMER,
                        "u", "pw")
    assert "REDIS_SENTINELS" not in plain and "REDIS_SENTINEL_MASTER" not in plain
    config = ClientConfig.from_env(data)
    assert config.sentinels == ("10.0.0.1:26379", "[fd00::1]:26380")
    assert config.sentinel_master == "aqmaster"
    assert "pw" not in repr(config)
    client = config.connect()  # no I/O yet
    try:
        pool = client.connection_pool
        assert isinstance(pool, SentinelConnectionPool) and pool.service_name == "aqmaster"
        hosts = [s.connection_pool.connection_kwargs["host"]
                 for s in pool.sentinel_manager.sentinels]
        assert hosts == ["10.0.0.1", "fd00::1"]
        assert pool.connection_kwargs["username"] == "aq.team-s.q.worker"
    finally:
        asyncio.run(client.aclose())


@pytest.mark.parametrize("env, match", [
    ({"REDIS_SENTINELS": "h:1"}, "go together"),
    ({"REDIS_SENTINEL_MASTER": "m"}, "go together"),
    ({"REDIS_SENTINELS": "h", "REDIS_SENTINEL_MASTER": "m"}, "host:port"),
    ({"REDIS_SENTINELS": "h:1", "REDIS_SENTINEL_MASTER": "m", "REDIS_CLUSTER": "1"},
     "no Redis Cluster"),
])
def test_sdk_config_refuses_bad_sentinel_env(env: dict[str, str], match: str) -> None:
    base = {"REDIS_URL": "redis://h:1", "AQ_NAMESPACE": NS, "AQ_QUEUE": "q"}
    with pytest.raises(ConfigError, match=match):
        ClientConfig.from_env({**base, **env})


def test_sdk_treats_no_primary_as_transient() -> None:
    """While the sentinels agree on no primary (failover in progress) redis-py raises
    MasterNotFoundError, a ConnectionError: the SDK's loops retry it."""
    from redis.asyncio.sentinel import MasterNotFoundError
    assert is_transient(MasterNotFoundError("No master found for 'aqmaster'"))


# --- the address policy on sentinels (Runtime.address_refusal / target_for) --------------

class _Kube:
    def __init__(self, data: dict[str, bytes] | None) -> None:
        self.data = data

    async def read_secret(self, namespace: str, name: str) -> dict[str, bytes] | None:
        return self.data


def _runtime(policy: AddressPolicy, data: dict[str, bytes] | None = None) -> Runtime:
    import functools
    pool = RedisPool(address_check=functools.partial(policy_refusal, policy))

    async def no_poll(client: Any, requests: list[Any]) -> list[Any]:
        return []

    return Runtime(config=OperatorConfig(address_policy=policy), kube=cast(Any, _Kube(data)),
                   redis=pool, watcher=RestartWatcher(pool, 1.0), metrics=Metrics(),
                   hub=PollHub(no_poll))


@pytest.mark.parametrize("sentinels, policy, why", [
    ("169.254.169.254:26379,10.0.0.1:26379", AddressPolicy(),
     "sentinel 169.254.169.254:26379: Redis address refused by the operator's address "
     "policy: 169.254.169.254 is in 169.254.0.0/16"),
    ("a.redis.svc:26379,evil.example:26379",
     AddressPolicy.build(allow=["*.redis.svc"], deny_defaults=False),
     "sentinel evil.example:26379: Redis address refused by the operator's address "
     "policy: evil.example is not in its allow-list (*.redis.svc)"),
    ("10.0.0.1:26379,10.9.0.1:26379", AddressPolicy.build(allow=["10.0.0.0/16"]),
     "sentinel 10.9.0.1:26379: Redis address refused by the operator's address policy: "
     "10.9.0.1 is not in its allow-list (10.0.0.0/16)"),
    ("10.0.0.1:26379,10.0.0.2:443", AddressPolicy(api_endpoints=(Endpoint("10.0.0.2", 443),)),
     "sentinel 10.0.0.2:443: Redis address refused by the operator's address policy: "
     "10.0.0.2:443 is the cluster's API server"),
])
async def test_every_sentinel_is_checked_before_any_connection(
        sentinels: str, policy: AddressPolicy, why: str) -> None:
    """Refused before a connection is opened (these addresses would not answer)."""
    data = {"sentinels": sentinels.encode(), "sentinelMaster": b"m"}
    rt = _runtime(policy, data)
    with pytest.raises(SpecProblem) as err:
        await rt.target_for(NS, "redis-admin")
    assert err.value.reason == reasons.REDIS_ADDRESS_REFUSED
    assert err.value.message == f"Secret 'redis-admin': {why}"
    assert len(rt.redis) == 0  # no client was made


@pytest.mark.parametrize("data, match", [
    ({"sentinels": b"10.0.0.1:26379"}, "sentinelMaster"),
    ({"sentinels": b"10.0.0.1", "sentinelMaster": b"m"}, "is not host:port"),
    ({"username": b"op"}, "no key 'url' .*sentinels and sentinelMaster"),
])
async def test_a_malformed_sentinel_secret_is_reported_like_a_bad_url(
        data: dict[str, bytes], match: str) -> None:
    rt = _runtime(AddressPolicy(), data)
    with pytest.raises(SpecProblem, match=match) as err:
        await rt.target_for(NS, "redis-admin")
    assert err.value.reason == reasons.REDIS_SECRET_INVALID


# --- 2. real sentinels -------------------------------------------------------------------

@pytest.fixture(scope="module")
def sentinel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisSentinel]:
    """Shared by the tests that kill nothing (the drill has its own)."""
    need_redis_server()
    s = RedisSentinel(tmp_path_factory.mktemp("sentinel"), master_name=MASTER)
    s.start()
    yield s
    s.stop()


@pytest_asyncio.fixture
async def admin(sentinel: RedisSentinel) -> AsyncIterator[RedisClient]:
    client = await connection.connect(RedisTarget.from_secret_data(sentinel.secret_data()))
    yield client
    await connection.close_client(client)


async def test_the_primary_the_sentinels_name_is_checked_before_connecting(
        sentinel: RedisSentinel) -> None:
    """The sentinels are allowed; the primary they name is the cluster's API endpoint
    (the only port-specific rule): refused before the operator connects to it."""
    host, port = sentinel.primary_address()
    rt = _runtime(AddressPolicy(api_endpoints=(Endpoint(host, port),)), sentinel.secret_data())
    def connections() -> int:
        with sentinel.primary().client() as c:
            return int(c.info("stats")["total_connections_received"])

    before = connections()
    with pytest.raises(SpecProblem) as err:
        await rt.target_for(NS, "redis-admin")
    assert err.value.reason == reasons.REDIS_ADDRESS_REFUSED
    assert err.value.message == (
        f"Secret 'redis-admin': the primary {host}:{port} the sentinels name for "
        f"'{MASTER}': Redis address refused by the operator's address policy: "
        f"{host}:{port} is the cluster's API server")
    assert connections() == before + 1  # our own INFO; the operator never connected
    # a client made before (a failover to a refused primary): refused at its connection
    target = RedisTarget.from_secret_data(sentinel.secret_data())
    with pytest.raises(RedisAddressRefused, match="cluster's API server"):
        await rt.redis.get(target)
    await rt.redis.close_all()
    # allowed: a target, and a client of the primary
    ok = _runtime(AddressPolicy.build(allow=["127.0.0.0/8"]), sentinel.secret_data())
    target = await ok.target_for(NS, "redis-admin")
    client = await ok.redis.get(target)
    assert connection.node_name(cast(aioredis.Redis, client)) == f"{MASTER}@{host}:{port}"
    assert await connection.sentinel_primary(client) == (host, port)
    ids = await connection.server_ids(client)
    assert list(ids) == [f"{MASTER}@{host}:{port}"]
    await ok.redis.close_all()


async def provision_queue(admin: RedisClient, target: RedisTarget, name: str,
                          **raw: Any) -> Queue:
    """What the operator does for an AgentQueue and a ConsumerGroup, through the
    Sentinel-managed admin client."""
    return await harness.provision_queue(admin, target, NS, name, GROUP, **raw)


def consumer(q: Queue, name: str) -> Consumer:
    return Consumer(q.consumer, group=GROUP, consumer_name=name, block_ms=200,
                    promote_interval=0.05)


async def _async(value: Any) -> Any:
    return value


async def test_queue_through_sentinel(admin: RedisClient, sentinel: RedisSentinel) -> None:
    """The operator provisions through Sentinel; the agents' Secret data says
    REDIS_SENTINELS and the SDK's producer and consumers work with it. What replicates
    (keys, groups, the Functions library) is on every replica; ACL users are not."""
    target = RedisTarget.from_secret_data(sentinel.secret_data())
    q = await provision_queue(admin, target, "plain", partitions=2)
    assert q.consumer.sentinels and q.consumer.sentinel_master == MASTER
    handled: list[int] = []

    async def handle(msg: Message) -> None:
        handled.append(msg.payload["n"])

    async with Producer(q.producer) as producer:
        await producer.send_many([{"n": i} for i in range(50)])
    cs = [consumer(q, f"c{i}") for i in range(2)]
    tasks = [asyncio.create_task(c.run(handle, concurrency=4, install_signal_handlers=False))
             for c in cs]
    await eventually(lambda: _async(len(handled) >= 50), timeout=15)
    for c in cs:
        c.stop()
    await asyncio.gather(*tasks)
    assert sorted(handled) == list(range(50))
    primary = sentinel.primary()
    replicas = [n for n in sentinel.nodes if n is not primary]
    for node in replicas:
        with node.client() as c:
            await eventually(lambda c=c: _async(c.exists(q.parts[1].queue_key)), timeout=5)
            assert c.function_list(library="agentqueue")
            assert c.xinfo_groups(q.parts[0].queue_key)[0]["name"] == GROUP
            assert not c.acl_getuser(keys.acl_username(NS, "plain", "worker"))
    with primary.client() as c:
        assert c.acl_getuser(keys.acl_username(NS, "plain", "worker"))
    # the CLI tools' client follows the sentinels too
    from agentqueue.tools.cli_entry import client_for
    from agentqueue.tools.peek import peek as peek_messages
    env = {"REDIS_URL": q.consumer.url, "REDIS_USERNAME": q.consumer.username or "",
           "REDIS_PASSWORD": q.consumer.password or "",
           "REDIS_SENTINELS": ",".join(q.consumer.sentinels),
           "REDIS_SENTINEL_MASTER": MASTER}
    client = client_for(env, timeout=5)
    try:
        assert isinstance(client.connection_pool, SentinelConnectionPool)
        assert len(await peek_messages(client, NS, "plain", count=5)) == 5
    finally:
        await client.aclose()
    direct = sentinel_client(sentinel.sentinel_addresses.split(","), MASTER,
                             username=sentinel.admin_username,
                             password=sentinel.admin_password)
    try:
        assert (await direct.info("replication"))["role"] == "master"
    finally:
        await direct.aclose()


# --- 3. the failover drill ---------------------------------------------------------------



async def test_failover_drill_primary_killed_under_traffic(tmp_path: Path) -> None:
    """SIGKILL the primary while an SDK producer and three consumers run. The sentinels
    promote a replica; the operator's run_id watch (RestartWatcher, through the same
    Sentinel-managed client) notices the new primary and the operator's drift repair
    re-asserts the queue plan and the ACL users there (users are not replicated);
    consumers continue without a restart; no acknowledged message is lost."""
    need_redis_server()
    s = RedisSentinel(tmp_path / "drill", master_name=MASTER)
    s.start()
    pool = RedisPool()
    watcher = RestartWatcher(pool, 0.2)
    try:
        target = RedisTarget.from_secret_data(s.secret_data())
        admin = await pool.get(target)
        q = await provision_queue(admin, target, "drill", partitions=4)
        await _drill(s, pool, watcher, target, admin, q)
    finally:
        await watcher.stop()
        await pool.close_all()
        s.stop()


async def _drill(s: RedisSentinel, pool: RedisPool, watcher: RestartWatcher,
                 target: RedisTarget, admin: RedisClient, q: Queue) -> None:
    load = harness.Traffic()
    reasserted: list[float] = []

    async def keeper() -> None:
        """The queue keeper's reaction to a new run_id (handlers/queues.keeper →
        reconcile_queue with drift=True): the queue plan (library, keys, metadata) and
        every user from the password hashes it last saw. A failed attempt is retried, as
        the keeper's next reconcile would be."""
        event = watcher.watch(target)
        while True:
            await event.wait()
            event = watcher.watch(target)
            while True:
                try:
                    observed = await provision.observe_queue(admin, NS, q.name, q.spec)
                    await provision.apply(admin, queue_plan.plan_queue(
                        q.spec, NS, q.name, observed, generation=1))
                    for username, (rules, hashes) in q.users.items():
                        await users.ensure_user(admin, username, rules, hashes)
                except RedisUnavailable:
                    await asyncio.sleep(0.2)
                    continue
                reasserted.append(time.monotonic())
                break

    watcher.start()
    keeper_task = asyncio.create_task(keeper())
    await eventually(lambda: _async(watcher._known), timeout=5)  # run_ids known
    cs = [consumer(q, f"f{i}") for i in range(3)]
    tasks = [asyncio.create_task(c.run(load.handle, concurrency=4, install_signal_handlers=False))
             for c in cs]
    producer_task = asyncio.create_task(load.produce(q.producer))
    await eventually(lambda: _async(len(load.seen) >= 300), timeout=15)

    old = s.primary()
    killed_at = time.monotonic()
    old.kill()
    await eventually(lambda: _async(_promoted(s, old)), timeout=30, every=0.05)
    promoted_at = time.monotonic()
    new = s.primary()
    worker = keys.acl_username(NS, q.name, "worker")

    def users_present() -> bool:
        with new.client(socket_timeout=1.0) as c:
            return all(c.acl_getuser(u) for u in q.users)

    await eventually(lambda: _async(users_present()), timeout=20, every=0.05)
    users_at = time.monotonic()
    assert reasserted, "users appeared without the operator's re-assertion"
    first_after = await eventually(
        lambda: _async(min((t for t in load.handled_at.values() if t > users_at), default=None)),
        timeout=20)
    await asyncio.sleep(1.0)
    load.stop.set()
    await producer_task
    await eventually(lambda: _async(load.acked <= set(load.seen)), timeout=30)

    async def no_pending() -> bool:
        return sum([int((await admin.xpending(p.queue_key, GROUP))["pending"])
                    for p in q.parts]) == 0

    await eventually(no_pending, timeout=15)
    for c in cs:
        c.stop()
    await asyncio.gather(*tasks)
    keeper_task.cancel()
    await asyncio.gather(keeper_task, return_exceptions=True)
    figures = {
        **load.figures(),
        "promoted_s": round(promoted_at - killed_at, 2),
        "users_s": round(users_at - killed_at, 2),
        "reasserted_s": round(reasserted[0] - killed_at, 2),
        "consuming_again_s": round(first_after - killed_at, 2),
    }
    print(f"sentinel failover drill: {figures}")
    assert figures["lost"] == 0
    assert sum([await admin.xlen(p.dead_letter) for p in q.parts]) == 0
    assert await users.password_hashes(admin, worker)  # on the primary the client uses now
    assert connection.node_name(cast(aioredis.Redis, admin)).endswith(f":{new.port}")
    assert figures["consuming_again_s"] < 20


def _promoted(s: RedisSentinel, old: Any) -> bool:
    try:
        host, port = s.primary_address()
    except Exception:  # noqa: BLE001 - a sentinel busy failing over: ask again
        return False
    if port == old.port:
        return False
    node = next(n for n in s.nodes if n.port == port)
    with node.client(socket_timeout=1.0) as c:
        return str(c.info("replication").get("role")) == "master"


# --- 4. the operator (kopf + apiserver) --------------------------------------------------

@pytest.mark.k8s
def test_operator_provisions_through_sentinel_and_follows_a_failover(
        operator: Any, kubectl: Any, namespace: str, tmp_path: Path) -> None:
    """An AgentQueue whose admin Secret names sentinels becomes Ready; the agents' Secret
    carries REDIS_SENTINELS and REDIS_SENTINEL_MASTER and works; after the primary is
    killed, the running operator (run_id watch → keeper) re-creates the users on the
    promoted replica, with no touch to the manifest."""
    import redis

    from .operator_fixtures import wait_for, wait_ready
    from .test_operator_queue import ACCESS, apply, queue, secret_values
    from .test_operator_redis_topologies import admin_secret

    need_redis_server()
    with RedisSentinel(tmp_path / "op-sentinel", master_name=MASTER) as s:
        admin_secret(kubectl, namespace, "sentinel", s.secret_data())
        apply(kubectl, namespace, queue("sq", partitions=2, access=ACCESS,
                                        redis={"secretRef": {"name": "sentinel"}}))
        wait_ready(kubectl, "agentqueues", "sq", namespace)
        creds = secret_values(kubectl, namespace, "sq.intake")
        assert creds["REDIS_SENTINELS"] == s.sentinel_addresses
        assert creds["REDIS_SENTINEL_MASTER"] == MASTER
        user = f"aq.{namespace}.sq.intake"

        def enqueue() -> bool:
            async def go() -> bool:
                client = ClientConfig.from_env(creds).connect()
                try:
                    key = f"aq:{{{namespace}/sq/0}}:q"
                    return bool(await client.execute_command(
                        "FCALL", "aq_enqueue", 1, key, 0, "d", "x"))
                except redis_errors():
                    return False
                finally:
                    await client.aclose()
            return asyncio.run(go())

        assert enqueue()
        old = s.primary()
        old.kill()
        t0 = time.monotonic()
        wait_for(lambda: _promoted(s, old), timeout=30, what="a replica promoted")
        promoted = time.monotonic() - t0
        new = s.primary()

        def user_on_new_primary() -> bool:
            try:
                with new.client(socket_timeout=1.0) as c:
                    return bool(c.acl_getuser(user))
            except redis.RedisError:
                return False

        wait_for(user_on_new_primary, timeout=30, what="users re-created on the new primary")
        users_s = time.monotonic() - t0
        assert wait_for(enqueue, timeout=15, what="the producer's Secret works again")
        print(f"operator sentinel failover: promoted {promoted:.2f}s, users "
              f"{users_s:.2f}s after the kill")
        wait_ready(kubectl, "agentqueues", "sq", namespace)
