"""Peek at the head of a queue without consuming anything.

Stream: with ``group``, the next entries that group will be given (after its
last-delivered id); without, the oldest entries. List: the next elements in delivery
order (most urgent priority level first). PubSub stores nothing: always empty.
Uses only read commands (XINFO GROUPS, XRANGE, LRANGE): the observer role suffices.

>>> async def main(client) -> None:
...     for m in await peek(client, "team-a", "jobs", count=5, group="workers"):
...         print(m.partition, m.id, m.preview())
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from agentqueue_client.codec import decode_element, decode_fields
from agentqueue_client.errors import DecodeError
from agentqueue_client.text import as_text

from ._common import as_bytes, queue_layout


@dataclass(frozen=True)
class PeekedMessage:
    """A message as it waits in the queue. ``problem`` is set for an entry the
    consumers would reject (it is dead-lettered when read)."""

    partition: int
    id: str
    body: bytes
    idempotency_key: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    attempt: int = 0
    last_error: str | None = None
    priority: int = 0
    problem: str | None = None

    def preview(self, limit: int = 120) -> str:
        text = self.body.decode("utf-8", "replace")
        return text if len(text) <= limit else text[: limit - 1] + "…"

    def to_dict(self) -> dict[str, Any]:
        return {"partition": self.partition, "id": self.id, "payload": self.preview(10_000),
                "idempotencyKey": self.idempotency_key, "headers": self.headers,
                "attempt": self.attempt, "lastError": self.last_error,
                "priority": self.priority, "problem": self.problem}


def _from_fields(partition: int, entry_id: Any, raw: dict[Any, Any]) -> PeekedMessage:
    eid = as_text(entry_id)
    fields = {as_bytes(k): as_bytes(v) for k, v in raw.items()}
    try:
        env = decode_fields(fields)
    except DecodeError as exc:
        return PeekedMessage(partition, eid, fields.get(b"d", b""), problem=exc.reason)
    return PeekedMessage(partition, eid, env.body, env.idempotency_key, dict(env.headers),
                         env.attempt, env.error)


def _from_element(partition: int, raw: Any) -> PeekedMessage:
    data = as_bytes(raw)
    try:
        msg_id, priority, env = decode_element(data)
    except DecodeError as exc:
        return PeekedMessage(partition, "?", data, problem=exc.reason)
    return PeekedMessage(partition, msg_id, env.body, env.idempotency_key, dict(env.headers),
                         env.attempt, env.error, priority)


def _id_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    try:
        return int(ms), int(seq or 0)
    except ValueError:
        return (0, 0)


async def peek(client: Any, namespace: str, queue: str, *, count: int = 10,
               group: str | None = None, partition: int | None = None,
               partitions: int | None = None, priority_levels: int | None = None
               ) -> list[PeekedMessage]:
    """Up to ``count`` messages at the head of the queue, in delivery order."""
    qtype, parts = await queue_layout(client, namespace, queue, partitions)
    parts = [p for p in parts if partition is None or p.partition == partition]
    if qtype == "PubSub" or not parts:
        return []
    if qtype == "List":
        levels = priority_levels
        if levels is None:
            raw = await client.hget(parts[0].meta, "priorityLevels")
            levels = int(as_text(raw)) if raw is not None and as_text(raw).isdigit() else 1
        out: list[PeekedMessage] = []
        for level in range(max(1, levels)):
            for part in parts:
                elements = await client.lrange(part.priority_key(level), -count, -1)
                out.extend(_from_element(part.partition, e) for e in reversed(elements))
        return sorted(out, key=lambda m: m.priority)[:count]
    found: list[PeekedMessage] = []
    for part in parts:
        start = "-"
        if group is not None:
            groups = await client.xinfo_groups(part.queue_key)
            for g in groups:
                if as_text(g.get("name")) == group:
                    start = "(" + as_text(g.get("last-delivered-id"))
                    break
        entries = await client.xrange(part.queue_key, start, "+", count=count)
        found.extend(_from_fields(part.partition, eid, raw) for eid, raw in entries)
    return sorted(found, key=lambda m: _id_key(m.id))[:count]
