"""List queues: the reliable-queue pattern.

* Read: ``LMOVE <level key> <processing list> RIGHT LEFT`` (oldest first, priority level
  0 first), pipelined; when every list is empty, one ``BLMOVE`` with a short timeout on a
  rotating partition's level-0 key (a message on another key waits at most that long).
* Ack: ``LREM <processing list> 1 <element>``.
* Visibility (a timestamp): every read, and every ``visibility/6`` while it holds
  messages, a consumer records ``now`` as its score in the partition's sorted set
  ``aq:{ns/q/p}:proc:#consumers``. A consumer whose timestamp is older than the
  visibility timeout is dead: any consumer moves the elements of its processing list back
  to the head of the queue (WATCH/MULTI: never lost, never duplicated), with the attempt
  ``a`` incremented so a message that kills every consumer ends in the dead-letter
  stream, then removes it from the set. A consumer also recovers its own processing list
  at start (a restarted pod with the same name). Timestamps come from the consumers'
  clocks: keep their skew well below the visibility timeout (NTP).
* Nack: WATCH/MULTI moving the element (``a`` + 1, ``e`` = error) from the processing
  list to the retry sorted set; promotion moves due ones back (LPUSH, the queue's tail).
* Dead-letter: WATCH/MULTI moving it to the dead-letter stream with ``x.*`` metadata.
* Counting (the operator's retry-rate SLO): ``HINCRBY <stats> retries 1`` in the nack's
  MULTI, and ``HINCRBY <stats> deliveries <n>`` for the elements read, sent with the
  next pipeline this consumer runs anyway (the next read, ack or nack; the nack's MULTI
  carries it, so a retry is never counted before its delivery) and on close: no extra
  round trip. Best effort: what a crashed consumer read but had not reported is not
  counted. Under an operator older than this SDK (no permission on the stats key:
  ``NOPERM``) counting is skipped, and tried again after :data:`STATS_RECHECK_S`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
import zlib
from collections.abc import Collection, Sequence
from typing import Any

from redis.exceptions import NoPermissionError, WatchError

from . import keys
from ._delivery import Delivery
from .codec import Envelope, decode_element, encode_element, encode_fields
from .errors import DecodeError
from .text import as_text

log = logging.getLogger("agentqueue_client")

_WATCH_RETRIES = 50
STATS_RECHECK_S = 300.0
"""After a NOPERM on the stats hash, count nothing for this long, then try again."""


class StatsSwitch:
    """Whether a consumer counts in the partitions' stats hashes: not for a while after
    Redis denied it (ACL users of an operator older than this SDK), then again."""

    def __init__(self) -> None:
        self._off_until = 0.0

    @property
    def on(self) -> bool:
        return time.monotonic() >= self._off_until

    def denied(self) -> None:
        if self.on:
            log.info("not counting retries for the retry-rate SLO: no permission on the "
                     "stats key (an operator older than this SDK?)")
        self._off_until = time.monotonic() + STATS_RECHECK_S


def is_noperm(exc: BaseException) -> bool:
    return isinstance(exc, NoPermissionError) or "NOPERM" in str(exc)[:200]


def consumers_key(part: keys.PartitionKeys) -> str:
    """Sorted set: consumer name → last heartbeat (ms). Matches the ``proc:*`` pattern;
    consumer names cannot start with ``#``, so it is never a processing list."""
    return part.processing("#consumers")


def dead_letter_fields(raw: bytes, envelope: Envelope | None, message_id: str, priority: int,
                       *, group: str, consumer: str, reason: str, deliveries: int,
                       now_ms: int) -> dict[str, Any]:
    """The dead-letter stream entry of a List element (docs/protocol.md 4.3): its envelope
    as stream fields (a malformed element: its raw bytes as ``d``), its level as ``p``,
    and the ``x.*`` metadata. The consumers' and the operator's sweep's."""
    if envelope is None:
        try:
            envelope = decode_element(raw)[2]
        except DecodeError:
            envelope = Envelope(body=raw)
    fields: dict[str, Any] = dict(encode_fields(envelope))
    if priority:
        fields["p"] = str(priority)
    fields.update({"x.id": message_id, "x.deliveries": str(deliveries), "x.group": group,
                   "x.consumer": consumer, "x.error": reason, "x.time": str(now_ms)})
    return fields


def _now_ms() -> int:
    return int(time.time() * 1000)


class ListBackend:
    """All Redis calls of a List consumer. Implements
    :class:`~agentqueue_client._backend.Backend`; a handle is ``(partition, element)``."""

    settles = True
    releases = False  # unstarted elements stay in our processing list: recovered later

    def __init__(self, client: Any, group: str, consumer: str,
                 parts: Sequence[keys.PartitionKeys], max_payload_bytes: int,
                 priority_levels: int) -> None:
        self.client = client
        self.group = group
        self.consumer = consumer
        self.parts = list(parts)
        self.max_payload_bytes = max_payload_bytes
        self.levels = max(1, priority_levels)
        self._rotate = 0
        self._suspects: set[tuple[int, bytes]] = set()
        self.stats = StatsSwitch()
        self._unreported: dict[str, int] = {}  # stats key -> deliveries not yet counted

    def set_partitions(self, parts: Sequence[keys.PartitionKeys]) -> None:
        self.parts = list(parts)

    async def start(self) -> None:
        await self.recover_own()

    def _decode(self, partition: int, raw: bytes) -> Delivery:
        try:
            msg_id, priority, env = decode_element(raw, max_payload_bytes=self.max_payload_bytes)
        except DecodeError as exc:
            return Delivery(partition, f"raw:{zlib.crc32(raw):08x}", (partition, raw), None,
                            exc.reason, 1)
        return Delivery(partition, msg_id, (partition, raw), env, None, 1, priority)

    # --- reading -------------------------------------------------------------------------------

    async def read(self, count: int, block_ms: int, acks: Sequence[Any]) -> list[Delivery]:
        per_partition = max(1, math.ceil(count / len(self.parts)))
        order: list[int] = []
        async with self.client.pipeline(transaction=False) as pipe:
            counted = self._queue_counts(pipe)
            self._queue_acks(pipe, acks)
            now = _now_ms()
            for part in self.parts:
                pipe.zadd(consumers_key(part), {self.consumer: now})
            for i, part in enumerate(self.parts):
                proc = part.processing(self.consumer)
                for level in range(self.levels):
                    for _ in range(per_partition):
                        pipe.lmove(part.priority_key(level), proc, "RIGHT", "LEFT")
                        order.append(i)
            results = await pipe.execute(raise_on_error=False)
        self._check_counts(results[:counted])
        _raise_first_error(results[counted:])
        moved = results[len(results) - len(order):]
        out = [self._decode(i, raw) for i, raw in zip(order, moved, strict=True)
               if raw is not None]
        for d in out:
            self._count(self.parts[d.partition].stats)
        if out:
            return sorted(out, key=lambda d: d.priority)
        # Everything empty: block briefly on one partition's most urgent list.
        self._rotate = (self._rotate + 1) % len(self.parts)
        part = self.parts[self._rotate]
        raw = await self.client.blmove(part.priority_key(0), part.processing(self.consumer),
                                       min(block_ms, 250) / 1000, "RIGHT", "LEFT")
        if raw is None:
            return []
        self._count(part.stats)
        await self.client.zadd(consumers_key(part), {self.consumer: _now_ms()})
        return [self._decode(self._rotate, raw)]

    def _queue_acks(self, pipe: Any, acks: Sequence[Any]) -> None:
        for partition, raw in acks:
            pipe.lrem(self.parts[partition].processing(self.consumer), 1, raw)

    async def ack(self, acks: Sequence[Any]) -> None:
        async with self.client.pipeline(transaction=False) as pipe:
            counted = self._queue_counts(pipe)
            self._queue_acks(pipe, acks)
            results = await pipe.execute(raise_on_error=False)
        self._check_counts(results[:counted])
        _raise_first_error(results[counted:])

    # --- counting deliveries (the retry-rate SLO) ---------------------------------------------

    def _count(self, stats_key: str, n: int = 1) -> None:
        if n > 0 and self.stats.on:
            self._unreported[stats_key] = self._unreported.get(stats_key, 0) + n

    def _queue_counts(self, pipe: Any) -> int:
        """Queue the unreported deliveries first in ``pipe``; how many commands."""
        counts, self._unreported = self._unreported, {}
        if not self.stats.on:
            return 0
        for key, n in counts.items():
            pipe.hincrby(key, "deliveries", n)
        return len(counts)

    def _check_counts(self, results: Sequence[Any]) -> None:
        """Counting never fails a read or an ack: a denied count switches counting off
        for a while, other errors (a stats key of another type) lose that count."""
        for res in results:
            if isinstance(res, Exception):
                if is_noperm(res):
                    self.stats.denied()
                else:
                    log.debug("could not count deliveries: %s", res)

    async def heartbeat(self, due: Sequence[Any]) -> set[Any]:
        """Record that this consumer is alive (it holds messages). Liveness is one
        timestamp per consumer, not per message: every message ``due`` is still ours."""
        now = _now_ms()
        async with self.client.pipeline(transaction=False) as pipe:
            for part in self.parts:
                pipe.zadd(consumers_key(part), {self.consumer: now})
            await pipe.execute()
        return set(due)

    # --- moving one element atomically ------------------------------------------------------

    async def _move(self, partition: int, raw: bytes, then: Any) -> bool:
        """WATCH the processing list; if ``raw`` is still in it, remove it and run
        ``then(pipe)`` in the same MULTI. False if it was gone (recovered elsewhere)."""
        proc = self.parts[partition].processing(self.consumer)
        async with self.client.pipeline(transaction=True) as pipe:
            for _ in range(_WATCH_RETRIES):
                try:
                    await pipe.watch(proc)
                    if await pipe.lpos(proc, raw) is None:
                        return False
                    pipe.multi()
                    pipe.lrem(proc, 1, raw)
                    then(pipe)
                    await pipe.execute()
                    return True
                except WatchError:
                    continue
        raise WatchError(f"processing list {proc} kept changing")

    async def nack(self, delivery: Delivery, due_ms: int, error: str) -> bool:
        partition = delivery.partition
        _, raw = delivery.handle
        try:
            msg_id, priority, env = decode_element(raw)
        except DecodeError:
            return False
        retried = encode_element(dataclasses.replace(env, attempt=env.attempt + 1,
                                                     error=error), msg_id, priority)
        part = self.parts[partition]

        def schedule(pipe: Any) -> None:
            pipe.zadd(part.retry, {retried: due_ms})

        if not self.stats.on:
            return await self._move(partition, raw, schedule)
        delivered = self._unreported.pop(part.stats, 0)

        def schedule_and_count(pipe: Any) -> None:
            schedule(pipe)
            pipe.hincrby(part.stats, "retries", 1)
            if delivered:
                pipe.hincrby(part.stats, "deliveries", delivered)

        try:
            done = await self._move(partition, raw, schedule_and_count)
        except BaseException as exc:
            if not is_noperm(exc):
                self._count(part.stats, delivered)
                raise
            # MULTI was aborted as a whole (EXECABORT): nothing moved; again, uncounted.
            self.stats.denied()
            return await self._move(partition, raw, schedule)
        if not done:
            self._count(part.stats, delivered)
        return done

    async def deadletter(self, items: Sequence[tuple[Delivery, str, int]], now_ms: int,
                         enabled: bool) -> None:
        for d, reason, deliveries in items:
            _, raw = d.handle
            part = self.parts[d.partition]
            fields = dead_letter_fields(raw, d.envelope, d.id, d.priority, group=self.group,
                                        consumer=self.consumer, reason=reason,
                                        deliveries=deliveries, now_ms=now_ms)
            if enabled:
                await self._move(d.partition, raw,
                                 lambda pipe, f=fields, k=part.dead_letter: pipe.xadd(k, f))
                log.warning("dead-lettered %s of %s: %s", d.id, part.queue_key, reason)
            else:
                await self._move(d.partition, raw, lambda pipe: None)
                log.warning("dropped %s (dead-lettering disabled): %s", d.id, reason)

    # --- retries ----------------------------------------------------------------------------

    async def promote(self, now_ms: int, limit: int) -> int:
        total = 0
        for part in self.parts:
            async with self.client.pipeline(transaction=True) as pipe:
                try:
                    await pipe.watch(part.retry)
                    due = await pipe.zrange(part.retry, "-inf", now_ms, byscore=True,
                                            offset=0, num=limit)
                    if not due:
                        continue
                    pipe.multi()
                    pipe.zrem(part.retry, *due)
                    for member in due:
                        try:
                            level = decode_element(member)[1]
                        except DecodeError:
                            level = 0
                        pipe.lpush(part.priority_key(min(level, self.levels - 1)), member)
                    await pipe.execute()
                    total += len(due)
                except WatchError:
                    continue  # another consumer promoted them
        return total

    # --- recovery of dead consumers' processing lists ----------------------------------------

    async def recover_own(self) -> None:
        """Put back what a previous process with our name left in our processing lists."""
        for i, part in enumerate(self.parts):
            await self._recover_list(i, part.processing(self.consumer), self.consumer)

    async def maintain(self, visibility_ms: int, count: int, held: Collection[Any],
                       acking: Collection[Any]) -> list[Delivery]:
        """Recover (see :meth:`recover`): recovered messages go back to the queue, none
        is returned. Elements held or being acked are not orphans."""
        await self.recover(visibility_ms, {raw for _, raw in (*held, *acking)})
        return []

    async def recover(self, visibility_ms: int, kept: set[bytes]) -> int:
        """Recover the processing lists of consumers silent for longer than
        ``visibility_ms``, and our own orphans; returns how many messages went back."""
        moved = await self._recover_orphans(kept)
        deadline = _now_ms() - visibility_ms
        for i, part in enumerate(self.parts):
            dead = await self.client.zrange(consumers_key(part), "-inf", f"({deadline}",
                                            byscore=True, offset=0, num=100)
            for raw_name in dead:
                owner = as_text(raw_name)
                if owner == self.consumer:
                    continue
                moved += await self._recover_list(i, part.processing(owner), owner)
                # Forget it. If it was only slow, its next heartbeat adds it back.
                await self.client.zrem(consumers_key(part), raw_name)
        return moved

    async def _recover_orphans(self, kept: set[bytes]) -> int:
        """Elements in our own processing list that we do not hold (a read whose reply
        was lost to a timeout or a cancellation) go back to the queue unchanged. Only
        those seen as orphans on two passes in a row: a read in flight is never raced."""
        moved = 0
        suspects: set[tuple[int, bytes]] = set()
        for i, part in enumerate(self.parts):
            proc = part.processing(self.consumer)
            elements = await self.client.lrange(proc, 0, 999)
            orphans = {(i, raw) for raw in elements if raw not in kept}
            suspects |= orphans
            confirmed = [raw for j, raw in orphans & self._suspects if j == i]
            if confirmed:
                async with self.client.pipeline(transaction=True) as pipe:
                    for raw in confirmed:
                        pipe.lrem(proc, 1, raw)
                        try:
                            level = min(decode_element(raw)[1], self.levels - 1)
                        except DecodeError:
                            level = 0
                        pipe.rpush(part.priority_key(level), raw)
                    await pipe.execute()
                moved += len(confirmed)
                log.warning("returned %d orphaned messages of our own processing list",
                            len(confirmed))
        self._suspects = suspects
        return moved

    async def _recover_list(self, partition: int, proc: str, owner: str) -> int:
        part = self.parts[partition]
        moved = 0
        async with self.client.pipeline(transaction=True) as pipe:
            for _ in range(_WATCH_RETRIES):
                try:
                    await pipe.watch(proc)
                    elements = await pipe.lrange(proc, -100, -1)
                    if not elements:
                        return moved
                    pipe.multi()
                    for raw in elements:  # newest first: the oldest ends at the head
                        pipe.lrem(proc, 1, raw)
                        level, back = self._recovered(raw, owner)
                        pipe.rpush(part.priority_key(level), back)
                    await pipe.execute()
                    moved += len(elements)
                    log.warning("recovered %d messages of consumer %s (visibility timeout)",
                                len(elements), owner)
                except WatchError:
                    continue
        return moved

    def _recovered(self, raw: bytes, owner: str) -> tuple[int, bytes]:
        try:
            msg_id, priority, env = decode_element(raw)
        except DecodeError:
            return 0, raw  # the next reader dead-letters it
        env = dataclasses.replace(env, attempt=env.attempt + 1,
                                  error=f"consumer {owner} timed out (visibility timeout)")
        return min(priority, self.levels - 1), encode_element(env, msg_id, priority)

    async def release(self, handles: Sequence[Any], idle_ms: int) -> None:
        return None

    async def drain(self, timeout: float | None = None) -> list[Delivery]:
        return []

    async def close(self) -> None:
        """Report the deliveries not counted yet."""
        if not self._unreported or not self.stats.on:
            return
        async with self.client.pipeline(transaction=False) as pipe:
            counted = self._queue_counts(pipe)
            results = await pipe.execute(raise_on_error=False)
        self._check_counts(results[:counted])


def _raise_first_error(results: Sequence[Any]) -> None:
    """What ``execute()`` would have raised (results gathered with raise_on_error=False)."""
    for res in results:
        if isinstance(res, Exception):
            raise res
