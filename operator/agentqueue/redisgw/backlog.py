"""How long the oldest waiting message of a queue has waited (for the SLO maxWaitingAge).

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
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..keys import PartitionKeys
from .errors import classify, translate_errors
from .poller import BatchScript

__all__ = ["oldest_waiting_age"]

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

STREAM = BatchScript(_STREAM)
LIST = BatchScript(_LIST)


async def oldest_waiting_age(client: Any, parts: Sequence[PartitionKeys], queue_type: str,
                             priority_levels: int = 1) -> float | None:
    """Seconds the oldest waiting message has waited, over all partitions: 0.0 when
    nothing waits, None for a PubSub channel (nothing is stored)."""
    if queue_type == "PubSub":
        return None
    calls: list[tuple[list[str], list[Any]]]
    if queue_type == "List":
        script = LIST
        calls = [([p.priority_key(level) for level in range(priority_levels)], [])
                 for p in parts]
    else:
        script = STREAM
        calls = [([p.queue_key], []) for p in parts]
    with translate_errors("read the oldest waiting message"):
        results = await script.run_batched(client, calls)
    age = 0.0
    for result in results:
        if isinstance(result, Exception):
            raise classify(result) from None
        now, oldest = (int(x) for x in result)
        if oldest >= 0:
            age = max(age, (now - oldest) / 1000)
    return age
