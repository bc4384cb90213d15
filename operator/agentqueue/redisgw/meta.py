"""Group settings in the queue's metadata hash (read by the SDK's consumers)."""

from __future__ import annotations

from typing import Any

from agentqueue_client.keys import PartitionKeys


async def write_group_meta(client: Any, partitions: list[PartitionKeys], fields: dict[str, str],
                           remove: list[str]) -> None:
    """Set and delete fields in every partition's metadata hash, in one pipeline."""
    if not fields and not remove:
        return
    async with client.pipeline(transaction=False) as pipe:
        for part in partitions:
            if fields:
                pipe.hset(part.meta, mapping=fields)
            if remove:
                pipe.hdel(part.meta, *remove)
        await pipe.execute()
