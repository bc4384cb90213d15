"""What the queue's SLO needs beyond lengths: how long the oldest waiting message has
waited (maxWaitingAge), and the counters of retries and deliveries (maxRetryRate).

Read by the queue's keeper with its periodic observation, only for queues whose SLO
sets maxWaitingAge: one read-only script per partition, pipelined. Ages are taken
against the Redis server's clock (``TIME``), as stream ids are.

* Stream: with consumer groups, the oldest entry not yet delivered to some group (the
  first entry after each group's last-delivered id); with none, the first entry.
  Delivered but unacknowledged entries are the shared poll's business (their idle
  time, see redisgw/poller.py).
* List: the oldest queued element of every priority level (the tail: consumers take
  from the right); the SDK's message id (``"i"``) starts with the enqueue time in ms.
  Elements not written by the SDK carry no time and are skipped.

Counters (`retry_counters`, read with every observation of a Stream or List queue: they
also feed `agentqueue_queue_retries_total`): one read-only script per partition,
pipelined, reading the partition's stats hash (``retries``: nacks that scheduled a
retry, counted by ``aq_nack`` and the List SDK; ``deliveries``: List elements read,
counted by the SDK) and, for a Stream, every consumer group's ``entries-read`` (XINFO
GROUPS), which Redis advances with every entry it delivers to the group (XREADGROUP
``>``; a retried message comes back as a new entry, so it counts again). Cumulative
figures: the rate over a window is the keeper's business (planning/slo.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from agentqueue_client.keys import PartitionKeys
from agentqueue_client.text import as_text

from ..planning.slo import RetryCounters
from .errors import classify, translate_errors
from .poller import BatchScript

__all__ = ["oldest_waiting_age", "oldest_waiting_ages", "retry_counters", "retry_counters_many"]

# Reply {server now ms, oldest waiting ms | -1}.
_STREAM = r"""#!lua flags=no-writes
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if redis.call('TYPE', KEYS[1])['ok'] ~= 'stream' then return {now, -1} end
local oldest = -1
local function consider(entries)
  if #entries > 0 then
    local ms = tonumber(string.match(entries[1][1], '^(%d+)'))
    if oldest < 0 or ms < oldest then oldest = ms end
  end
end
local groups = redis.call('XINFO', 'GROUPS', KEYS[1])
if #groups == 0 then
  consider(redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1))
end
for _, g in ipairs(groups) do
  local last
  for j = 1, #g, 2 do
    if g[j] == 'last-delivered-id' then last = g[j + 1] end
  end
  consider(redis.call('XRANGE', KEYS[1], '(' .. last, '+', 'COUNT', 1))
end
return {now, oldest}
"""

_LIST = r"""#!lua flags=no-writes
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local oldest = -1
for i = 1, #KEYS do
  if redis.call('TYPE', KEYS[i])['ok'] == 'list' then
    local e = redis.call('LINDEX', KEYS[i], -1)
    local ms = e and tonumber(string.match(e, '^{"i":"(%d+)%-'))
    if ms and (oldest < 0 or ms < oldest) then oldest = ms end
  end
end
return {now, oldest}
"""

# KEYS: stats hash [, stream].
# Reply {retries, deliveries, group, entries-read|-1, last-delivered-id, ...}.
_COUNTERS = r"""#!lua flags=no-writes
local retries, delivered = 0, 0
if redis.call('TYPE', KEYS[1])['ok'] == 'hash' then
  retries = tonumber(redis.call('HGET', KEYS[1], 'retries')) or 0
  delivered = tonumber(redis.call('HGET', KEYS[1], 'deliveries')) or 0
end
local out = {retries, delivered}
if KEYS[2] and redis.call('TYPE', KEYS[2])['ok'] == 'stream' then
  for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[2])) do
    local name, read, last = nil, false, ''
    for j = 1, #g, 2 do
      if g[j] == 'name' then name = g[j + 1] end
      if g[j] == 'entries-read' then read = g[j + 1] end
      if g[j] == 'last-delivered-id' then last = g[j + 1] end
    end
    out[#out + 1] = name
    out[#out + 1] = read or -1
    out[#out + 1] = last
  end
end
return out
"""

STREAM = BatchScript(_STREAM)
LIST = BatchScript(_LIST)
COUNTERS = BatchScript(_COUNTERS)


async def oldest_waiting_age(client: Any, parts: Sequence[PartitionKeys], queue_type: str,
                             priority_levels: int = 1) -> float | None:
    """Seconds the oldest waiting message has waited, over all partitions: 0.0 when
    nothing waits, None for a PubSub channel (nothing is stored)."""
    return (await oldest_waiting_ages(client, [(parts, queue_type, priority_levels)]))[0]


async def oldest_waiting_ages(client: Any,
                              queues: Sequence[tuple[Sequence[PartitionKeys], str, int]]
                              ) -> list[float | None]:
    """`oldest_waiting_age` of many queues (parts, type, priority levels) of one server:
    one pipeline per script for all of them."""
    stream_calls: list[tuple[list[str], list[Any]]] = []
    list_calls: list[tuple[list[str], list[Any]]] = []
    for parts, queue_type, levels in queues:
        if queue_type == "List":
            list_calls += [([p.priority_key(level) for level in range(levels)], [])
                           for p in parts]
        elif queue_type != "PubSub":
            stream_calls += [([p.queue_key], []) for p in parts]
    with translate_errors("read the oldest waiting message"):
        streams = iter(await STREAM.run_batched(client, stream_calls))
        lists = iter(await LIST.run_batched(client, list_calls))
    out: list[float | None] = []
    for parts, queue_type, _ in queues:
        if queue_type == "PubSub":
            out.append(None)
            continue
        source = lists if queue_type == "List" else streams
        age = 0.0
        for _ in parts:
            result = next(source)
            if isinstance(result, Exception):
                raise classify(result) from None
            now, oldest = (int(x) for x in result)
            if oldest >= 0:
                age = max(age, (now - oldest) / 1000)
        out.append(age)
    return out


async def retry_counters(client: Any, parts: Sequence[PartitionKeys],
                         queue_type: str) -> RetryCounters | None:
    """The cumulative retry and delivery counters of every partition; None for a PubSub
    channel (nothing is stored, nothing retried). A Stream's deliveries are its groups'
    ``entries-read`` (None where Redis cannot tell), a List's the SDK's count."""
    return (await retry_counters_many(client, [(parts, queue_type)]))[0]


async def retry_counters_many(client: Any,
                              queues: Sequence[tuple[Sequence[PartitionKeys], str]]
                              ) -> list[RetryCounters | None]:
    """`retry_counters` of many queues of one server: one pipeline for all of them."""
    calls: list[tuple[list[str], list[Any]]] = [
        ([p.stats, p.queue_key] if queue_type == "Stream" else [p.stats], [])
        for parts, queue_type in queues if queue_type != "PubSub" for p in parts]
    with translate_errors("read the retry counters"):
        results = iter(await COUNTERS.run_batched(client, calls))
    out: list[RetryCounters | None] = []
    for parts, queue_type in queues:
        if queue_type == "PubSub":
            out.append(None)
            continue
        stream = queue_type == "Stream"
        retries: dict[int, int] = {}
        deliveries: dict[tuple[int, str], int | None] = {}
        positions: dict[tuple[int, str], str] = {}
        for p in parts:
            result = next(results)
            if isinstance(result, Exception):
                raise classify(result) from None
            # Consumers may HINCRBY these by any amount: a negative count is not a count
            # (0; the SLO window takes a decrease for a reset).
            retries[p.partition] = max(0, int(result[0]))
            if not stream:
                deliveries[(p.partition, "")] = max(0, int(result[1]))
                continue
            groups = result[2:]
            for name, read, last in zip(groups[0::3], groups[1::3], groups[2::3],
                                        strict=True):
                key = (p.partition, as_text(name, errors="strict"))
                deliveries[key] = int(read) if int(read) >= 0 else None
                positions[key] = as_text(last, errors="strict")
        out.append(RetryCounters(retries, deliveries, positions))
    return out
