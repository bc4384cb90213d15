"""Consumer groups on every partition: create, destroy, sweep expired deliveries,
remove dead consumers.

Visibility timeout — who claims, who redelivers
-----------------------------------------------
Redis Streams cannot put a delivered entry back in the "new" state: only a claim by
another consumer redelivers it. So:

- **Consumers claim.** Before blocking for new messages, a consumer (the SDK) runs
  ``XAUTOCLAIM key group <itself> <visibilityMs> ...``, with ``visibilityMs:<group>``
  read from the queue's metadata hash. That redelivers an entry whose consumer read it
  and never acked (crashed, hung) to a live consumer, and bumps its delivery count.
- **The operator sweeps** (`reclaim`, every half visibility timeout): it lists the
  entries idle beyond the timeout (``XPENDING ... IDLE``), and

  * moves those delivered ``maxDeliveries`` times or more (delivery count plus the
    envelope's attempt field ``a`` from earlier retries) to the dead-letter stream
    through ``aq_deadletter`` (atomic: copy with ``x.*`` metadata, XACK), so a poison
    message stops being redelivered and never blocks anything behind it;
  * acks entries that are pending but no longer in the stream (trimmed or deleted:
    redis/redis #10756), which XAUTOCLAIM would otherwise report forever;
  * leaves the others alone for a consumer's XAUTOCLAIM (reported as ``reclaimed``:
    expired entries handed back for redelivery). Claiming them itself would reset
    their idle time and hide them from consumers for another timeout.

  Then, idle or not, it dead-letters pending entries delivered *more* than
  ``maxDeliveries`` times: Redis hands an entry out on every claim whatever its count,
  so a consumer that claims promptly and never checks the count (a client of another
  language, docs/protocol.md) would otherwise get it forever, and the expired pass never
  sees it idle.

Dead consumers (idle beyond ``deadConsumerTimeout`` with nothing pending) are deleted
by a script that re-checks "nothing pending" atomically: XGROUP DELCONSUMER drops a
consumer's pending entries, which would lose messages.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from redis import exceptions as rex

from agentqueue_client import calls
from agentqueue_client.keys import PartitionKeys
from agentqueue_client.text import as_text

from ..planning.sweep import TIMEOUT_ERROR, exceeded_reason, over_limit
from .errors import classify, is_busygroup, translate_errors

__all__ = [
    "ReclaimResult",
    "delete_group",
    "ensure_group",
    "reclaim",
    "remove_dead_consumers",
    "start_id",
]

SWEEP_PAGE = 100
SWEEP_PAGES = 10
"""At most SWEEP_PAGE × SWEEP_PAGES expired entries per partition per sweep."""


def start_id(start_from: str) -> str:
    """ConsumerGroup.spec.startFrom → the id for XGROUP CREATE."""
    if start_from == "NewMessages":
        return "$"
    if start_from == "Beginning":
        return "0"
    return start_from


def _raise_first(results: Sequence[Any], ok: Any = None) -> None:
    """Raise the first error reply that `ok(exc)` does not accept, classified."""
    for r in results:
        if isinstance(r, Exception) and not (ok and ok(r)):
            raise classify(r) from None


async def ensure_group(client: Any, partitions: Sequence[PartitionKeys], group: str,
                       start_from: str = "NewMessages") -> list[int]:
    """XGROUP CREATE ... MKSTREAM on every partition (one pipeline). An existing group
    (BUSYGROUP) is success and keeps its position. Returns the partitions created."""
    sid = start_id(start_from)
    with translate_errors(f"create group {group!r}"):
        pipe = client.pipeline(transaction=False)
        for pk in partitions:
            pipe.xgroup_create(pk.queue_key, group, id=sid, mkstream=True)
        results = await pipe.execute(raise_on_error=False)
    _raise_first(results, is_busygroup)
    return [pk.partition for pk, r in zip(partitions, results, strict=True)
            if not isinstance(r, Exception)]


def _no_stream(exc: BaseException) -> bool:
    return isinstance(exc, rex.ResponseError) and "requires the key to exist" in str(exc)


async def delete_group(client: Any, partitions: Sequence[PartitionKeys], group: str) -> int:
    """XGROUP DESTROY on every partition; a missing stream or group is success.
    Returns how many partitions had the group."""
    with translate_errors(f"delete group {group!r}"):
        pipe = client.pipeline(transaction=False)
        for pk in partitions:
            pipe.xgroup_destroy(pk.queue_key, group)
        results = await pipe.execute(raise_on_error=False)
    _raise_first(results, _no_stream)
    return sum(1 for r in results if not isinstance(r, Exception) and int(r))


@dataclass
class ReclaimResult:
    reclaimed: int = 0
    """Entries past the visibility timeout left for a consumer's XAUTOCLAIM (seen in
    this sweep; the same entry counts again in the next sweep if nobody claimed it)."""
    dead_lettered: int = 0
    deleted_ids: list[str] = field(default_factory=list)
    """Pending entries no longer in the stream (trimmed/deleted), now acked."""


@dataclass(frozen=True)
class _Expired:
    keys: PartitionKeys
    id: str
    consumer: str
    deliveries: int


async def _expired_page(client: Any, cursors: dict[PartitionKeys, str], group: str,
                        idle_ms: int | None) -> dict[PartitionKeys, list[_Expired]]:
    """A page of pending entries idle at least `idle_ms` (None: every pending entry)."""
    pipe = client.pipeline(transaction=False)
    parts = list(cursors)
    for pk in parts:
        pipe.xpending_range(pk.queue_key, group, min=cursors[pk], max="+", count=SWEEP_PAGE,
                            idle=idle_ms)
    results = await pipe.execute(raise_on_error=False)
    out: dict[PartitionKeys, list[_Expired]] = {}
    for pk, res in zip(parts, results, strict=True):
        if isinstance(res, rex.ResponseError) and "NOGROUP" in str(res):
            continue  # the poller reports missing groups; nothing to sweep here
        _raise_first([res])
        out[pk] = [_Expired(pk, as_text(e["message_id"], errors="strict"),
                            as_text(e["consumer"], errors="strict"), int(e["times_delivered"]))
                   for e in res]
    return out


async def _entries(client: Any, expired: list[_Expired]) -> list[dict[str, str] | None]:
    """Each entry's fields, or None when it is no longer in the stream."""
    pipe = client.pipeline(transaction=False)
    for e in expired:
        pipe.xrange(e.keys.queue_key, e.id, e.id)
    results = await pipe.execute(raise_on_error=False)
    _raise_first(results)
    return [{as_text(k, errors="strict"): as_text(v, errors="strict") for k, v in r[0][1].items()}
            if r else None for r in results]


def _attempts(fields: dict[str, str]) -> int:
    try:
        return max(0, int(fields.get("a", "0")))
    except ValueError:
        return 0  # a malformed attempt field must not stop the sweep


async def _settle(client: Any, group: str, poison: list[tuple[_Expired, int, str]],
                  gone: list[_Expired], result: ReclaimResult) -> None:
    """Dead-letter `poison` (entry, deliveries, error) and ack `gone`, one pipeline."""
    if not poison and not gone:
        return
    now_ms = int(time.time() * 1000)
    pipe = client.pipeline(transaction=False)
    for e, deliveries, error in poison:
        calls.deadletter(e.keys, group, e.id, e.consumer, error, deliveries, now_ms).on(pipe)
    for e in gone:
        pipe.xack(e.keys.queue_key, group, e.id)
    results = await pipe.execute(raise_on_error=False)
    _raise_first(results)
    for (e, _, _), moved in zip(poison, results, strict=False):
        if int(moved):
            result.dead_lettered += 1
        else:  # trimmed between the sweep and the move: aq_deadletter acked it
            result.deleted_ids.append(e.id)
    result.deleted_ids.extend(e.id for e in gone)


async def reclaim(client: Any, partitions: Sequence[PartitionKeys], group: str,
                  visibility_timeout_ms: int, max_deliveries: int) -> ReclaimResult:
    """Sweep entries idle beyond the visibility timeout on every partition (see the
    module docstring): dead-letter the exhausted ones, ack the vanished ones, count the
    rest as handed back for redelivery; then dead-letter entries delivered more often
    than allowed, however recently. Needs the Functions library."""
    result = ReclaimResult()

    def expired(e: _Expired, attempts: int) -> str | None:
        if e.deliveries + attempts >= max_deliveries:
            return ""  # the entry's own last error, else TIMEOUT_ERROR
        result.reclaimed += 1
        return None

    def exceeded(e: _Expired, attempts: int) -> str | None:
        if not over_limit(e.deliveries, attempts, max_deliveries):
            return None
        return exceeded_reason(e.deliveries + attempts, max_deliveries)

    with translate_errors(f"sweep group {group!r}"):
        await _sweep(client, partitions, group, max(0, visibility_timeout_ms), 1, expired,
                     result)
        # Idle or not: a consumer that reclaims an entry as soon as it may (or sooner) and
        # never checks the count would otherwise get it again and again, and the pass
        # above never sees it idle. Only redelivered entries can be over the limit.
        await _sweep(client, partitions, group, None, 2, exceeded, result)
    return result


async def _sweep(client: Any, partitions: Sequence[PartitionKeys], group: str,
                 idle_ms: int | None, min_deliveries: int,
                 verdict: Callable[[_Expired, int], str | None],
                 result: ReclaimResult) -> None:
    """Page through pending entries idle at least `idle_ms` (None: all) and delivered at
    least `min_deliveries` times, oldest first, at most SWEEP_PAGE × SWEEP_PAGES per
    partition: ack those no longer in the stream, dead-letter those `verdict(entry,
    attempts)` names an error for ("": the entry's own last error, else
    TIMEOUT_ERROR)."""
    cursors = {pk: "-" for pk in partitions}
    for _ in range(SWEEP_PAGES):
        if not cursors:
            break
        pages = await _expired_page(client, cursors, group, idle_ms)
        found = [e for page in pages.values() for e in page if e.deliveries >= min_deliveries]
        fields = await _entries(client, found) if found else []
        poison: list[tuple[_Expired, int, str]] = []
        gone: list[_Expired] = []
        for e, f in zip(found, fields, strict=True):
            if f is None:
                gone.append(e)
                continue
            attempts = _attempts(f)
            error = verdict(e, attempts)
            if error is not None:
                poison.append((e, e.deliveries + attempts,
                               error or f.get("e") or TIMEOUT_ERROR))
        await _settle(client, group, poison, gone, result)
        cursors = {pk: f"({page[-1].id}" for pk, page in pages.items()
                   if len(page) == SWEEP_PAGE}


# KEYS[1] stream; ARGV group, idle ms. Deletes consumers idle longer than that with
# nothing pending, re-checked inside the script so no pending entry can be dropped.
_DELETE_DEAD = r"""
local ok, consumers = pcall(redis.call, 'XINFO', 'CONSUMERS', KEYS[1], ARGV[1])
if not ok then return 0 end
local idle_ms, n = tonumber(ARGV[2]), 0
for _, c in ipairs(consumers) do
  local f = {}
  for j = 1, #c, 2 do f[c[j]] = c[j + 1] end
  if f['pending'] == 0 and f['idle'] > idle_ms then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], f['name'])
    n = n + 1
  end
end
return n
"""


async def remove_dead_consumers(client: Any, partitions: Sequence[PartitionKeys], group: str,
                                idle_ms: int) -> int:
    """XGROUP DELCONSUMER for consumers idle beyond `idle_ms` with nothing pending, on
    every partition. Returns how many were removed."""
    with translate_errors(f"remove dead consumers of {group!r}"):
        pipe = client.pipeline(transaction=False)
        for pk in partitions:
            pipe.eval(_DELETE_DEAD, 1, pk.queue_key, group, max(0, idle_ms))
        results = await pipe.execute(raise_on_error=False)
    _raise_first(results)
    return sum(int(r) for r in results)
