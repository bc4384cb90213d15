"""PubSub queues: a subscription, no storage, no acks (acks and nacks are no-ops)."""

from __future__ import annotations

import logging
import time
from collections.abc import Collection, Sequence
from typing import Any

from . import keys
from ._delivery import Delivery
from .codec import decode_element
from .config import ClientConfig
from .errors import DecodeError

log = logging.getLogger("agentqueue_client")


class PubSubBackend:
    """Subscribes to the queue's channel at start (or on first read). Implements
    :class:`~agentqueue_client._backend.Backend`: nothing is stored, so there is nothing
    to settle, keep alive, retry or recover (those are no-ops); the handle is None."""

    settles = False
    releases = False

    def __init__(self, client: Any, config: ClientConfig, max_payload_bytes: int) -> None:
        self.client = client
        self.channel = keys.channel_name(config.namespace, config.queue)
        self.max_payload_bytes = max_payload_bytes
        self._pubsub: Any = None

    def set_partitions(self, parts: Sequence[keys.PartitionKeys]) -> None:
        return None

    async def start(self) -> None:
        await self.subscribe()

    async def subscribe(self) -> None:
        """Subscribe now (messages published before this are not seen)."""
        if self._pubsub is None:
            self._pubsub = self.client.pubsub()
            await self._pubsub.subscribe(self.channel)

    async def read(self, count: int, block_ms: int, acks: Sequence[Any]) -> list[Delivery]:
        await self.subscribe()
        out: list[Delivery] = []
        deadline = time.monotonic() + block_ms / 1000
        while len(out) < count:
            timeout = max(0.0, deadline - time.monotonic()) if not out else 0.0
            raw = await self._pubsub.get_message(ignore_subscribe_messages=True,
                                                 timeout=timeout)
            if raw is None:
                if out or time.monotonic() >= deadline:
                    break
                continue
            data = raw.get("data")
            try:
                msg_id, _, env = decode_element(data, max_payload_bytes=self.max_payload_bytes)
            except DecodeError as exc:
                out.append(Delivery(0, "malformed", None, None, exc.reason))
                continue
            out.append(Delivery(0, msg_id, None, env))
        return out

    async def ack(self, acks: Sequence[Any]) -> None:
        return None

    async def nack(self, delivery: Delivery, due_ms: int, error: str) -> bool:
        return False

    async def deadletter(self, items: Sequence[tuple[Delivery, str, int]], now_ms: int,
                         enabled: bool) -> None:
        for _, reason, _ in items:
            log.warning("dropped a malformed PubSub message: %s", reason)

    async def promote(self, now_ms: int, limit: int) -> int:
        return 0

    async def heartbeat(self, due: Sequence[Any]) -> set[Any]:
        return set()

    async def maintain(self, visibility_ms: int, count: int, held: Collection[Any],
                       acking: Collection[Any]) -> list[Delivery]:
        return []

    async def release(self, handles: Sequence[Any], idle_ms: int) -> None:
        return None

    async def drain(self, timeout: float | None = None) -> list[Delivery]:
        return []

    async def close(self) -> None:
        if self._pubsub is not None:
            await self._pubsub.aclose()
            self._pubsub = None
