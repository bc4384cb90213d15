"""The agentqueue Functions library (agentqueue_client/library.lua, the wire contract):
loading it onto the primaries, and typed wrappers.

The library is loaded on every primary (Functions are per node; with Cluster each
node needs its own copy). The version lives in library.lua (`local VERSION`), read
here, so there is one place to bump.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import redis.asyncio as aredis
from redis import exceptions as rex

from agentqueue_client import calls
from agentqueue_client.keys import PartitionKeys
from agentqueue_client.library import LIBRARY_CODE, LIBRARY_NAME, LIBRARY_VERSION
from agentqueue_client.text import as_text

from .connection import RedisClient, node_name, primaries
from .errors import classify, translate_errors

__all__ = [
    "DEFAULT_IDEMPOTENCY_TTL_MS",
    "LIBRARY_CODE",
    "LIBRARY_NAME",
    "LIBRARY_VERSION",
    "EnqueueResult",
    "deadletter",
    "enqueue",
    "ensure_library",
    "library_versions",
    "nack",
    "promote",
    "promote_due",
]


DEFAULT_IDEMPOTENCY_TTL_MS = 24 * 3600 * 1000
PROMOTE_MAX = calls.PROMOTE_MAX
"""aq_promote moves at most this many messages per call (library.lua PROMOTE_MAX)."""


async def _node_version(node: aredis.Redis) -> str | None:
    """The loaded library version on one node, or None when it is not loaded."""
    try:
        return as_text(await calls.version().on(node), errors="strict")
    except rex.ResponseError as exc:
        # "Function not found" (never loaded, or lost in a restart without persistence)
        if "not found" in str(exc).lower():
            return None
        raise classify(exc) from None


async def library_versions(client: RedisClient) -> dict[str, str | None]:
    """Node address → loaded library version (None: missing), for every primary."""
    nodes = await primaries(client)
    with translate_errors("read library version"):
        found = await asyncio.gather(*(_node_version(n) for n in nodes))
    return {node_name(n): v for n, v in zip(nodes, found, strict=True)}


async def ensure_library(client: RedisClient) -> bool:
    """Load the library on every primary where it is missing or another version.

    FUNCTION LOAD REPLACE is atomic per node, so callers never see a half-loaded
    library. Returns whether any node changed."""
    nodes = await primaries(client)
    changed = False
    with translate_errors("load the Functions library"):
        for node in nodes:
            if await _node_version(node) == LIBRARY_VERSION:
                continue
            await node.function_load(LIBRARY_CODE, replace=True)
            changed = True
    return changed


@dataclass(frozen=True)
class EnqueueResult:
    id: str
    duplicate: bool


async def enqueue(
    client: RedisClient,
    keys: PartitionKeys,
    fields: Mapping[str, str | bytes | int | float],
    idem_key: str | None = None,
    idem_ttl_ms: int = DEFAULT_IDEMPOTENCY_TTL_MS,
) -> EnqueueResult:
    """XADD `fields` to the partition's stream; with `idem_key`, at most once per TTL.

    The key also goes into the entry as field `k` (the envelope's idempotency key)."""
    if not fields:
        raise ValueError("a message needs at least one field")
    if idem_key is not None and idem_ttl_ms <= 0:
        raise ValueError("idem_ttl_ms must be positive")
    pairs: list[tuple[str | bytes, str | bytes]] = [
        (name, value if isinstance(value, str | bytes) else str(value))
        for name, value in fields.items()]
    if idem_key is not None and "k" not in fields:
        pairs.append(("k", idem_key))
    with translate_errors("aq_enqueue"):
        entry_id, dup = await calls.enqueue(keys, pairs, idem_ttl_ms, idem_key).on(client)
    return EnqueueResult(as_text(entry_id, errors="strict"), bool(int(dup)))


async def nack(client: RedisClient, keys: PartitionKeys, group: str, entry_id: str,
               due_ms: int, error: str) -> bool:
    """Ack the entry and schedule a retry at `due_ms` (attempt `a` + 1, error `e`),
    counted in the partition's stats hash (`retries`).

    False when the entry was no longer pending for `group` or was trimmed (acked anyway)."""
    with translate_errors("aq_nack"):
        res = await calls.nack(keys, group, entry_id, due_ms, error).on(client)
    return bool(int(res))


async def promote(client: RedisClient, keys: PartitionKeys, now_ms: int,
                  limit: int = 100) -> int:
    """Move up to `limit` retries due at `now_ms` back into the stream; returns how many."""
    if not 1 <= limit <= PROMOTE_MAX:
        raise ValueError(f"limit must be from 1 to {PROMOTE_MAX}")
    with translate_errors("aq_promote"):
        res = await calls.promote(keys, now_ms, limit).on(client)
    return int(res)


async def promote_due(client: RedisClient, partitions: Sequence[PartitionKeys],
                      now_ms: int) -> int:
    """`aq_promote` on every partition in one pipelined round trip (up to PROMOTE_MAX
    each); returns how many retries moved."""
    with translate_errors("aq_promote"):
        pipe = client.pipeline(transaction=False)
        for part in partitions:
            calls.promote(part, now_ms, PROMOTE_MAX).on(pipe)
        results = await pipe.execute(raise_on_error=False)
    moved = 0
    for r in results:
        if isinstance(r, Exception):
            raise classify(r) from None
        moved += int(r)
    return moved


async def deadletter(client: RedisClient, keys: PartitionKeys, group: str, entry_id: str,
                     consumer: str, error: str, deliveries: int, now_ms: int) -> bool:
    """Ack the entry and copy it, with x.* metadata, to the dead-letter stream.

    False when the entry was no longer pending for `group` or was trimmed (acked anyway)."""
    with translate_errors("aq_deadletter"):
        res = await calls.deadletter(keys, group, entry_id, consumer, error, deliveries,
                                     now_ms).on(client)
    return bool(int(res))
