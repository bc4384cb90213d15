"""Waiting work of ConsumerGroups on List queues, polled with the Stream groups.

Per partition one read-only script call reads the length of every priority level, the
retries due now, the live consumers (heartbeats younger than the visibility timeout),
the length of every known processing list (in flight), and the enqueue time of the
oldest element waiting or in flight (the tail of each list: consumers take from the
right; the SDK's message id starts with the enqueue time in ms). It also returns the
names in the heartbeat set, so a new consumer's processing list is read from the next
poll on.

Processing lists are found with SCAN on the queue's own key pattern
(``aq:{ns/q/*}:proc:*``): at most SCAN_CALLS_PER_POLL calls per primary and queue per
poll, continued on the next poll, and repeated every RESCAN_S. The heartbeat set finds
the SDK's consumers sooner; the SCAN also finds lists left by other clients, or by a
consumer no longer in the set.

`poll_all` is the PollHub's poll function: Stream targets go to redisgw/poller.py,
List targets here, and the results come back in the caller's order.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from agentqueue_client import keys
from agentqueue_client.keys import PartitionKeys
from agentqueue_client.text import as_text

from ..planning.list_groups import (
    HEARTBEATS,
    ListPartitionWork,
    group_work,
    processing_keys,
    processing_partition,
)
from . import connection
from .errors import classify, translate_errors
from .poller import BatchScript, GroupFigures, GroupTarget, poll_groups

__all__ = ["ListWorkPoller", "poll_all"]

SCAN_COUNT = 1000
SCAN_CALLS_PER_POLL = 20
"""SCAN calls per primary and queue in one poll (each examines about SCAN_COUNT keys)."""
RESCAN_S = 30.0
FORGET_S = 600.0
"""A queue not polled for this long loses its discovered keys."""

# KEYS: priority levels (ARGV[1] of them), retry zset, heartbeat zset, processing lists.
# ARGV: levels, visibility ms. Reply {now ms, queued, due, live consumers, in flight,
# oldest enqueue ms | -1, {heartbeat names (at most 1000)}}.
_WORK = r"""#!lua flags=no-writes
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local levels, vis = tonumber(ARGV[1]), tonumber(ARGV[2])
local oldest = -1
local function length(key)
  if redis.call('TYPE', key)['ok'] ~= 'list' then return 0 end
  local e = redis.call('LINDEX', key, -1)
  local ms = e and tonumber(string.match(e, '^{"i":"(%d+)%-'))
  if ms and (oldest < 0 or ms < oldest) then oldest = ms end
  return redis.call('LLEN', key)
end
local queued, inflight = 0, 0
for i = 1, levels do queued = queued + length(KEYS[i]) end
local due = redis.pcall('ZCOUNT', KEYS[levels + 1], '-inf', now)
if type(due) ~= 'number' then due = 0 end
local hb, live, names = KEYS[levels + 2], 0, {}
if redis.call('TYPE', hb)['ok'] == 'zset' then
  live = redis.call('ZCOUNT', hb, now - vis, '+inf')
  names = redis.call('ZRANGE', hb, 0, 999)
end
for i = levels + 3, #KEYS do inflight = inflight + length(KEYS[i]) end
return {now, queued, due, live, inflight, oldest, names}
"""

WORK = BatchScript(_WORK)


@dataclass
class _Discovery:
    """Processing lists of one queue found by SCAN."""

    found: set[str] = field(default_factory=set)
    by_partition: dict[int, list[str]] = field(default_factory=dict)
    """`found`, by partition (each poll reads only its own partition's lists)."""
    scanning: set[str] = field(default_factory=set)
    cursors: dict[str, int] | None = None
    """Per primary, where the scan in progress continues; None: no scan in progress."""
    done_at: float = -1e9
    used_at: float = 0.0


class ListWorkPoller:
    """Reads List groups' work; keeps what SCAN and the heartbeat sets found."""

    def __init__(self) -> None:
        self._queues: dict[tuple[str, str], _Discovery] = {}
        self._names: dict[PartitionKeys, list[str]] = {}

    async def _discover(self, client: Any, namespace: str, queue: str, now: float) -> None:
        d = self._queues.setdefault((namespace, queue), _Discovery())
        d.used_at = now
        if d.cursors is None:
            if now - d.done_at < RESCAN_S:
                return
            d.cursors, d.scanning = {}, set()
        pattern = keys.queue_key_pattern(namespace, queue) + "}:proc:*"
        with translate_errors(f"find the processing lists of {namespace}/{queue}"):
            for node in await connection.primaries(client):
                name = connection.node_name(node)
                cursor = d.cursors.get(name, 0)
                if cursor < 0:
                    continue  # this primary is done
                for _ in range(SCAN_CALLS_PER_POLL):
                    cursor, found = await node.scan(cursor, match=pattern, count=SCAN_COUNT)
                    d.scanning.update(as_text(k, errors="strict") for k in found)
                    if int(cursor) == 0:
                        break
                d.cursors[name] = -1 if int(cursor) == 0 else int(cursor)
        before = len(d.found)
        if all(c < 0 for c in d.cursors.values()):
            d.found, d.cursors, d.done_at = d.scanning, None, now
        else:
            d.found |= d.scanning  # meanwhile, everything seen so far
        if d.cursors is None or len(d.found) != before:
            d.by_partition = {}
            for key in d.found:
                p = processing_partition(key, namespace, queue)
                if p is not None:
                    d.by_partition.setdefault(p, []).append(key)

    async def poll(self, client: Any, targets: Sequence[GroupTarget]) -> list[GroupFigures]:
        now = time.monotonic()
        for ns, q in {(t.namespace, t.queue) for t in targets}:
            await self._discover(client, ns, q, now)
        # One script call per partition and (levels, visibility): groups of one queue
        # with the same settings share it.
        calls: dict[tuple[PartitionKeys, int, int], int] = {}
        order: list[tuple[PartitionKeys, int, int]] = []
        script_calls: list[tuple[list[str], list[Any]]] = []
        for t in targets:
            found = self._queues[(t.namespace, t.queue)].by_partition
            for pk in t.partition_keys():
                key = (pk, t.priority_levels, t.visibility_ms)
                if key in calls:
                    continue
                calls[key] = len(order)
                order.append(key)
                procs = processing_keys(pk, found.get(pk.partition, ()),
                                        self._names.get(pk, ()))
                levels = [pk.priority_key(level) for level in range(t.priority_levels)]
                script_calls.append(
                    ([*levels, pk.retry, pk.processing(HEARTBEATS), *procs],
                     [t.priority_levels, t.visibility_ms]))
        with translate_errors("poll List consumer groups"):
            replies = await WORK.run_batched(client, script_calls)
        work: list[ListPartitionWork] = []
        for (pk, _, _), reply in zip(order, replies, strict=True):
            if isinstance(reply, Exception):
                raise classify(reply) from None
            now_ms, queued, due, live, inflight, oldest, names = reply
            self._names[pk] = [as_text(n, errors="strict") for n in names]
            work.append(ListPartitionWork(int(queued), int(inflight), int(due), int(live),
                                          int(now_ms), int(oldest) if int(oldest) >= 0
                                          else None))
        out = []
        for t in targets:
            parts = [work[calls[(pk, t.priority_levels, t.visibility_ms)]]
                     for pk in t.partition_keys()]
            w = group_work(parts)
            out.append(GroupFigures(lag=w.lag, pending=w.pending, due_retries=w.due_retries,
                                    waiting=w.waiting, oldest_pending_age_s=w.oldest_age_s,
                                    consumers=w.consumers))
        self._forget(now)
        return out

    def _forget(self, now: float) -> None:
        stale = [k for k, d in self._queues.items() if now - d.used_at > FORGET_S]
        for k in stale:
            del self._queues[k]
            for pk in [pk for pk in self._names if (pk.namespace, pk.queue) == k]:
                del self._names[pk]


_DEFAULT = ListWorkPoller()


async def poll_all(client: Any, targets: list[GroupTarget]) -> list[GroupFigures]:
    """`PollHub`'s poll function: Stream and List groups of one server, figures in the
    order of `targets`."""
    lists = [i for i, t in enumerate(targets) if t.queue_type == "List"]
    if not lists:
        return await poll_groups(client, targets)
    streams = [i for i, t in enumerate(targets) if t.queue_type != "List"]
    out: list[GroupFigures | None] = [None] * len(targets)
    if streams:
        for i, fig in zip(streams, await poll_groups(client, [targets[i] for i in streams]),
                          strict=True):
            out[i] = fig
    for i, fig in zip(lists, await _DEFAULT.poll(client, [targets[i] for i in lists]),
                      strict=True):
        out[i] = fig
    return [f for f in out if f is not None]
