"""Count what a consumer group sent to the dead-letter queue.

Consumers (the SDK: a nack on the last allowed delivery, a malformed entry, a schema
violation) and the operator's sweep both dead-letter through ``aq_deadletter``, which
tags each dead-letter entry with ``x.group``. The operator cannot see a consumer's
call, so it counts the dead-letter streams instead: from a cursor (the last entry
examined, per partition), entries whose ``x.group`` is the group. A read-only script per
partition, pipelined; payloads never leave Redis.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from agentqueue_client.keys import PartitionKeys

from .errors import classify, translate_errors
from .poller import BatchScript

__all__ = ["PAGE", "count_dead_letters", "last_id"]

PAGE = 500
MAX_PAGES = 20
"""At most PAGE × MAX_PAGES entries per partition per call; the rest on the next one."""

# KEYS[1] dead-letter stream; ARGV start (XRANGE syntax), group, page.
# Reply {entries of the group, last id examined or '', entries examined}.
_COUNT = r"""#!lua flags=no-writes
if redis.call('TYPE', KEYS[1])['ok'] ~= 'stream' then return {0, '', 0} end
local entries = redis.call('XRANGE', KEYS[1], ARGV[1], '+', 'COUNT', tonumber(ARGV[3]))
local n, last = 0, ''
for _, e in ipairs(entries) do
  last = e[1]
  local f = e[2]
  for j = 1, #f, 2 do
    if f[j] == 'x.group' then
      if f[j + 1] == ARGV[2] then n = n + 1 end
      break
    end
  end
end
return {n, last, #entries}
"""

_LAST = r"""#!lua flags=no-writes
if redis.call('TYPE', KEYS[1])['ok'] ~= 'stream' then return '' end
local e = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
if #e == 0 then return '' end
return e[1][1]
"""

COUNT = BatchScript(_COUNT)
LAST = BatchScript(_LAST)


async def count_dead_letters(client: Any, parts: Sequence[PartitionKeys], group: str,
                             starts: Mapping[int, str]) -> tuple[int, dict[int, str]]:
    """Dead-letter entries of `group` from `starts[partition]` (XRANGE syntax: ``(id``
    after an id, ``id`` from it, ``-`` from the beginning) on every partition.

    Returns (count, {partition: last id examined}); a partition with nothing new keeps
    no entry in the second value (its start stays)."""
    todo = {p.partition: (p, starts.get(p.partition, "-")) for p in parts}
    total = 0
    last: dict[int, str] = {}
    for _ in range(MAX_PAGES):
        if not todo:
            break
        order = list(todo.values())
        with translate_errors(f"count dead letters of {group!r}"):
            results = await COUNT.run_batched(
                client, [([p.dead_letter], [start, group, PAGE]) for p, start in order])
        todo = {}
        for (p, _), result in zip(order, results, strict=True):
            if isinstance(result, Exception):
                raise classify(result) from None
            n, last_id_, seen = int(result[0]), str(result[1]), int(result[2])
            total += n
            if last_id_:
                last[p.partition] = last_id_
            if seen == PAGE:
                todo[p.partition] = (p, f"({last_id_}")
    return total, last


async def last_id(client: Any, parts: Sequence[PartitionKeys]) -> dict[int, str]:
    """The newest dead-letter entry id per partition (partitions with none are left out)."""
    with translate_errors("read the dead-letter queue"):
        results = await LAST.run_batched(client, [([p.dead_letter], []) for p in parts])
    out: dict[int, str] = {}
    for p, result in zip(parts, results, strict=True):
        if isinstance(result, Exception):
            raise classify(result) from None
        if result:
            out[p.partition] = str(result)
    return out
