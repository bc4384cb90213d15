"""A queue provisioned with the operator's own code, without Kubernetes, and the traffic
of a failover drill: shared by the Redis Cluster and Sentinel tests."""

from __future__ import annotations

import asyncio
import collections
import time
from dataclasses import dataclass, field
from typing import Any

from agentqueue.models import AgentQueueSpec, Role
from agentqueue.planning import acl, queue_plan
from agentqueue.redisgw import connection, groups, provision, users
from agentqueue.redisgw.connection import RedisClient, RedisTarget
from agentqueue.redisgw.meta import write_group_meta
from agentqueue.services.queues import secret_data
from agentqueue_client import ClientConfig, Message, Outgoing, Producer, keys
from agentqueue_client.errors import redis_errors


@dataclass
class Queue:
    namespace: str
    name: str
    spec: AgentQueueSpec
    producer: ClientConfig
    consumer: ClientConfig
    users: dict[str, tuple[list[str], list[str]]]  # username -> (rules, password hashes)

    def part(self, p: int) -> keys.PartitionKeys:
        return keys.PartitionKeys(self.namespace, self.name, p)

    @property
    def parts(self) -> list[keys.PartitionKeys]:
        return keys.partition_keys(self.namespace, self.name, self.spec.partitions)


async def provision_queue(admin: RedisClient, target: RedisTarget, namespace: str, name: str,
                          group: str, **raw: Any) -> Queue:
    """What the operator does for an AgentQueue and a ConsumerGroup `group`, with its own
    code: keys, metadata, the Functions library, one ACL user per access entry (role
    configs from the Secret data it would write), the group on a Stream, its settings."""
    raw.setdefault("access", {"producers": [{"name": "intake"}],
                              "consumers": [{"name": "worker"}]})
    spec = AgentQueueSpec.model_validate(raw)
    observed = await provision.observe_queue(admin, namespace, name, spec)
    await provision.apply(admin, queue_plan.plan_queue(spec, namespace, name, observed,
                                                       generation=1))
    configs: dict[Role, ClientConfig] = {}
    made: dict[str, tuple[list[str], list[str]]] = {}
    for role, entry in spec.access.entries():
        username = keys.acl_username(namespace, name, entry.name)
        rules = acl.acl_rules(role, namespace, name, spec.type, spec.partitions)
        password = users.new_password()
        hashes = [users.sha256_hex(password)]
        await users.ensure_user(admin, username, rules, hashes)
        made[username] = (list(rules), hashes)
        configs[role] = ClientConfig.from_env(
            secret_data(target, namespace, name, spec, role, username, password,
                        cluster=connection.is_cluster(admin)))
    parts = keys.partition_keys(namespace, name, spec.partitions)
    if str(spec.type) == "Stream":
        await groups.ensure_group(admin, parts, group, "Beginning")
    await write_group_meta(admin, parts, {f"visibilityMs:{group}": "1000"}, [])
    return Queue(namespace, name, spec, configs[Role.PRODUCER], configs[Role.CONSUMER], made)


@dataclass
class Traffic:
    """A drill's load: a producer sending batches of 10 with idempotency keys (a failed
    batch is sent again with the same keys: no duplicates), and the handler the consumers
    run. `acked`: what the producer saw acknowledged, which must all be handled."""

    seen: collections.Counter[int] = field(default_factory=collections.Counter)
    handled_at: dict[int, float] = field(default_factory=dict)
    acked: set[int] = field(default_factory=set)
    send_errors: int = 0
    stalls: list[float] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, msg: Message) -> None:
        i = msg.payload["n"]
        self.seen[i] += 1
        self.handled_at.setdefault(i, time.monotonic())

    async def produce(self, config: ClientConfig) -> None:
        async with Producer(config, meta_ttl=1.0) as producer:
            i = 0
            while not self.stop.is_set():
                batch = list(range(i, i + 10))
                t0 = time.monotonic()
                try:
                    await producer.send_many(
                        [Outgoing({"n": j}, idempotency_key=f"d-{j}") for j in batch])
                    self.stalls.append(time.monotonic() - t0)
                except redis_errors():
                    self.send_errors += 1
                    await asyncio.sleep(0.1)
                    continue
                self.acked.update(batch)
                i += 10
                await asyncio.sleep(0.01)

    def figures(self) -> dict[str, Any]:
        """Messages acknowledged, lost (acknowledged, never handled), redelivered."""
        return {"messages": len(self.acked), "lost": len(self.acked - set(self.seen)),
                "redelivered": sum(c - 1 for c in self.seen.values() if c > 1),
                "send_errors": self.send_errors,
                "longest_send_s": round(max(self.stalls, default=0.0), 2)}
