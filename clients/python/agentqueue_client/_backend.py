"""The one interface the consumer drives: every queue type's backend implements it.

The consumer never asks which backend it has. Where the queue types really differ it
asks a capability (:attr:`Backend.settles`, :attr:`Backend.releases`); an operation a
queue type has no use for is a no-op there (PubSub has nothing to promote, keep alive or
recover; only Streams release unstarted messages or have reads to drain).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any, Protocol

import redis.asyncio as aioredis

from . import keys
from ._delivery import Delivery
from ._lists import ListBackend
from ._pubsub import PubSubBackend
from ._streams import ClusterStreamBackend, StreamBackend
from .config import ClientConfig
from .meta import QueueMeta

Handle = Any
"""What a backend needs to settle one delivery (:attr:`Delivery.handle`): ``(partition,
entry id)`` on Streams, ``(partition, element)`` on Lists, None on PubSub."""


class Backend(Protocol):
    """All Redis calls of a consumer of one queue type."""

    @property
    def settles(self) -> bool:
        """False when messages are not stored (PubSub): nothing to ack, nack or hold,
        and deliveries are not counted against maxDeliveries."""
        ...

    @property
    def releases(self) -> bool:
        """True when :meth:`release` hands unstarted messages back to the other
        consumers at close (Streams); the consumer then drops them from its buffer."""
        ...

    def set_partitions(self, parts: Sequence[keys.PartitionKeys]) -> None:
        """The queue's partitions changed (read from the metadata hash)."""
        ...

    async def start(self) -> None:
        """Before the first read: recover what a previous process of this name left
        (Lists), subscribe (PubSub: nothing published from now on is missed)."""
        ...

    async def read(self, count: int, block_ms: int,
                   acks: Sequence[Handle]) -> list[Delivery]:
        """Send ``acks``, then read up to ``count`` new deliveries, blocking up to
        ``block_ms``."""
        ...

    async def ack(self, acks: Sequence[Handle]) -> None:
        ...

    async def nack(self, delivery: Delivery, due_ms: int, error: str) -> bool:
        """Schedule a retry of ``delivery`` at ``due_ms`` with ``error`` as its last
        error; False when it was no longer this consumer's."""
        ...

    async def deadletter(self, items: Sequence[tuple[Delivery, str, int]], now_ms: int,
                         enabled: bool) -> None:
        """``(delivery, reason, deliveries)`` to the dead-letter stream (dropped when
        ``enabled`` is False)."""
        ...

    async def promote(self, now_ms: int, limit: int) -> int:
        """Move retries due by ``now_ms`` back to the queue; how many moved."""
        ...

    async def heartbeat(self, due: Sequence[Handle]) -> set[Handle]:
        """Called regularly while the consumer holds messages; ``due`` are the held ones
        not renewed for a third of the visibility timeout. Returns those of ``due`` still
        this consumer's (the others were reclaimed or dead-lettered elsewhere)."""
        ...

    async def maintain(self, visibility_ms: int, count: int, held: Collection[Handle],
                       acking: Collection[Handle]) -> list[Delivery]:
        """Take over the messages of consumers silent for ``visibility_ms``: returned as
        deliveries (up to ``count``; a full batch means there are more), or put back in
        the queue. ``held``: messages this consumer holds; ``acking``: those acked but
        not sent yet."""
        ...

    async def release(self, handles: Sequence[Handle], idle_ms: int) -> None:
        """Hand messages read but never started back to the other consumers."""
        ...

    async def drain(self, timeout: float | None = None) -> list[Delivery]:
        """Deliveries read but not returned yet (reads still in flight), at close."""
        ...

    async def close(self) -> None:
        ...


def open_backend(meta: QueueMeta, client: Any, config: ClientConfig, group: str | None,
                 consumer: str, parts: Sequence[keys.PartitionKeys],
                 max_payload_bytes: int) -> Backend:
    """The backend of the queue's type (``meta.type``), not started yet."""
    if meta.type == "Stream":
        assert group is not None
        stream = (ClusterStreamBackend if isinstance(client, aioredis.RedisCluster)
                  else StreamBackend)
        return stream(client, group, consumer, parts, max_payload_bytes)
    if meta.type == "List":
        assert group is not None
        return ListBackend(client, group, consumer, parts, max_payload_bytes,
                           meta.priority_levels)
    return PubSubBackend(client, config, max_payload_bytes)
