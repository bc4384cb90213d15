"""Queue provisioning: observe a queue's keys, apply a plan, delete its data.

Observation is one pipelined round trip per node (redis-py's cluster pipeline
groups commands by node), plus one FCALL_RO per primary for the library version.
Decisions live in `planning.queue_plan`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from redis import exceptions as rex

from agentqueue_client import keys
from agentqueue_client.text import as_text

from ..models import AgentQueueSpec
from ..models.queue import QueueType
from ..planning.queue_plan import (
    Action,
    CreateStream,
    DeleteUser,
    EnsureUser,
    LoadLibrary,
    ObservedPartition,
    ObservedQueue,
    WriteMeta,
)
from . import functions, users
from .connection import RedisClient, primaries
from .errors import classify, is_busygroup, translate_errors

__all__ = ["apply", "delete_queue_data", "figures", "observe_queue", "observe_queues"]

#: Placeholder group used only to create an empty stream (see planning.queue_plan).
PROVISION_GROUP = "aq.provision"
SCAN_COUNT = 1000
DELETE_BATCH = 500


def _int(value: Any) -> int:
    """A pipeline result as a count; errors (e.g. WRONGTYPE) and nil count as 0."""
    if isinstance(value, Exception) or value is None:
        return 0
    return int(value)


def _raise_unexpected(results: Sequence[Any]) -> None:
    """Pipeline results gathered with raise_on_error=False: WRONGTYPE is an observation
    (the plan reports the conflict); anything else is a real failure."""
    for res in results:
        if isinstance(res, rex.ResponseError) and str(res).startswith("WRONGTYPE"):
            continue
        if isinstance(res, Exception):
            raise classify(res) from None


async def observe_queue(client: RedisClient, namespace: str, name: str,
                        spec: AgentQueueSpec) -> ObservedQueue:
    """Types, lengths, memory and metadata of every partition, and the library version."""
    return (await observe_queues(client, [(namespace, name, spec)]))[0]


def _queue_commands(pipe: Any, parts: Sequence[keys.PartitionKeys], qtype: QueueType,
                    levels: int) -> int:
    """Queue the observation of `parts` on `pipe`; returns the commands per partition."""
    per_part = 0
    for p in parts:
        queue_keys = [p.priority_key(level) for level in range(levels)]
        pipe.type(p.queue_key)
        pipe.type(p.dead_letter)
        pipe.type(p.retry)
        pipe.hgetall(p.meta)
        for k in queue_keys:
            if qtype is QueueType.LIST:
                pipe.llen(k)
            else:
                pipe.exists(k)  # placeholder keeps the layout fixed
        if qtype is QueueType.STREAM:
            pipe.xlen(p.queue_key)
        else:
            pipe.exists(p.queue_key)
        pipe.xlen(p.dead_letter)
        pipe.zcard(p.retry)
        for k in [*queue_keys, p.dead_letter, p.retry, p.meta]:
            pipe.memory_usage(k)
        per_part = 4 + len(queue_keys) + 3 + len(queue_keys) + 3
    return per_part


def _parse_partitions(parts: Sequence[keys.PartitionKeys], qtype: QueueType, levels: int,
                      results: Sequence[Any], per_part: int) -> tuple[ObservedPartition, ...]:
    observed = []
    for i, p in enumerate(parts):
        r = results[i * per_part:(i + 1) * per_part]
        q_type, dlq_type, retry_type, meta = r[0], r[1], r[2], r[3]
        n = levels
        list_lengths = r[4:4 + n]
        stream_len, dlq_len, retries = r[4 + n], r[5 + n], r[6 + n]
        memory = r[7 + n:]
        length = (sum(_int(x) for x in list_lengths) if qtype is QueueType.LIST
                  else _int(stream_len) if qtype is QueueType.STREAM else 0)
        observed.append(ObservedPartition(
            index=p.partition,
            queue_key=p.queue_key,
            queue_key_type=as_text(q_type, errors="strict"),
            dead_letter_type=as_text(dlq_type, errors="strict"),
            retry_type=as_text(retry_type, errors="strict"),
            length=length,
            dead_letter_length=_int(dlq_len),
            scheduled_retries=_int(retries),
            memory_bytes=sum(_int(m) for m in memory),
            meta={} if isinstance(meta, Exception) else
            {as_text(k, errors="strict"): as_text(v, errors="strict")
             for k, v in (meta or {}).items()},
        ))
    return tuple(observed)


async def observe_queues(client: RedisClient,
                         queues: Sequence[tuple[str, str, AgentQueueSpec]]
                         ) -> list[ObservedQueue]:
    """`observe_queue` for many queues of one server: one pipelined round trip for all
    of them (the keeper's drift check), and the library version read once."""
    if not queues:
        return []
    layout = []
    with translate_errors(f"observe {len(queues)} queue(s)"):
        async with client.pipeline(transaction=False) as pipe:
            for namespace, name, spec in queues:
                qtype = QueueType(spec.type)
                parts = keys.partition_keys(namespace, name, spec.partitions)
                levels = spec.priority_levels if qtype is QueueType.LIST else 1
                layout.append((parts, qtype, levels, _queue_commands(pipe, parts, qtype,
                                                                      levels)))
            results = await pipe.execute(raise_on_error=False)
        _raise_unexpected(results)
        versions = (await functions.library_versions(client)
                    if any(q[2].type != QueueType.PUBSUB for q in queues) else {})
    out = []
    at = 0
    for (namespace, name, _), (parts, qtype, levels, per_part) in zip(queues, layout,
                                                                       strict=True):
        size = per_part * len(parts)
        out.append(ObservedQueue(
            namespace, name, str(qtype),
            _parse_partitions(parts, qtype, levels, results[at:at + size], per_part),
            library_versions=versions if qtype is not QueueType.PUBSUB else {},
            library_wanted=functions.LIBRARY_VERSION))
        at += size
    return out


STREAM_MAX_ID = "18446744073709551615-18446744073709551615"
"""After this ID a stream takes no more entries (XADD: "exhausted the last possible ID")."""


async def exhausted_streams(client: RedisClient, observed: ObservedQueue) -> list[str]:
    """The queue's and dead-letter streams that can take no more entries: their last
    generated ID is the largest possible (someone added an entry with that ID)."""
    return (await exhausted_streams_many(client, [observed]))[0]


async def exhausted_streams_many(client: RedisClient, queues: Sequence[ObservedQueue]
                                 ) -> list[list[str]]:
    """`exhausted_streams` of many queues: one pipelined XINFO STREAM per existing
    stream of all of them."""
    per_queue = [[k for p in observed.partitions
                  for k, t in ((p.queue_key, p.queue_key_type),
                               (keys.PartitionKeys(observed.namespace, observed.name,
                                                   p.index).dead_letter, p.dead_letter_type))
                  if t == "stream"] for observed in queues]
    streams = [k for ks in per_queue for k in ks]
    if not streams:
        return [[] for _ in queues]
    with translate_errors("observe queue streams"):
        async with client.pipeline(transaction=False) as pipe:
            for k in streams:
                pipe.execute_command("XINFO", "STREAM", k)
            results = await pipe.execute(raise_on_error=False)
    full = set()
    for key, info in zip(streams, results, strict=True):
        if isinstance(info, Exception):
            continue  # deleted meanwhile
        fields = info if isinstance(info, dict) else dict(zip(info[::2], info[1::2],
                                                              strict=False))
        last = fields.get("last-generated-id", fields.get(b"last-generated-id"))
        if last is not None and as_text(last, errors="strict") == STREAM_MAX_ID:
            full.add(key)
    return [[k for k in ks if k in full] for ks in per_queue]


def figures(observed: ObservedQueue) -> list[dict[str, Any]]:
    """Per-partition status entries (AgentQueue status.partitions, wire names)."""
    return [{
        "index": p.index,
        "key": p.queue_key,
        "length": p.length,
        "deadLetterLength": p.dead_letter_length,
        "scheduledRetries": p.scheduled_retries,
        "memoryBytes": p.memory_bytes,
    } for p in observed.partitions]


async def apply(client: RedisClient, actions: Sequence[Action]) -> None:
    """Carry out a plan. Idempotent: every action may be repeated safely."""
    if any(isinstance(a, LoadLibrary) for a in actions):
        await functions.ensure_library(client)
    streams = [a for a in actions if isinstance(a, CreateStream)]
    metas = [a for a in actions if isinstance(a, WriteMeta)]
    if streams or metas:
        with translate_errors("provision queue keys"):
            async with client.pipeline(transaction=False) as pipe:
                for s in streams:
                    # MKSTREAM makes an empty stream; the group is ours and goes at once.
                    pipe.xgroup_create(s.key, PROVISION_GROUP, id="$", mkstream=True)
                    pipe.xgroup_destroy(s.key, PROVISION_GROUP)
                for m in metas:
                    if m.fields:
                        mapping: dict[Any, Any] = dict(m.fields)
                        pipe.hset(m.key, mapping=mapping)
                    if m.remove:
                        pipe.hdel(m.key, *m.remove)
                results = await pipe.execute(raise_on_error=False)
            for res in results:
                if isinstance(res, Exception) and not is_busygroup(res):
                    raise classify(res) from None
    for action in actions:
        if isinstance(action, EnsureUser):
            await users.ensure_user(client, action.username, action.rules,
                                    action.password_hashes)
        elif isinstance(action, DeleteUser):
            await users.delete_user(client, action.username)


async def _delete_on_node(node: Any, pattern: str) -> int:
    deleted = 0
    batch: list[Any] = []

    async def flush() -> int:
        # One UNLINK per key: in cluster mode keys of one node span many slots.
        async with node.pipeline(transaction=False) as pipe:
            for k in batch:
                pipe.unlink(k)
            res = await pipe.execute()
        batch.clear()
        return sum(int(x) for x in res)

    async for key in node.scan_iter(match=pattern, count=SCAN_COUNT):
        batch.append(key)
        if len(batch) >= DELETE_BATCH:
            deleted += await flush()
    if batch:
        deleted += await flush()
    return deleted


async def delete_queue_data(client: RedisClient, namespace: str, name: str,
                            partitions: int) -> int:
    """Remove every key of the queue (streams, DLQs, retries, metadata, idempotency and
    processing keys), scanning every primary. Returns how many keys were removed."""
    pattern = keys.queue_scan_pattern(namespace, name)
    del partitions  # the pattern covers every partition, including any beyond spec
    nodes = await primaries(client)
    with translate_errors(f"delete queue data {namespace}/{name}"):
        counts = await asyncio.gather(*(_delete_on_node(n, pattern) for n in nodes))
    return sum(counts)
