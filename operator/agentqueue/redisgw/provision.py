"""Queue provisioning: observe a queue's keys, apply a plan, delete its data.

Observation is a read-only script per 50 partitions (per partition in a Cluster), all
in one pipelined round trip per node, plus one FCALL_RO per primary for the library
version. Each partition's reply carries a digest; the next observation sends it back
and an unchanged partition answers 0 (what was parsed last time is reused), as the lag
poll does (redisgw/poller.py): thirteen commands per partition through redis-py cost
~130 µs of operator CPU each, so a drift round over 10,000 idle queues was ~1.3 s of it.
Decisions live in `planning.queue_plan`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from redis.asyncio import RedisCluster

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
from .errors import RedisError, classify, is_busygroup, translate_errors
from .poller import PARTITIONS_PER_CALL, BatchScript

__all__ = ["apply", "delete_queue_data", "figures", "observe_queue", "observe_queues"]

#: Placeholder group used only to create an empty stream (see planning.queue_plan).
PROVISION_GROUP = "aq.provision"
SCAN_COUNT = 1000
DELETE_BATCH = 500


async def observe_queue(client: RedisClient, namespace: str, name: str,
                        spec: AgentQueueSpec) -> ObservedQueue:
    """Types, lengths, memory and metadata of every partition, and the library version."""
    return (await observe_queues(client, [(namespace, name, spec)]))[0]


# Per partition, ARGV: kind ('s' Stream, 'l' List, 'p' PubSub), n (queue keys: the List's
# priority levels, else 1), the digest of its last reply ('': none); KEYS: the n queue
# keys (level 0 first), the dead-letter stream, the retry set, the meta hash.
# Reply per partition: 0 when its reply's digest equals the one given (unchanged: the
# caller keeps what it parsed last time), else {digest, queue type, dead-letter type,
# retry type, meta (flat), {List lengths}, stream length, dead-letter length, retries,
# memory bytes of all its keys}. A key of the wrong type counts 0 (pcall), as an absent
# one does: the plan reports the type conflict.
_OBSERVE_QUEUES = r"""#!lua flags=no-writes
local out, k, a = {}, 1, 1
local function num(x) if type(x) == 'number' then return x end return 0 end
local function typ(key)
  local t = redis.call('TYPE', key)
  if type(t) == 'table' then return t['ok'] end
  return t
end
local function mem(key) return num(redis.call('MEMORY', 'USAGE', key)) end
while a <= #ARGV do
  local kind, n, prev = ARGV[a], tonumber(ARGV[a + 1]), ARGV[a + 2]
  a = a + 3
  local q = {}
  for j = 1, n do q[j] = KEYS[k]; k = k + 1 end
  local dlq, retry, meta = KEYS[k], KEYS[k + 1], KEYS[k + 2]
  k = k + 3
  local m = redis.pcall('HGETALL', meta)
  if type(m) ~= 'table' or m.err then m = {} end
  local lens = {}
  if kind == 'l' then
    for j = 1, n do lens[j] = num(redis.pcall('LLEN', q[j])) end
  end
  local slen = 0
  if kind == 's' then slen = num(redis.pcall('XLEN', q[1])) end
  local bytes = mem(dlq) + mem(retry) + mem(meta)
  for j = 1, n do bytes = bytes + mem(q[j]) end
  local reply = {'', typ(q[1]), typ(dlq), typ(retry), m, lens, slen,
                 num(redis.pcall('XLEN', dlq)), num(redis.pcall('ZCARD', retry)), bytes}
  local flat = {reply[2], reply[3], reply[4], '|'}
  for _, v in ipairs(m) do flat[#flat + 1] = v end
  flat[#flat + 1] = '|'
  for _, v in ipairs(lens) do flat[#flat + 1] = v end
  for j = 7, 10 do flat[#flat + 1] = reply[j] end
  local digest = string.sub(redis.sha1hex(table.concat(flat, ',')), 1, 16)
  if digest == prev then
    out[#out + 1] = 0
  else
    reply[1] = digest
    out[#out + 1] = reply
  end
end
return out
"""
OBSERVE_QUEUES = BatchScript(_OBSERVE_QUEUES)
_KIND = {QueueType.STREAM: "s", QueueType.LIST: "l", QueueType.PUBSUB: "p"}

_LAST_OBSERVED: dict[tuple[str, str, int], tuple[str, ObservedPartition]] = {}
"""Per (queue key, kind, levels): the digest of its last reply and what was parsed from it
(an unchanged partition is answered 0 and reused: a drift round over 10,000 idle queues
parses almost nothing)."""


def _partition_call(p: keys.PartitionKeys, qtype: QueueType, levels: int
                    ) -> tuple[list[str], list[Any], tuple[str, str, int],
                               ObservedPartition | None]:
    """The script's keys and arguments for one partition, its memo key, and the state
    the digest sent describes."""
    memo = (p.queue_key, _KIND[qtype], levels)
    last = _LAST_OBSERVED.get(memo)
    return ([p.priority_key(level) for level in range(levels)]
            + [p.dead_letter, p.retry, p.meta],
            [_KIND[qtype], levels, last[0] if last is not None else ""], memo,
            last[1] if last is not None else None)


def _parse_partition(p: keys.PartitionKeys, qtype: QueueType, raw: Any,
                     memo: tuple[str, str, int], before: ObservedPartition | None
                     ) -> ObservedPartition:
    if raw == 0:
        if before is None:  # no digest was sent: the script cannot have matched it
            raise RedisError(f"observe {p.queue_key}: 'unchanged' without a digest")
        return before
    digest, q_type, dlq_type, retry_type, meta, lens, slen, dlq_len, retries, memory = raw
    flat = [as_text(v, errors="strict") for v in meta]
    observed = ObservedPartition(
        index=p.partition,
        queue_key=p.queue_key,
        queue_key_type=as_text(q_type, errors="strict"),
        dead_letter_type=as_text(dlq_type, errors="strict"),
        retry_type=as_text(retry_type, errors="strict"),
        length=(sum(int(x) for x in lens) if qtype is QueueType.LIST
                else int(slen) if qtype is QueueType.STREAM else 0),
        dead_letter_length=int(dlq_len),
        scheduled_retries=int(retries),
        memory_bytes=int(memory),
        meta=dict(zip(flat[::2], flat[1::2], strict=True)),
    )
    if len(_LAST_OBSERVED) > 200_000:  # queues come and go; keep the memory bounded
        _LAST_OBSERVED.clear()
    _LAST_OBSERVED[memo] = (as_text(digest, errors="strict"), observed)
    return observed


async def observe_queues(client: RedisClient,
                         queues: Sequence[tuple[str, str, AgentQueueSpec]]
                         ) -> list[ObservedQueue]:
    """`observe_queue` for many queues of one server: a read-only script per 50
    partitions (per partition in a Cluster), all in one pipeline, and the library
    version read once (the keeper's drift check). A partition whose reply is unchanged
    since the last observation answers 0 and is reused (its digest is sent along)."""
    if not queues:
        return []
    layout = []
    calls: list[tuple[list[str], list[Any]]] = []
    memos = []
    for namespace, name, spec in queues:
        qtype = QueueType(spec.type)
        parts = keys.partition_keys(namespace, name, spec.partitions)
        levels = spec.priority_levels if qtype is QueueType.LIST else 1
        layout.append((parts, qtype))
        for p in parts:
            ks, args, memo, before = _partition_call(p, qtype, levels)
            calls.append((ks, args))
            memos.append((memo, before))
    per_call = 1 if isinstance(client, RedisCluster) else PARTITIONS_PER_CALL
    merged = [([k for ks, _ in chunk for k in ks], [a for _, args in chunk for a in args])
              for chunk in (calls[i:i + per_call] for i in range(0, len(calls), per_call))]
    with translate_errors(f"observe {len(queues)} queue(s)"):
        replies = await OBSERVE_QUEUES.run_batched(client, merged)
        versions = (await functions.library_versions(client)
                    if any(q[2].type != QueueType.PUBSUB for q in queues) else {})
    raw: list[Any] = []
    for reply in replies:
        if isinstance(reply, Exception):
            raise classify(reply) from None
        raw.extend(reply)
    out = []
    at = 0
    for (namespace, name, _), (parts, qtype) in zip(queues, layout, strict=True):
        observed = tuple(_parse_partition(p, qtype, raw[at + i], *memos[at + i])
                         for i, p in enumerate(parts))
        out.append(ObservedQueue(
            namespace, name, str(qtype), observed,
            library_versions=versions if qtype is not QueueType.PUBSUB else {},
            library_wanted=functions.LIBRARY_VERSION))
        at += len(parts)
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
