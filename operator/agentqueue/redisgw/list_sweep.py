"""The operator's sweep of a List queue: what List consumers do for each other
(docs/protocol.md 7), done by the operator too, so the guarantees hold whatever the
consumers are (a client of another language that never recovers, promotes or counts):

* **Visibility timeout**: the processing list of a consumer whose heartbeat is older than
  the timeout goes back to the head of its level, each element with ``a`` + 1 and ``e`` =
  why; an element whose last allowed delivery timed out (``1 + a >= maxDeliveries``) goes
  to the dead-letter stream instead. WATCH/MULTI per list, as the consumers do: a
  consumer recovering the same list at the same moment makes one of the two a no-op.
* **Retries come back**: due members of the retry set go to the tail of their level; one
  whose next delivery would be over ``maxDeliveries`` goes to the dead-letter stream.
* With dead-lettering off (``deadLetter: false``) such elements are dropped, as the
  consumers do.

Bounded per call: at most :data:`DEAD_CONSUMERS` dead consumers per partition,
:data:`RECOVER_BATCHES` × :data:`RECOVER_BATCH` elements of each of their lists, and
:data:`PROMOTE_BATCH` due retries per partition; the next sweep goes on (a consumer stays
in the heartbeat set until its list is empty).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis.exceptions import WatchError

from agentqueue_client._lists import consumers_key, dead_letter_fields
from agentqueue_client.keys import PartitionKeys
from agentqueue_client.text import as_text

from ..planning.sweep import ListVerdict, promoted, recovered
from .errors import translate_errors

DEAD_CONSUMERS = 100
RECOVER_BATCH = 100
RECOVER_BATCHES = 10
PROMOTE_BATCH = 1000
_WATCH_RETRIES = 5
SWEEPER = "agentqueue-operator"
"""``x.consumer`` of what the sweep dead-letters from the retry set (no consumer held it)."""


@dataclass
class ListSweepResult:
    recovered: int = 0      # back in the queue after a visibility timeout
    promoted: int = 0       # due retries back in the queue
    dead_lettered: int = 0  # over maxDeliveries (or dropped, dead-lettering off)


@dataclass(frozen=True)
class ListQueue:
    """What the sweep needs of a List queue and its group."""

    partitions: Sequence[PartitionKeys]
    group: str
    levels: int
    visibility_ms: int
    max_deliveries: int
    dead_letter: bool


def _queue_verdict(pipe: Any, part: PartitionKeys, q: ListQueue, raw: bytes, v: ListVerdict,
                   consumer: str, now_ms: int, *, head: bool) -> bool:
    """Queue the move of `raw` per `v` in a MULTI; True when it is dead-lettered."""
    if v.element is not None:
        target = part.priority_key(v.level)
        (pipe.rpush if head else pipe.lpush)(target, v.element)
        return False
    if q.dead_letter:
        pipe.xadd(part.dead_letter, dead_letter_fields(
            raw, v.envelope, v.message_id, v.level, group=q.group, consumer=consumer,
            reason=v.reason, deliveries=v.deliveries, now_ms=now_ms))
    return True


async def _recover_list(client: Any, part: PartitionKeys, owner: str, q: ListQueue,
                        now_ms: int, result: ListSweepResult) -> bool:
    """Empty a dead consumer's processing list, :data:`RECOVER_BATCH` elements per
    transaction, at most :data:`RECOVER_BATCHES` of them; True when it is empty."""
    proc = part.processing(owner)
    batches = 0
    async with client.pipeline(transaction=True) as pipe:
        for _ in range(RECOVER_BATCHES + _WATCH_RETRIES):
            try:
                await pipe.watch(proc)
                elements = await pipe.lrange(proc, -RECOVER_BATCH, -1)
                if not elements:
                    await pipe.reset()
                    return True
                if batches == RECOVER_BATCHES:
                    await pipe.reset()
                    return False  # the next sweep goes on
                pipe.multi()
                dead = 0
                for raw in elements:  # newest first: the oldest ends at the head
                    pipe.lrem(proc, 1, raw)
                    verdict = recovered(raw, owner, q.levels, q.max_deliveries)
                    dead += _queue_verdict(pipe, part, q, raw, verdict, owner, now_ms,
                                           head=True)
                await pipe.execute()
                batches += 1
                result.recovered += len(elements) - dead
                result.dead_lettered += dead
            except WatchError:
                continue  # the owner came back, or a consumer recovers it: look again
    return False


async def _promote(client: Any, part: PartitionKeys, q: ListQueue, now_ms: int,
                   result: ListSweepResult) -> None:
    async with client.pipeline(transaction=True) as pipe:
        for _ in range(_WATCH_RETRIES):
            try:
                await pipe.watch(part.retry)
                due = await pipe.zrange(part.retry, "-inf", now_ms, byscore=True, offset=0,
                                        num=PROMOTE_BATCH)
                if not due:
                    return
                pipe.multi()
                pipe.zrem(part.retry, *due)
                dead = 0
                for raw in due:
                    verdict = promoted(raw, q.levels, q.max_deliveries)
                    dead += _queue_verdict(pipe, part, q, raw, verdict, SWEEPER, now_ms,
                                           head=False)
                await pipe.execute()
                result.promoted += len(due) - dead
                result.dead_lettered += dead
                return
            except WatchError:
                continue  # a consumer promoted them


async def sweep(client: Any, q: ListQueue, now_ms: int) -> ListSweepResult:
    """One sweep of every partition (see the module docstring)."""
    result = ListSweepResult()
    deadline = now_ms - q.visibility_ms
    with translate_errors(f"sweep list group {q.group!r}"):
        for part in q.partitions:
            heartbeats = consumers_key(part)
            dead = await client.zrange(heartbeats, "-inf", f"({deadline}", byscore=True,
                                       offset=0, num=DEAD_CONSUMERS)
            for raw_name in dead:
                if await _recover_list(client, part, as_text(raw_name), q, now_ms, result):
                    # Forgotten, as the consumers do: if it was only slow, its next
                    # heartbeat adds it back.
                    await client.zrem(heartbeats, raw_name)
            await _promote(client, part, q, now_ms, result)
    return result
