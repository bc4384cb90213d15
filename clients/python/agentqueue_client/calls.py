"""The Functions library's calls, typed: the one place that knows each function's keys and
arguments (docs/protocol.md, docs/design.md "Functions"). The SDK, the operator and the
CLI build every FCALL here and send it with `Call.on` on a client or a pipeline; nothing
else writes FCALL arguments.

>>> from agentqueue_client.keys import PartitionKeys
>>> part = PartitionKeys("team-a", "jobs", 0)
>>> promote(part, now_ms=1_700_000_000_000, limit=100).argv()
['aq_promote', 2, 'aq:{team-a/jobs/0}:q', 'aq:{team-a/jobs/0}:retry', '1700000000000', '100']
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .keys import PartitionKeys

__all__ = ["PROMOTE_MAX", "Call", "deadletter", "enqueue", "nack", "promote", "version"]

PROMOTE_MAX = 1000
"""The largest `limit` aq_promote accepts."""


@dataclass(frozen=True)
class Call:
    """One FCALL (or FCALL_RO): the function, its keys, its arguments (as sent)."""

    function: str
    keys: tuple[str, ...]
    args: tuple[str | bytes, ...] = ()
    read_only: bool = False

    def argv(self) -> list[Any]:
        return [self.function, len(self.keys), *self.keys, *self.args]

    def on(self, target: Any) -> Any:
        """Send on a client (an awaitable reply) or queue on a pipeline."""
        if self.read_only:
            return target.fcall_ro(*self.argv())
        return target.fcall(*self.argv())


def _num(value: int) -> str:
    return str(int(value))


def enqueue(part: PartitionKeys, fields: Iterable[tuple[str | bytes, str | bytes]],
            ttl_ms: int, idempotency_key: str | None = None) -> Call:
    """``aq_enqueue``: XADD ``fields`` (name, value pairs) to the partition's stream; with
    an idempotency key, at most once per ``ttl_ms`` (reply ``[id, 0]``, or the first id
    and 1 for a duplicate)."""
    flat: list[str | bytes] = [x for kv in fields for x in kv]
    if not flat:
        raise ValueError("a message needs at least one field")
    keys = (part.queue_key,) if idempotency_key is None else (
        part.queue_key, part.idempotency(idempotency_key))
    return Call("aq_enqueue", keys, (_num(ttl_ms), *flat))


def nack(part: PartitionKeys, group: str, entry_id: str, due_ms: int, error: str,
         count: bool = True) -> Call:
    """``aq_nack``: schedule a retry at ``due_ms`` (attempt + 1, error set), then ack;
    ``count``: also HINCRBY the stats hash's ``retries`` (omitted only for ACL users of
    an operator older than the stats hash). Reply 1, or 0 if the entry was gone."""
    keys = (part.queue_key, part.retry, part.stats) if count else (part.queue_key, part.retry)
    return Call("aq_nack", keys, (group, entry_id, _num(due_ms), error))


def deadletter(part: PartitionKeys, group: str, entry_id: str, consumer: str, error: str,
               deliveries: int, now_ms: int) -> Call:
    """``aq_deadletter``: copy the entry with its ``x.*`` metadata to the dead-letter
    stream, then ack. Reply 1, or 0 if the entry was gone."""
    return Call("aq_deadletter", (part.queue_key, part.dead_letter),
                (group, entry_id, consumer, error, _num(deliveries), _num(now_ms)))


def promote(part: PartitionKeys, now_ms: int, limit: int) -> Call:
    """``aq_promote``: move up to ``limit`` retries due at ``now_ms`` back into the
    stream. Reply: how many moved."""
    if not 1 <= limit <= PROMOTE_MAX:
        raise ValueError(f"limit must be from 1 to {PROMOTE_MAX}")
    return Call("aq_promote", (part.queue_key, part.retry), (_num(now_ms), _num(limit)))


def version() -> Call:
    """``aq_version`` (read-only, keyless): the loaded library's version."""
    return Call("aq_version", (), read_only=True)
