"""Helpers shared by the tools: partitions and queue type from the metadata hash."""

from __future__ import annotations

from typing import Any

from .. import keys


def as_bytes(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    return str(value).encode("utf-8", "surrogatepass")


def as_text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


async def queue_layout(client: Any, namespace: str, queue: str,
                       partitions: int | None = None) -> tuple[str, list[keys.PartitionKeys]]:
    """``(queue type, partition keys)`` from partition 0's metadata hash.

    ``partitions`` overrides the count; without metadata the queue is taken to be a
    one-partition Stream.
    """
    meta = keys.PartitionKeys(namespace, queue, 0).meta
    qtype, count = await client.hmget(meta, "type", "partitions")
    qtype_s = as_text(qtype) if qtype is not None else "Stream"
    n = partitions
    if n is None:
        try:
            n = int(as_text(count)) if count is not None else 1
        except ValueError:
            n = 1
    return qtype_s, keys.partition_keys(namespace, queue, max(1, n))
