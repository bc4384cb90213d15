"""Dead-letter queue tools: list, show, replay, purge.

Every partition has its own dead-letter stream (``aq:{ns/q/p}:dlq``). An entry keeps
the message's envelope fields and adds ``x.id``, ``x.deliveries``, ``x.group``,
``x.consumer``, ``x.error`` and ``x.time`` (docs/design.md). Entries are referred to as
``<partition>/<entry id>``; a bare entry id is looked up in every partition.

``client`` is a ``redis.asyncio`` client with read/write access to the queue's keys.
Binary payloads survive only with ``decode_responses=False`` (the SDK's default).

>>> async def main(client) -> None:
...     letters = await dlq_list(client, "team-a", "jobs")
...     result = await dlq_replay(client, "team-a", "jobs", [letters[0].ref])
...     await dlq_purge(client, "team-a", "jobs", "all")
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from agentqueue_client import keys
from agentqueue_client.codec import (
    DLQ_PREFIX,
    ELEMENT_PRIORITY,
    HEADERS,
    KEY,
    PAYLOAD,
    Envelope,
    encode_element,
)
from agentqueue_client.text import as_text

from ._common import as_bytes, queue_layout

# Fields a replay drops besides x.*: the attempt counter and last error (a replay is a
# fresh start with the full maxDeliveries), and the List priority (not a stream field).
_RESET_FIELDS = frozenset({"a", "e", ELEMENT_PRIORITY})


@dataclass(frozen=True)
class DeadLetter:
    """One dead-lettered message."""

    partition: int
    dlq_id: str
    original_id: str | None
    group: str | None
    consumer: str | None
    error: str | None
    deliveries: int | None
    time_ms: int | None
    fields: dict[str, bytes] = field(repr=False)

    @property
    def ref(self) -> str:
        """``<partition>/<entry id>``: what the other tools accept."""
        return f"{self.partition}/{self.dlq_id}"

    @property
    def payload(self) -> bytes:
        return self.fields.get(PAYLOAD, b"")

    @property
    def idempotency_key(self) -> str | None:
        key = self.fields.get(KEY)
        return as_text(key) if key is not None else None

    def preview(self, limit: int = 120) -> str:
        """The payload as text, shortened (for tables)."""
        text = self.payload.decode("utf-8", "replace")
        return text if len(text) <= limit else text[: limit - 1] + "…"

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form (payload as text, replacement characters for bad UTF-8)."""
        return {"ref": self.ref, "partition": self.partition, "id": self.dlq_id,
                "originalId": self.original_id, "group": self.group,
                "consumer": self.consumer, "error": self.error,
                "deliveries": self.deliveries, "time": self.time_ms,
                "idempotencyKey": self.idempotency_key,
                "fields": {k: v.decode("utf-8", "replace") for k, v in self.fields.items()}}


@dataclass
class ReplayResult:
    """What :func:`dlq_replay` did: ``replayed`` maps each ref to the new message id."""

    replayed: dict[str, str] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.replayed)


def _int(value: bytes | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _letter(partition: int, entry_id: Any, raw: dict[Any, Any]) -> DeadLetter:
    all_fields = {as_text(k): as_bytes(v) for k, v in raw.items()}
    meta = {k: v for k, v in all_fields.items() if k.startswith(DLQ_PREFIX)}
    body = {k: v for k, v in all_fields.items() if not k.startswith(DLQ_PREFIX)}

    def opt(name: str) -> str | None:
        value = meta.get(name)
        return as_text(value) if value is not None else None

    return DeadLetter(partition=partition, dlq_id=as_text(entry_id),
                      original_id=opt("x.id"), group=opt("x.group"),
                      consumer=opt("x.consumer"), error=opt("x.error"),
                      deliveries=_int(meta.get("x.deliveries")),
                      time_ms=_int(meta.get("x.time")), fields=body)


def parse_ref(ref: str) -> tuple[int | None, str]:
    """``"2/1700000000000-0"`` → ``(2, "1700000000000-0")``; a bare id → ``(None, id)``."""
    head, sep, tail = ref.partition("/")
    if sep:
        if not head.isdigit():
            raise ValueError(f"bad dead-letter reference {ref!r}: want <partition>/<id>")
        return int(head), tail
    return None, ref


async def dlq_list(client: Any, namespace: str, queue: str, *, count: int = 100,
                   partition: int | None = None, partitions: int | None = None,
                   start: str = "-") -> list[DeadLetter]:
    """Up to ``count`` dead letters per partition, oldest first (all partitions unless
    ``partition``), sorted by time."""
    _, parts = await queue_layout(client, namespace, queue, partitions)
    chosen = [p for p in parts if partition is None or p.partition == partition]
    async with client.pipeline(transaction=False) as pipe:
        for part in chosen:
            pipe.xrange(part.dead_letter, start, "+", count=count)
        results = await pipe.execute()
    out = [_letter(part.partition, eid, raw)
           for part, entries in zip(chosen, results, strict=True) for eid, raw in entries]
    return sorted(out, key=lambda d: (d.time_ms or 0, d.partition, d.dlq_id))


async def _find(client: Any, parts: Sequence[keys.PartitionKeys],
                ref: str) -> DeadLetter | None:
    """The dead letter ``ref`` points to; a bare id found in several partitions (ids are
    per partition) raises ValueError rather than picking one."""
    partition, entry_id = parse_ref(ref)
    chosen = [p for p in parts if partition is None or p.partition == partition]
    async with client.pipeline(transaction=False) as pipe:
        for part in chosen:
            pipe.xrange(part.dead_letter, entry_id, entry_id, count=1)
        found = [(part, entries[0]) for part, entries
                 in zip(chosen, await pipe.execute(), strict=True) if entries]
    if len(found) > 1:
        raise ValueError(f"dead-letter id {entry_id} exists in partitions "
                         f"{', '.join(str(p.partition) for p, _ in found)}: "
                         "use <partition>/<id>")
    if not found:
        return None
    part, (eid, raw) = found[0]
    return _letter(part.partition, eid, raw)


async def dlq_show(client: Any, namespace: str, queue: str, ref: str, *,
                   partitions: int | None = None) -> DeadLetter | None:
    """One dead letter by reference (``<partition>/<id>`` or a bare id); None if absent.
    A bare id present in several partitions raises ValueError."""
    _, parts = await queue_layout(client, namespace, queue, partitions)
    return await _find(client, parts, ref)


def _replay_fields(letter: DeadLetter) -> dict[str, bytes]:
    return {k: v for k, v in letter.fields.items() if k not in _RESET_FIELDS}


async def _replay_batch(client: Any, qtype: str, part: keys.PartitionKeys,
                        letters: Sequence[DeadLetter], result: ReplayResult) -> None:
    """Move letters back in one MULTI/EXEC: the XADD/LPUSH and the XDEL happen together."""
    new_ids: list[str | None] = []
    async with client.pipeline(transaction=True) as pipe:
        for letter in letters:
            fields = _replay_fields(letter)
            if qtype == "List":
                new_id = letter.original_id or f"{int(time.time() * 1000)}-replay"
                priority = _int(letter.fields.get(ELEMENT_PRIORITY)) or 0
                headers = fields.get(HEADERS)
                env = Envelope(
                    body=fields.get(PAYLOAD, b""),
                    idempotency_key=as_text(fields[KEY]) if KEY in fields else None,
                    headers=_headers(headers))
                pipe.lpush(part.priority_key(priority), encode_element(env, new_id, priority))
                new_ids.append(new_id)
            else:
                pipe.xadd(part.queue_key, fields)
                new_ids.append(None)
            pipe.xdel(part.dead_letter, letter.dlq_id)
        replies = await pipe.execute()
    for i, letter in enumerate(letters):
        new_id = new_ids[i] or as_text(replies[2 * i])
        result.replayed[letter.ref] = new_id


def _headers(raw: bytes | None) -> dict[str, str]:
    if raw is None:
        return {}
    try:
        obj = json.loads(raw)
    except ValueError:
        return {}
    if isinstance(obj, dict) and all(isinstance(v, str) for v in obj.values()):
        return {str(k): v for k, v in obj.items()}
    return {}


async def dlq_replay(client: Any, namespace: str, queue: str,
                     ids: Sequence[str] | Literal["all"], *, partitions: int | None = None,
                     batch: int = 100) -> ReplayResult:
    """Move dead letters back into the queue, as fresh messages.

    The idempotency key (``k``) and headers are kept; ``x.*``, the attempt counter ``a``
    and the last error ``e`` are stripped, so the message gets its full maxDeliveries.
    It is written directly (not through ``aq_enqueue``): the idempotency key that the
    original send stored must not drop the replay. Each batch moves atomically
    (MULTI/EXEC of XADD and XDEL on one partition): a crash never loses or duplicates
    one. ``"all"`` replays what was in the dead-letter queue when the call started
    (messages that fail again meanwhile are not replayed twice).
    """
    qtype, parts = await queue_layout(client, namespace, queue, partitions)
    result = ReplayResult()
    if ids == "all":
        for part in parts:
            last = await client.xrevrange(part.dead_letter, "+", "-", count=1)
            if not last:
                continue
            end = as_text(last[0][0])
            start = "-"
            while True:
                entries = await client.xrange(part.dead_letter, start, end, count=batch)
                if not entries:
                    break
                letters = [_letter(part.partition, eid, raw) for eid, raw in entries]
                await _replay_batch(client, qtype, part, letters, result)
                start = "(" + letters[-1].dlq_id
        return result
    by_part: dict[int, list[DeadLetter]] = {}
    for ref in ids:
        letter = await _find(client, parts, ref)
        if letter is None:
            result.missing.append(ref)
            continue
        by_part.setdefault(letter.partition, []).append(letter)
    for partition, letters in by_part.items():
        for i in range(0, len(letters), batch):
            await _replay_batch(client, qtype, parts[partition], letters[i:i + batch], result)
    return result


async def dlq_purge(client: Any, namespace: str, queue: str,
                    ids: Sequence[str] | Literal["all"], *,
                    partitions: int | None = None) -> int:
    """Delete dead letters for good; returns how many. ``"all"`` empties every
    partition's dead-letter stream (XTRIM MAXLEN 0: the key stays); a bare id deletes
    that id in every partition that has it."""
    _, parts = await queue_layout(client, namespace, queue, partitions)
    if ids == "all":
        async with client.pipeline(transaction=False) as pipe:
            for part in parts:
                pipe.xtrim(part.dead_letter, maxlen=0, approximate=False)
            return sum(int(n) for n in await pipe.execute())
    deleted = 0
    for ref in ids:
        partition, entry_id = parse_ref(ref)
        for part in parts:
            if partition is None or part.partition == partition:
                deleted += int(await client.xdel(part.dead_letter, entry_id))
    return deleted
