"""Stream queues: consumer-group reads, acks, reclaim, heartbeat, retry, dead-letter.

Every command names the keys of one partition only (one hash tag, one slot), so each
works on a Redis Cluster too, and the pipelines that span partitions are split per node
by redis-py's cluster pipeline (sent to the nodes concurrently). The one exception is
the read: a standalone server reads every partition in one ``XREADGROUP ... STREAMS``,
which a Cluster refuses (CROSSSLOT), so :class:`ClusterStreamBackend` reads partition by
partition.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Collection, Iterable, Sequence
from typing import Any

from . import calls, keys
from ._delivery import Delivery
from ._lists import StatsSwitch, is_noperm
from .codec import decode_fields
from .errors import DecodeError
from .text import as_text

log = logging.getLogger("agentqueue_client")


def _by_partition(items: Iterable[tuple[int, str]]) -> dict[int, list[str]]:
    out: dict[int, list[str]] = defaultdict(list)
    for partition, entry_id in items:
        out[partition].append(entry_id)
    return out


def _id_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


class StreamBackend:
    """All Redis calls of a Stream consumer. Stateless but for reclaim cursors.
    Implements :class:`~agentqueue_client._backend.Backend`; a handle is ``(partition,
    entry id)``."""

    settles = True
    releases = True

    def __init__(self, client: Any, group: str, consumer: str,
                 parts: Sequence[keys.PartitionKeys], max_payload_bytes: int) -> None:
        self.client = client
        self.group = group
        self.consumer = consumer
        self.parts = list(parts)
        self.max_payload_bytes = max_payload_bytes
        self._cursors: dict[int, str] = {}
        self.stats = StatsSwitch()

    def set_partitions(self, parts: Sequence[keys.PartitionKeys]) -> None:
        self.parts = list(parts)

    async def start(self) -> None:
        return None

    def _decode(self, partition: int, entry_id: Any, fields: Any,
                delivered: int) -> Delivery:
        eid = as_text(entry_id)
        try:
            env = decode_fields(fields, max_payload_bytes=self.max_payload_bytes)
        except DecodeError as exc:
            return Delivery(partition, eid, (partition, eid), None, exc.reason, delivered)
        return Delivery(partition, eid, (partition, eid), env, None, delivered)

    # --- reading ---------------------------------------------------------------------------

    async def read(self, count: int, block_ms: int,
                   acks: Sequence[tuple[int, str]]) -> list[Delivery]:
        """Ack ``acks`` and read up to ``count`` new entries per partition, blocking up to
        ``block_ms`` — one pipeline, one round trip."""
        streams = {p.queue_key: ">" for p in self.parts}
        index = {p.queue_key: i for i, p in enumerate(self.parts)}
        async with self.client.pipeline(transaction=False) as pipe:
            for partition, ids in _by_partition(acks).items():
                pipe.xack(self.parts[partition].queue_key, self.group, *ids)
            pipe.xreadgroup(self.group, self.consumer, streams, count=count,
                            block=max(1, block_ms))
            results = await pipe.execute()
        out: list[Delivery] = []
        for stream, entries in results[-1] or []:
            partition = index[as_text(stream)]
            for entry_id, fields in entries:
                out.append(self._decode(partition, entry_id, fields, 1))
        return out

    async def maintain(self, visibility_ms: int, count: int, held: Collection[tuple[int, str]],
                       acking: Collection[tuple[int, str]]) -> list[Delivery]:
        """Reclaim (see :meth:`reclaim`)."""
        return await self.reclaim(visibility_ms, count, set(held))

    async def reclaim(self, min_idle_ms: int, count: int,
                      held: set[tuple[int, str]]) -> list[Delivery]:
        """XAUTOCLAIM entries idle longer than ``min_idle_ms`` (any consumer's, e.g. a dead
        one's), then read their delivery counts (XPENDING) for the maxDeliveries check."""
        async with self.client.pipeline(transaction=False) as pipe:
            for i, part in enumerate(self.parts):
                pipe.xautoclaim(part.queue_key, self.group, self.consumer, min_idle_ms,
                                self._cursors.get(i, "0-0"), count=count)
            results = await pipe.execute()
        claimed: dict[int, list[tuple[str, Any]]] = {}
        for i, (cursor, entries, *rest) in enumerate(results):
            self._cursors[i] = as_text(cursor)
            deleted = rest[0] if rest else []
            if deleted:
                log.info("reclaim: %d trimmed entries dropped from the pending list of %s",
                         len(deleted), self.parts[i].queue_key)
            good = [(as_text(eid), f) for eid, f in entries if f is not None]
            if good:
                claimed[i] = good
        if not claimed:
            return []
        counts = await self._delivery_counts(
            {i: [eid for eid, _ in entries] for i, entries in claimed.items()}, held)
        out: list[Delivery] = []
        for i, entries in claimed.items():
            for eid, fields in entries:
                delivered = counts.get((i, eid))
                if delivered is None:
                    continue  # no longer ours: acked or dead-lettered meanwhile
                out.append(self._decode(i, eid, fields, delivered))
        if out:
            log.info("reclaimed %d entries idle longer than %d ms", len(out), min_idle_ms)
        return out

    async def _delivery_counts(self, ids: dict[int, list[str]],
                               held: set[tuple[int, str]]) -> dict[tuple[int, str], int]:
        """Delivery counts of our own pending entries ``ids`` (one XPENDING per partition)."""
        async with self.client.pipeline(transaction=False) as pipe:
            order = []
            for i, eids in ids.items():
                lo = min(eids, key=_id_key)
                hi = max(eids, key=_id_key)
                extra = sum(1 for p, _ in held if p == i)
                pipe.xpending_range(self.parts[i].queue_key, self.group, lo, hi,
                                    len(eids) + extra + 16, consumername=self.consumer)
                order.append(i)
            results = await pipe.execute()
        counts: dict[tuple[int, str], int] = {}
        for i, rows in zip(order, results, strict=True):
            for row in rows:
                counts[(i, as_text(row["message_id"]))] = int(row["times_delivered"])
        return counts

    # --- settling ----------------------------------------------------------------------------

    async def ack(self, acks: Sequence[tuple[int, str]]) -> None:
        async with self.client.pipeline(transaction=False) as pipe:
            for partition, ids in _by_partition(acks).items():
                pipe.xack(self.parts[partition].queue_key, self.group, *ids)
            await pipe.execute()

    async def nack(self, delivery: Delivery, due_ms: int, error: str) -> bool:
        """``aq_nack``, passing the stats hash so the retry is counted (the retry-rate
        SLO); without it after a NOPERM (ACL users of an operator older than this SDK:
        FCALL is denied before it runs, so nothing happened)."""
        part = self.parts[delivery.partition]
        entry_id = delivery.id
        if self.stats.on:
            try:
                return bool(await calls.nack(part, self.group, entry_id, due_ms, error)
                            .on(self.client))
            except Exception as exc:
                if not is_noperm(exc):
                    raise
                self.stats.denied()
        return bool(await calls.nack(part, self.group, entry_id, due_ms, error, count=False)
                    .on(self.client))

    async def deadletter(self, items: Sequence[tuple[Delivery, str, int]], now_ms: int,
                         enabled: bool) -> None:
        """Move entries to the dead-letter stream (or just ack them when the queue's
        dead-lettering is disabled)."""
        if not enabled:
            await self.ack([(d.partition, d.id) for d, _, _ in items])
            for d, reason, _ in items:
                log.warning("dropped entry %s (dead-lettering disabled): %s", d.id, reason)
            return
        async with self.client.pipeline(transaction=False) as pipe:
            for d, reason, deliveries in items:
                calls.deadletter(self.parts[d.partition], self.group, d.id, self.consumer,
                                 reason, deliveries, now_ms).on(pipe)
            await pipe.execute()
        for d, reason, _ in items:
            log.warning("dead-lettered entry %s of %s: %s", d.id,
                        self.parts[d.partition].queue_key, reason)

    # --- keeping messages ----------------------------------------------------------------------

    async def release(self, handles: Sequence[tuple[int, str]], idle_ms: int) -> None:
        """Hand entries we read but will not process back to the group now: their idle time
        is set to ``idle_ms`` (the visibility timeout), so the next XAUTOCLAIM of another
        consumer takes them, instead of them waiting out the timeout (a scale-down would
        otherwise strand every prefetched message for that long). ``JUSTID``: no delivery
        is counted for this."""
        async with self.client.pipeline(transaction=False) as pipe:
            for i, eids in _by_partition(handles).items():
                pipe.xclaim(self.parts[i].queue_key, self.group, self.consumer, 0, eids,
                            idle=idle_ms, justid=True)
            await pipe.execute()

    async def heartbeat(self, due: Sequence[tuple[int, str]]) -> set[tuple[int, str]]:
        """Reset the idle time of the entries ``due`` we still own; return those (others
        were reclaimed or dead-lettered by someone else and are lost to us).

        XPENDING (filtered to this consumer) first, so we never steal back an entry
        another consumer has already reclaimed; then ``XCLAIM <us> 0 <ids> JUSTID``,
        which resets the idle time without counting a delivery.
        """
        if not due:
            return set()
        wanted = _by_partition(due)
        owned: set[tuple[int, str]] = set()
        async with self.client.pipeline(transaction=False) as pipe:
            order = list(wanted)
            for i in order:
                eids = wanted[i]
                pipe.xpending_range(self.parts[i].queue_key, self.group,
                                    min(eids, key=_id_key), max(eids, key=_id_key),
                                    len(eids) + 1024, consumername=self.consumer)
            results = await pipe.execute()
        for i, rows in zip(order, results, strict=True):
            mine = {as_text(r["message_id"]) for r in rows}
            owned.update((i, e) for e in wanted[i] if e in mine)
        if owned:
            async with self.client.pipeline(transaction=False) as pipe:
                for i, eids in _by_partition(owned).items():
                    pipe.xclaim(self.parts[i].queue_key, self.group, self.consumer, 0, eids,
                                justid=True)
                await pipe.execute()
        return owned

    async def promote(self, now_ms: int, limit: int) -> int:
        """Move due retries back into the streams (``aq_promote``); returns how many."""
        total = 0
        for _ in range(10):
            async with self.client.pipeline(transaction=False) as pipe:
                for part in self.parts:
                    calls.promote(part, now_ms, limit).on(pipe)
                moved = [int(n) for n in await pipe.execute()]
            total += sum(moved)
            if max(moved, default=0) < limit:
                break
        return total

    async def drain(self, timeout: float | None = None) -> list[Delivery]:
        """Entries read but not handed out yet (only the Cluster backend has any)."""
        return []

    async def close(self) -> None:
        return None


MAX_BLOCKING_READS = 64
"""At most this many partitions wait in a blocking read at once on a Cluster (one
connection each); the others are read without blocking on every call."""


class ClusterStreamBackend(StreamBackend):
    """A Stream consumer on a Redis Cluster: a cross-slot ``XREADGROUP`` is refused, so
    each partition is read with its own.

    A read first sends the acks and a non-blocking ``XREADGROUP`` of every partition that
    has no blocking read in flight, in one cluster pipeline (one round trip per node, the
    nodes concurrently). When that finds nothing, it starts a blocking ``XREADGROUP`` on
    each of those partitions (each its own task and connection) and returns as soon as
    one brings entries. The others are not cancelled (a cancelled read could lose a reply
    whose entries Redis already marked as delivered to us): they stay in flight and what
    they bring is returned by a later read, or released by :meth:`drain` at close.
    Entries collected by a read that then fails or is cancelled are kept for the next
    read (or :meth:`drain`), never dropped.
    """

    def __init__(self, client: Any, group: str, consumer: str,
                 parts: Sequence[keys.PartitionKeys], max_payload_bytes: int) -> None:
        super().__init__(client, group, consumer, parts, max_payload_bytes)
        self._blocking: dict[int, asyncio.Task[Any]] = {}
        self._carry: list[Delivery] = []
        self._start = 0
        self._block_s = 1.0

    def _collect(self) -> BaseException | None:
        """Move what the finished blocking reads brought to the carry; return the first
        error among them (their partitions are read again by the next call)."""
        error: BaseException | None = None
        for i, task in [(i, t) for i, t in self._blocking.items() if t.done()]:
            del self._blocking[i]
            if task.cancelled():
                continue
            exc = task.exception()
            if exc is not None:
                error = error or exc
            elif i < len(self.parts):  # else the queue lost partitions meanwhile (never)
                self._add(i, task.result())
        return error

    def _add(self, partition: int, reply: Any) -> None:
        for _stream, entries in reply or []:
            for entry_id, fields in entries:
                self._carry.append(self._decode(partition, entry_id, fields, 1))

    def _take(self) -> list[Delivery]:
        out, self._carry = self._carry, []
        return out

    async def read(self, count: int, block_ms: int,
                   acks: Sequence[tuple[int, str]]) -> list[Delivery]:
        error = self._collect()
        idle = [i for i in range(len(self.parts)) if i not in self._blocking]
        if acks or idle:
            async with self.client.pipeline(transaction=False) as pipe:
                for partition, ids in _by_partition(acks).items():
                    pipe.xack(self.parts[partition].queue_key, self.group, *ids)
                for i in idle:
                    pipe.xreadgroup(self.group, self.consumer,
                                    {self.parts[i].queue_key: ">"}, count=count)
                results = await pipe.execute()
            for i, reply in zip(idle, results[len(results) - len(idle):], strict=True):
                self._add(i, reply)
        if self._carry:
            if error is not None:
                log.info("a blocking read failed (%s); returning the other partitions' "
                         "entries", type(error).__name__)
            return self._take()
        if error is not None:
            raise error
        # Nothing anywhere: wait on every partition at once, up to block_ms.
        self._block_s = max(1, block_ms) / 1000
        start = self._start % max(1, len(idle))
        self._start += 1
        room = max(0, MAX_BLOCKING_READS - len(self._blocking))
        for i in (idle[start:] + idle[:start])[:room]:
            self._blocking[i] = asyncio.ensure_future(self.client.xreadgroup(
                self.group, self.consumer, {self.parts[i].queue_key: ">"}, count=count,
                block=max(1, block_ms)))
        if self._blocking:
            await asyncio.wait(set(self._blocking.values()), timeout=self._block_s + 0.05,
                               return_when=asyncio.FIRST_COMPLETED)
        error = self._collect()
        if error is not None and not self._carry:
            raise error
        return self._take()

    async def drain(self, timeout: float | None = None) -> list[Delivery]:
        """Wait for the blocking reads still in flight (at most their block time, or
        ``timeout``) and return every entry read but not handed out yet, for the
        consumer to release; reads still waiting after that are cancelled."""
        if self._blocking:
            await asyncio.wait(set(self._blocking.values()),
                               timeout=self._block_s + 0.5 if timeout is None else timeout)
        self._collect()
        for task in self._blocking.values():
            task.cancel()
        self._blocking.clear()
        return self._take()
