"""Helpers shared by the tools: partitions and queue type from the metadata hash."""

from __future__ import annotations

import re
from typing import Any

from agentqueue_client import keys
from agentqueue_client.text import as_text

# C0 and C1 control characters, DEL, and the bidirectional overrides/isolates that
# reorder what a terminal shows ("Trojan Source"): tenant data must never drive it.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def printable(value: Any) -> str:
    """`value` as text safe to print on a terminal: escape sequences and other control
    characters are shown escaped (``\\x1b``), never passed to the terminal."""
    text = as_text(value) if value is not None else ""

    def esc(m: re.Match[str]) -> str:
        code = ord(m.group())
        return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"

    return _UNSAFE.sub(esc, text)


def as_bytes(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    return str(value).encode("utf-8", "surrogatepass")


async def queue_layout(client: Any, namespace: str, queue: str,
                       partitions: int | None = None) -> tuple[str, list[keys.PartitionKeys]]:
    """``(queue type, partition keys)`` from partition 0's metadata hash.

    ``partitions`` overrides the count; without metadata the queue is taken to be a
    one-partition Stream.
    """
    meta = keys.PartitionKeys(namespace, queue, 0).meta
    # Two HGETs, not HMGET: the observer role reads the metadata hash with HGET/HGETALL.
    async with client.pipeline(transaction=False) as pipe:
        pipe.hget(meta, "type")
        pipe.hget(meta, "partitions")
        qtype, count = await pipe.execute()
    qtype_s = as_text(qtype) if qtype is not None else "Stream"
    n = partitions
    if n is None:
        try:
            n = int(as_text(count)) if count is not None else 1
        except ValueError:
            n = 1
    return qtype_s, keys.partition_keys(namespace, queue, max(1, n))
