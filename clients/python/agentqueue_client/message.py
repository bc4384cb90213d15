"""A message handed to a consumer."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from .errors import MessageSettledError

Effect = Callable[[Any], Any]
"""Queues Redis commands on the pipeline it is given (``lambda pipe: pipe.incr(k)``)."""


class Settler(Protocol):
    """What a message asks of the consumer that handed it out (the
    :class:`~agentqueue_client.Consumer` implements it): :meth:`Message.ack`,
    :meth:`Message.nack` and :meth:`Message.once` call these."""

    def ack_message(self, msg: Message) -> None:
        ...

    async def nack_message(self, msg: Message, error: BaseException | str | None,
                           delay: float | None) -> None:
        ...

    async def run_once(self, msg: Message, name: str, effect: Effect | None) -> bool:
        ...


@dataclass(eq=False)
class Message:
    """One delivery of a message.

    Attributes:
        id: stream entry id (Streams) or the SDK's message id (Lists, PubSub). A retried
            Stream message gets a new entry id; use ``idempotency_key`` to recognise it.
        partition: partition the message was read from.
        body: the payload bytes as stored.
        payload: the decoded JSON value (``body`` when the consumer does not expect JSON).
        idempotency_key: the producer's key, or None.
        headers: string headers (``traceparent`` for tracing).
        attempt: how many times it was retried (nacked) before this delivery.
        deliveries: deliveries so far including this one (reclaims count too).
        last_error: the error of the previous attempt, for a retried message.
    """

    id: str
    partition: int
    body: bytes
    payload: Any
    idempotency_key: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    attempt: int = 0
    deliveries: int = 1
    last_error: str | None = None
    priority: int = 0
    _consumer: Settler | None = field(default=None, repr=False)
    _handle: Any = field(default=None, repr=False)
    _touched: float = field(default=0.0, repr=False)
    settled: bool = field(default=False, repr=False)
    lost: bool = field(default=False, repr=False)

    @property
    def traceparent(self) -> str | None:
        """The W3C ``traceparent`` header the producer attached, if any."""
        return self.headers.get("traceparent")

    def _owner(self) -> Settler:
        if self._consumer is None:
            raise MessageSettledError("this message is not attached to a consumer")
        return self._consumer

    async def ack(self) -> None:
        """Acknowledge: the message is done and will not be delivered again.

        The acknowledgement is sent with the consumer's next read (one round trip for
        both) or within ``ack_flush_interval``, whichever comes first; call
        ``await consumer.flush_acks()`` to force it. If the process dies before it was
        sent, the message is redelivered (at least once).
        """
        self._owner().ack_message(self)

    async def nack(self, error: BaseException | str | None = None, *,
                   delay: float | None = None) -> None:
        """Report failure: retry after ``delay`` seconds (default: the queue's backoff),
        or dead-letter the message when this was its last allowed delivery."""
        await self._owner().nack_message(self, error, delay)

    async def once(self, name: str = "effect", effect: Effect | None = None) -> bool:
        """Run a side effect at most once per message, across redeliveries and retries.

        The done-marker lives under the queue's idempotency prefix, named after the
        message's idempotency key (its id when it has none: then a *retried* Stream
        message, which has a new id, is not recognised) and ``name``; it expires with
        the queue's idempotency TTL.

        * With ``effect``: the effect's Redis commands and the marker are written in one
          MULTI/EXEC (WATCH on the marker), so they happen exactly once even if the
          process is killed at any point. Returns True if they were applied now::

              await msg.once("count", lambda pipe: pipe.hincrby("totals", "orders", 1))

          On a Redis Cluster a transaction stays in one slot: the effect may only
          touch keys with the marker's hash tag (the partition's, ``aq:{ns/q/p}``);
          redis-py refuses a key of another slot (``CrossSlotTransactionError``).

        * Without ``effect``: claims the marker (``SET NX``) and returns True for the
          first caller only. Do the side effect after a True. A crash between the claim
          and the effect skips the effect (at most once); make the external call itself
          idempotent (e.g. pass the idempotency key to the API) if that matters.
        """
        return await self._owner().run_once(self, name, effect)

    def _settle(self) -> None:
        if self.settled:
            raise MessageSettledError(f"message {self.id} was already acked or nacked")
        self.settled = True


Handler = Callable[[Message], Awaitable[Any]]
