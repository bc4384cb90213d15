"""A thin synchronous wrapper around the asyncio SDK.

The async clients run on a private event loop in a daemon thread, so heartbeats,
ack flushing and retry promotion keep running while your synchronous code works::

    from agentqueue_client.sync import SyncConsumer, SyncProducer

    with SyncProducer.from_env() as producer:
        producer.send({"n": 1}, idempotency_key="n-1")

    with SyncConsumer.from_env(group="workers") as consumer:
        for msg in consumer:
            work(msg.payload)
            msg.ack()

    # or: SyncConsumer.from_env(group="workers").run(work_on, concurrency=4)
    # (acks on return, nacks on an exception; stops on SIGTERM/SIGINT)
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
from collections.abc import Callable, Coroutine, Iterator, Mapping
from concurrent.futures import Future
from types import FrameType, TracebackType
from typing import Any, TypeVar

from .config import ClientConfig
from .consumer import Consumer
from .message import Effect, Message
from .producer import Outgoing, Producer

T = TypeVar("T")


class _LoopThread:
    """An event loop in a daemon thread; ``call`` runs a coroutine there and waits."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="aq-sync-loop",
                                        daemon=True)
        self._thread.start()

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        if not self._thread.is_alive() or self.loop.is_closed():
            coro.close()
            raise RuntimeError("this client is closed")
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result()

    def stop(self) -> None:
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5)
        if not self._thread.is_alive():
            self.loop.close()


async def _build(factory: Callable[[], T]) -> T:
    return factory()  # clients must be created on the loop that will use them


class SyncProducer:
    """Blocking :class:`~agentqueue_client.Producer`; same arguments."""

    def __init__(self, config: ClientConfig, **kwargs: Any) -> None:
        self._loop = _LoopThread()
        self._producer: Producer = self._loop.call(_build(lambda: Producer(config, **kwargs)))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **kwargs: Any) -> SyncProducer:
        return cls(ClientConfig.from_env(environ), **kwargs)

    def send(self, payload: Any, **kwargs: Any) -> str:
        """See :meth:`Producer.send`."""
        return self._loop.call(self._producer.send(payload, **kwargs))

    def send_many(self, messages: list[Outgoing | Any]) -> list[str]:
        """See :meth:`Producer.send_many`."""
        return self._loop.call(self._producer.send_many(messages))

    def close(self) -> None:
        self._loop.call(self._producer.close())
        self._loop.stop()

    def __enter__(self) -> SyncProducer:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class SyncMessage:
    """Blocking view of a :class:`~agentqueue_client.Message` (same attributes)."""

    def __init__(self, message: Message, loop: _LoopThread) -> None:
        self.message = message
        self._loop = loop

    def __getattr__(self, name: str) -> Any:
        return getattr(self.message, name)

    def ack(self) -> None:
        self._loop.call(self.message.ack())

    def nack(self, error: BaseException | str | None = None, *,
             delay: float | None = None) -> None:
        self._loop.call(self.message.nack(error, delay=delay))

    def once(self, name: str = "effect", effect: Effect | None = None) -> bool:
        return self._loop.call(self.message.once(name, effect))

    def __repr__(self) -> str:
        return f"SyncMessage({self.message!r})"


class SyncConsumer:
    """Blocking :class:`~agentqueue_client.Consumer`; same arguments."""

    def __init__(self, config: ClientConfig, **kwargs: Any) -> None:
        self._loop = _LoopThread()
        self._consumer: Consumer = self._loop.call(_build(lambda: Consumer(config, **kwargs)))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **kwargs: Any) -> SyncConsumer:
        env = os.environ if environ is None else environ
        kwargs.setdefault("group", env.get("AQ_GROUP"))
        return cls(ClientConfig.from_env(env), **kwargs)

    @property
    def consumer(self) -> Consumer:
        return self._consumer

    def __iter__(self) -> Iterator[SyncMessage]:
        while True:
            msg = self._loop.call(self._consumer.next_message())
            if msg is None:
                return
            yield SyncMessage(msg, self._loop)

    def flush_acks(self) -> None:
        self._loop.call(self._consumer.flush_acks())

    def stop(self) -> None:
        """Stop taking new work (thread-safe, signal-safe)."""
        self._loop.loop.call_soon_threadsafe(self._consumer.stop)

    def run(self, handler: Callable[[SyncMessage], Any], *, concurrency: int = 1,
            install_signal_handlers: bool = True) -> None:
        """Call ``handler`` in worker threads until stopped, then close (see
        :meth:`Consumer.run`). Returning acks; raising nacks."""

        async def call(msg: Message) -> None:
            await asyncio.to_thread(handler, SyncMessage(msg, self._loop))

        previous: dict[int, Any] = {}
        if install_signal_handlers and threading.current_thread() is threading.main_thread():
            def on_signal(signum: int, frame: FrameType | None) -> None:
                self.stop()

            for sig in (signal.SIGTERM, signal.SIGINT):
                previous[sig] = signal.signal(sig, on_signal)
        try:
            self._loop.call(self._consumer.run(call, concurrency=concurrency,
                                               install_signal_handlers=False))
        finally:
            for sig_number, old in previous.items():
                signal.signal(sig_number, old)
            self._loop.stop()

    def close(self) -> None:
        with contextlib.suppress(RuntimeError):
            self._loop.call(self._consumer.close())
        self._loop.stop()

    def __enter__(self) -> SyncConsumer:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
