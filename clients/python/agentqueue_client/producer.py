"""The producer: put messages on a queue.

>>> async def main() -> None:
...     async with Producer.from_env() as producer:
...         msg_id = await producer.send({"task": "summarise", "doc": 42},
...                                      key="customer-7", idempotency_key="doc-42-v1")

* Partition: a stable hash (CRC-32) of ``key`` modulo the partition count; without
  ``key`` the idempotency key is hashed instead (a duplicate must land on the partition
  that remembers its key); with neither, round robin.
* Idempotency: with ``idempotency_key`` and the queue's idempotency enabled, a second
  send within the TTL returns the first message's id and enqueues nothing. For Streams
  this is atomic on the server (``aq_enqueue``); for Lists it is a WATCH/MULTI
  transaction; for PubSub a ``SET NX``.
* Schema: when the queue has a JSON Schema, every payload is validated before anything
  is sent; a violation raises :class:`SchemaValidationError`.
* Tracing: with OpenTelemetry installed and a span active, ``traceparent`` (and
  ``tracestate``) are added to the headers.
"""

from __future__ import annotations

import itertools
import secrets
import time
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from redis.exceptions import ResponseError, WatchError

from . import calls, keys
from ._trace import trace_headers
from .codec import (
    MAX_PAYLOAD_BYTES,
    Envelope,
    check_headers,
    check_idempotency_key,
    encode_element,
    encode_fields,
    encode_payload,
    parse_json,
)
from .config import ClientConfig
from .errors import (
    DecodeError,
    LibraryMissingError,
    QueueTypeError,
    SchemaValidationError,
    is_library_missing,
)
from .meta import MetaCache, QueueMeta
from .text import as_text


@dataclass(frozen=True)
class Outgoing:
    """One message for :meth:`Producer.send_many` (plain payloads work too)."""

    payload: Any
    key: str | None = None
    idempotency_key: str | None = None
    headers: Mapping[str, str] | None = None
    priority: int | None = None


@dataclass
class _Prepared:
    partition: int
    envelope: Envelope
    priority: int = 0
    fields: dict[str, bytes] = field(default_factory=dict)


def partition_for(key: str, partitions: int) -> int:
    """Stable partition of ``key``: CRC-32 of its UTF-8 bytes modulo ``partitions``.

    >>> partition_for("customer-7", 4)
    3
    """
    return zlib.crc32(key.encode("utf-8", "surrogatepass")) % partitions


def new_message_id() -> str:
    """An id for List/PubSub messages: ``<ms>-<random hex>`` (sorts by time)."""
    return f"{int(time.time() * 1000)}-{secrets.token_hex(6)}"


class Producer:
    """Sends messages to one queue. Create with :meth:`from_env` or a :class:`ClientConfig`;
    use as an async context manager or call :meth:`close`."""

    def __init__(self, config: ClientConfig, *, client: Any = None, meta_ttl: float = 5.0,
                 max_payload_bytes: int = MAX_PAYLOAD_BYTES) -> None:
        self.config = config
        self._own_client = client is None
        self._client = client if client is not None else config.connect()
        self._parts = config.partition_keys()
        self._meta = MetaCache(self._client, self._parts[0].meta, ttl=meta_ttl,
                               default_type=config.queue_type,
                               default_partitions=config.partitions)
        self._rr = itertools.count()
        self.max_payload_bytes = max_payload_bytes

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **kwargs: Any) -> Producer:
        """A producer configured from the credentials Secret's env keys."""
        return cls(ClientConfig.from_env(environ), **kwargs)

    async def __aenter__(self) -> Producer:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the connection pool (when this producer created it)."""
        if self._own_client:
            await self._client.aclose()

    # --- public API ---------------------------------------------------------------------

    async def send(self, payload: Any, *, key: str | None = None,
                   idempotency_key: str | None = None, headers: Mapping[str, str] | None = None,
                   priority: int | None = None) -> str:
        """Enqueue one message; return its id (the existing id for a duplicate).

        ``payload``: bytes are sent as they are; anything else as JSON text.
        ``priority``: List queues with ``priorityLevels > 1`` only; 0 is the most urgent.
        """
        ids = await self.send_many([Outgoing(payload, key, idempotency_key, headers, priority)])
        return ids[0]

    async def send_many(self, messages: Iterable[Outgoing | Any]) -> list[str]:
        """Enqueue several messages, pipelined; return their ids in order.

        Every message is validated first: if one fails, nothing is sent.
        """
        meta = await self._meta.get()
        self._ensure_partitions(meta)
        prepared = [self._prepare(m if isinstance(m, Outgoing) else Outgoing(m), meta)
                    for m in messages]
        if not prepared:
            return []
        if meta.type == "Stream":
            return await self._send_stream(prepared, meta)
        if meta.type == "List":
            return await self._send_list(prepared, meta)
        return await self._send_pubsub(prepared, meta)

    async def queue_meta(self, *, refresh: bool = False) -> QueueMeta:
        """The queue's settings as last read from its metadata hash."""
        return await self._meta.get(force=refresh)

    # --- preparation (no I/O) -------------------------------------------------------------

    def _ensure_partitions(self, meta: QueueMeta) -> None:
        if meta.partitions != len(self._parts):
            self._parts = self.config.partition_keys(meta.partitions)

    def _prepare(self, out: Outgoing, meta: QueueMeta) -> _Prepared:
        body = encode_payload(out.payload)
        if len(body) > self.max_payload_bytes:
            raise ValueError(f"payload of {len(body)} bytes exceeds {self.max_payload_bytes}")
        schema = self._meta.schema()
        if schema is not None:
            value = out.payload
            if isinstance(value, bytes | bytearray | memoryview):
                try:
                    value = parse_json(bytes(value))
                except DecodeError as exc:
                    raise SchemaValidationError(exc.reason) from None
            schema.validate(value)
        idem = check_idempotency_key(out.idempotency_key) if out.idempotency_key else None
        headers = check_headers(dict(out.headers or {}))
        for name, value in trace_headers().items():
            headers.setdefault(name, value)
        priority = out.priority or 0
        if out.priority is not None:
            if meta.type != "List":
                raise QueueTypeError(f"priorities need a List queue, this is a {meta.type}")
            if not 0 <= priority < meta.priority_levels:
                raise ValueError(f"priority must be in 0..{meta.priority_levels - 1}")
        route = out.key if out.key is not None else idem
        n = len(self._parts)
        partition = partition_for(route, n) if route is not None else next(self._rr) % n
        env = Envelope(body=body, idempotency_key=idem, headers=headers)
        return _Prepared(partition, env, priority, encode_fields(env))

    # --- Stream ----------------------------------------------------------------------------

    async def _send_stream(self, prepared: Sequence[_Prepared], meta: QueueMeta) -> list[str]:
        ttl = meta.idempotency_ttl_ms
        async with self._client.pipeline(transaction=False) as pipe:
            for p in prepared:
                part = self._parts[p.partition]
                idem = p.envelope.idempotency_key if meta.idempotency else None
                calls.enqueue(part, p.fields.items(), ttl, idem).on(pipe)
            try:
                results = await pipe.execute()
            except ResponseError as exc:
                if is_library_missing(exc):
                    raise LibraryMissingError(
                        "the agentqueue Functions library is not loaded on this Redis; "
                        "the operator loads it when it reconciles the queue") from None
                raise
        return [as_text(r[0], errors="strict") for r in results]

    # --- List ------------------------------------------------------------------------------

    async def _send_list(self, prepared: Sequence[_Prepared], meta: QueueMeta) -> list[str]:
        ids: list[str | None] = [None] * len(prepared)
        plain: list[tuple[int, _Prepared, str]] = []
        for i, p in enumerate(prepared):
            if p.envelope.idempotency_key is not None and meta.idempotency:
                ids[i] = await self._send_list_once(p, meta)
            else:
                plain.append((i, p, new_message_id()))
        if plain:
            async with self._client.pipeline(transaction=False) as pipe:
                for _, p, msg_id in plain:
                    part = self._parts[p.partition]
                    pipe.lpush(part.priority_key(p.priority),
                               encode_element(p.envelope, msg_id, p.priority))
                await pipe.execute()
            for i, _, msg_id in plain:
                ids[i] = msg_id
        return [i for i in ids if i is not None]

    async def _send_list_once(self, p: _Prepared, meta: QueueMeta) -> str:
        part = self._parts[p.partition]
        assert p.envelope.idempotency_key is not None
        idem = part.idempotency(p.envelope.idempotency_key)
        async with self._client.pipeline(transaction=True) as pipe:
            while True:
                try:
                    await pipe.watch(idem)
                    existing = await pipe.get(idem)
                    if existing is not None:
                        return as_text(existing, errors="strict")
                    msg_id = new_message_id()
                    pipe.multi()
                    pipe.set(idem, msg_id, px=meta.idempotency_ttl_ms)
                    pipe.lpush(part.priority_key(p.priority),
                               encode_element(p.envelope, msg_id, p.priority))
                    await pipe.execute()
                    return msg_id
                except WatchError:
                    continue  # a concurrent send of the same key: look again

    # --- PubSub ------------------------------------------------------------------------------

    async def _send_pubsub(self, prepared: Sequence[_Prepared], meta: QueueMeta) -> list[str]:
        channel = keys.channel_name(self.config.namespace, self.config.queue)
        part = self._parts[0]
        ids: list[str] = []
        for p in prepared:
            msg_id = new_message_id()
            key = p.envelope.idempotency_key
            if key is not None and meta.idempotency:
                prev = await self._client.set(part.idempotency(key), msg_id, nx=True,
                                              px=meta.idempotency_ttl_ms, get=True)
                if prev is not None:
                    ids.append(as_text(prev, errors="strict"))
                    continue
            await self._client.publish(channel, encode_element(p.envelope, msg_id))
            ids.append(msg_id)
        return ids
