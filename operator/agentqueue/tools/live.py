"""Live figures for `agentqueue status`: read from Redis now, not from the objects' status
(which the operator writes once per observation and may be a drift interval old).

Read-only commands the observer role has (a consumer's credentials work too): per Stream
partition ``TIME``, ``XINFO STREAM``, ``XINFO GROUPS``, ``XLEN`` of the dead-letter
stream and ``ZCARD`` of the retry set, then per consumer group ``XINFO CONSUMERS``,
``XPENDING … - + 1`` (the oldest pending entry and its idle time) and ``XRANGE (<last
delivered> + COUNT 1`` (the oldest *waiting* entry: the first one the group has not been
given yet). List partitions: ``LLEN`` and the tail of every priority level, the
consumers' heartbeat set (``proc:#consumers``) and the length of each live consumer's
processing list.

A consumer counts as present when it touched Redis within the group's visibility timeout
(a consumer that left, or a pod that was deleted, stays in the group's consumer list until
the operator removes it after ``deadConsumerTimeout``): it is shown as gone instead.
Ages are taken against the Redis server's clock, as stream ids are.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from agentqueue_client import keys
from agentqueue_client.text import as_text

from ..planning.lag import GroupLagInfo, LagSource, assess_lag, lag_from_count, parse_id

__all__ = ["GroupFigures", "QueueFigures", "read_queue"]

# Entries after a group's position counted one page at a time when Redis' own lag figure
# cannot be trusted (planning/lag.py); beyond this the lag is shown as an upper bound.
COUNT_LIMIT = 10_000
_PAGE = 1_000
_LIST_TIME = re.compile(rb'^\{"i":"(\d+)-')


@dataclass
class GroupFigures:
    """One consumer group, all partitions."""

    name: str
    lag: int = 0
    lag_exact: bool = True
    pending: int = 0
    oldest_waiting_s: float | None = None
    oldest_pending_s: float | None = None
    present: set[str] = field(default_factory=set)
    gone: set[str] = field(default_factory=set)
    found: bool = False
    """The group exists in Redis (in at least one partition)."""

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "lag": self.lag, "lagExact": self.lag_exact,
                "pending": self.pending, "oldestWaitingSeconds": self.oldest_waiting_s,
                "oldestPendingSeconds": self.oldest_pending_s,
                "consumers": len(self.present), "consumersGone": len(self.gone - self.present),
                "found": self.found}


@dataclass
class QueueFigures:
    """One queue, all partitions. For a List queue ``in_flight`` and the consumers are
    the queue's own (List queues have no Redis consumer groups)."""

    type: str
    length: int = 0
    dead_letters: int = 0
    scheduled_retries: int = 0
    in_flight: int = 0
    oldest_waiting_s: float | None = None
    present: set[str] = field(default_factory=set)
    gone: set[str] = field(default_factory=set)
    groups: dict[str, GroupFigures] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "length": self.length, "deadLetters": self.dead_letters,
                "scheduledRetries": self.scheduled_retries, "inFlight": self.in_flight,
                "oldestWaitingSeconds": self.oldest_waiting_s,
                "consumers": len(self.present), "consumersGone": len(self.gone - self.present),
                "groups": [g.to_dict() for g in self.groups.values()]}


def _older(current: float | None, age: float) -> float:
    return age if current is None else max(current, age)


def _age_s(now_ms: int, entry_id: Any) -> float:
    return max(0.0, (now_ms - parse_id(as_text(entry_id))[0]) / 1000)


def _now_ms(reply: Sequence[Any]) -> int:
    return int(reply[0]) * 1000 + int(reply[1]) // 1000


def _pairs(raw: Any) -> dict[str, Any]:
    """An XINFO reply (a flat list under RESP2, a dict under RESP3) as a dict."""
    if isinstance(raw, dict):
        return {as_text(k): v for k, v in raw.items()}
    items = list(raw)
    return {as_text(items[i]): items[i + 1] for i in range(0, len(items) - 1, 2)}


def _opt_int(value: Any) -> int | None:
    return None if value is None else int(value)


def _entry_id(entry: Any) -> str | None:
    """First element of an XINFO STREAM first-entry/last-entry reply (None if empty)."""
    if not entry:
        return None
    return as_text(entry[0])


async def _count_after(client: Any, key: str, after: str) -> int | None:
    """Entries after id `after`, counted by pages; None beyond COUNT_LIMIT."""
    counted, start = 0, f"({after}"
    while counted <= COUNT_LIMIT:
        page = await client.xrange(key, min=start, count=_PAGE)
        counted += len(page)
        if len(page) < _PAGE:
            return counted
        start = f"({as_text(page[-1][0])}"
    return None


async def _stream_partition(client: Any, part: keys.PartitionKeys, figures: QueueFigures,
                            visibility_ms: dict[str, int]) -> None:
    async with client.pipeline(transaction=False) as pipe:
        pipe.execute_command("TIME")
        pipe.execute_command("XINFO", "STREAM", part.queue_key)
        pipe.execute_command("XINFO", "GROUPS", part.queue_key)
        pipe.execute_command("XLEN", part.dead_letter)
        pipe.execute_command("ZCARD", part.retry)
        now_raw, stream_raw, groups_raw, dlq, retries = await pipe.execute(
            raise_on_error=False)
    if isinstance(now_raw, Exception):
        raise now_raw
    for reply in (dlq, retries):
        if isinstance(reply, Exception):
            raise reply
    now = _now_ms(now_raw)
    figures.dead_letters += int(dlq)
    figures.scheduled_retries += int(retries)
    if isinstance(stream_raw, Exception):
        if "no such key" in str(stream_raw).lower():
            return  # not provisioned yet, or deleted: nothing waits here
        raise stream_raw
    stream = _pairs(stream_raw)
    length = int(stream["length"])
    figures.length += length
    first = _entry_id(stream.get("first-entry"))
    if isinstance(groups_raw, Exception):
        raise groups_raw
    groups = [_pairs(g) for g in groups_raw]
    if not groups and first is not None:
        figures.oldest_waiting_s = _older(figures.oldest_waiting_s, _age_s(now, first))
    mine: list[tuple[GroupFigures, str]] = []
    for g in groups:
        name = as_text(g["name"])
        if name not in figures.groups:
            continue
        fig = figures.groups[name]
        fig.found = True
        last = as_text(g["last-delivered-id"])
        info = GroupLagInfo(
            reported_lag=_opt_int(g.get("lag")), entries_read=_opt_int(g.get("entries-read")),
            last_delivered_id=last, stream_length=length,
            entries_added=_opt_int(stream.get("entries-added")), first_entry_id=first,
            last_entry_id=as_text(stream["last-generated-id"]),
            max_deleted_id=as_text(stream.get("max-deleted-entry-id") or "0-0"))
        assessed = assess_lag(info)
        if assessed.lag is None:
            assessed = lag_from_count(info, await _count_after(client, part.queue_key, last))
        fig.lag += assessed.lag or 0
        fig.lag_exact = fig.lag_exact and assessed.source is not LagSource.ESTIMATE
        fig.pending += int(g["pending"])
        mine.append((fig, last))
    if not mine:
        return
    # Consumers, the oldest pending entry and the first waiting one of every group: one
    # round trip for the partition.
    async with client.pipeline(transaction=False) as pipe:
        for fig, last in mine:
            pipe.xinfo_consumers(part.queue_key, fig.name)
            pipe.xpending_range(part.queue_key, fig.name, min="-", max="+", count=1)
            pipe.xrange(part.queue_key, min=f"({last}", count=1)
        replies = await pipe.execute()
    for i, (fig, _) in enumerate(mine):
        consumers, oldest_pending, next_waiting = replies[3 * i:3 * i + 3]
        limit = visibility_ms.get(fig.name, 30_000)
        for c in consumers:
            c = _pairs(c)
            (fig.present if int(c["idle"]) < limit else fig.gone).add(as_text(c["name"]))
        if oldest_pending:
            idle_ms = int(oldest_pending[0]["time_since_delivered"])
            fig.oldest_pending_s = _older(fig.oldest_pending_s, idle_ms / 1000)
        if next_waiting:
            fig.oldest_waiting_s = _older(fig.oldest_waiting_s, _age_s(now, next_waiting[0][0]))


async def _list_partition(client: Any, part: keys.PartitionKeys, figures: QueueFigures,
                          levels: int, visibility_ms: int) -> None:
    registry = part.processing("#consumers")  # the List SDK's heartbeats (client/_lists.py)
    async with client.pipeline(transaction=False) as pipe:
        pipe.execute_command("TIME")
        for level in range(levels):
            pipe.execute_command("LLEN", part.priority_key(level))
            pipe.execute_command("LRANGE", part.priority_key(level), -1, -1)
        pipe.execute_command("XLEN", part.dead_letter)
        pipe.execute_command("ZCARD", part.retry)
        pipe.zrange(registry, 0, -1, withscores=True)
        replies = await pipe.execute()
    now = _now_ms(replies[0])
    for level in range(levels):
        figures.length += int(replies[1 + 2 * level])
        tail = replies[2 + 2 * level]
        matched = _LIST_TIME.match(tail[0]) if tail and isinstance(tail[0], bytes) else None
        if matched:  # elements not written by the SDK carry no time
            age = max(0.0, (now - int(matched.group(1))) / 1000)
            figures.oldest_waiting_s = _older(figures.oldest_waiting_s, age)
    dlq, retries, heartbeats = replies[1 + 2 * levels:]
    figures.dead_letters += int(dlq)
    figures.scheduled_retries += int(retries)
    names = [as_text(member) for member, _ in heartbeats]
    for name, (_, beat) in zip(names, heartbeats, strict=True):
        (figures.present if now - float(beat) < visibility_ms else figures.gone).add(name)
    if names:
        async with client.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.execute_command("LLEN", part.processing(name))
            figures.in_flight += sum(int(n) for n in await pipe.execute())


async def read_queue(client: Any, namespace: str, queue: str, queue_type: str,
                     partitions: int, groups: dict[str, int], priority_levels: int = 1,
                     ) -> QueueFigures:
    """Live figures of one queue. ``groups``: Redis group name → visibility timeout (ms)
    of the ConsumerGroups that read it (for a List queue: the largest one is used for
    its consumers, 30 s without any)."""
    figures = QueueFigures(queue_type)
    figures.groups = {name: GroupFigures(name) for name in groups}
    parts = keys.partition_keys(namespace, queue, max(1, partitions))
    for part in parts:
        if queue_type == "Stream":
            await _stream_partition(client, part, figures, groups)
        elif queue_type == "List":
            await _list_partition(client, part, figures, max(1, priority_levels),
                                  max(groups.values(), default=30_000))
    return figures
