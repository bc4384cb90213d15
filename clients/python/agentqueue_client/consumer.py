"""The consumer: read messages, process them, ack or nack.

Iterator style::

    async with Consumer.from_env(group="summarisers") as consumer:
        async for msg in consumer:
            try:
                await summarise(msg.payload)
            except TransientError as exc:
                await msg.nack(exc)          # retried after the queue's backoff
            else:
                await msg.ack()

Handler style (acks on return, nacks on an exception, stops on SIGTERM)::

    consumer = Consumer.from_env(group="summarisers")

    @consumer.handler
    async def handle(msg: Message) -> None:
        await summarise(msg.payload)

    await consumer.run(concurrency=8)

What the consumer does for you (Stream queues):

* Reads all partitions with one blocking XREADGROUP (COUNT ``batch_size``); acks of
  finished messages ride in the same pipeline as the next read. On a Redis Cluster
  (``REDIS_CLUSTER=1``) each partition has its own XREADGROUP (see
  :class:`~agentqueue_client._streams.ClusterStreamBackend`).
* Reclaim: every ``visibility/2`` (bounded), before reading new work, it XAUTOCLAIMs
  entries idle longer than the group's visibility timeout — a dead consumer's messages
  go to a live one.
* Heartbeat: messages it holds (being processed, or read and waiting in its buffer) get
  their idle time reset (``XCLAIM <self> 0 <id> JUSTID``) every ``visibility/3``, so a long
  task is not reclaimed while this process is alive.
* maxDeliveries: deliveries = PEL delivery count + the attempt field ``a``; an entry over
  the limit goes to the dead-letter stream instead of the handler. ``nack`` on the last
  allowed delivery dead-letters too; otherwise ``aq_nack`` schedules a retry in the retry
  sorted set with the queue's backoff, and every consumer promotes due retries.
* Malformed entries (see :mod:`agentqueue_client.codec` for the policy; also bad JSON
  and schema violations) go to the dead-letter stream with the reason; the consumer
  keeps going.
* Pause: while the group's ``paused:<group>`` field exists it hands out no new work; it
  keeps acking, heartbeating and promoting.
* Shutdown (SIGTERM/SIGINT in :meth:`run`, or :meth:`stop`): stop reading, give in-flight
  handlers ``shutdown_grace`` seconds, flush acks, leave the rest pending for reclaim.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
from collections import deque
from collections.abc import Mapping
from types import TracebackType
from typing import Any

from redis.exceptions import AuthenticationError, ResponseError, WatchError

from ._backend import Backend, open_backend
from ._delivery import Delivery
from .backoff import RetryPolicy
from .codec import MAX_PAYLOAD_BYTES, parse_json
from .config import ClientConfig
from .errors import (
    AUTH_GRACE_S,
    ConfigError,
    DecodeError,
    LibraryMissingError,
    SchemaValidationError,
    is_library_missing,
    is_no_group,
    is_transient,
    redis_errors,
    safe_message,
)
from .message import Effect, Handler, Message
from .meta import MetaCache, QueueMeta

log = logging.getLogger("agentqueue_client")


def default_consumer_name() -> str:
    """``$HOSTNAME`` (the pod name in Kubernetes), else ``<host>-<pid>``."""
    return os.environ.get("HOSTNAME") or f"{socket.gethostname()}-{os.getpid()}"


_READ_RETRY = RetryPolicy(initial_ms=100, max_ms=5000, multiplier=2.0, jitter=True)


def _reraise_swallowed_cancel() -> None:
    """Raise CancelledError if this task was cancelled but the cancellation was turned
    into another exception below us (redis-py's timeouts can do that on Python 3.11), so
    retry loops never outlive a cancel."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def _now_ms() -> int:
    return int(time.time() * 1000)


class Consumer:
    """Consumes one queue as member ``consumer_name`` of consumer group ``group``.

    ``group`` is required for Stream and List queues (List queues use it for the pause
    flag and visibility settings); PubSub ignores it.

    Tuning: ``batch_size`` (COUNT per partition per read), ``block_ms`` (longest blocking
    read), ``expect_json`` (decode payloads as JSON and check them against the queue's
    schema; False hands out the bytes unchecked),
    ``heartbeat`` (False disables it), ``shutdown_grace`` (seconds for in-flight work on
    stop), ``meta_refresh`` (seconds between re-reads of the metadata hash: pause flag,
    settings, partitions), ``promote_interval`` (seconds between retry promotions),
    ``ack_flush_interval`` (longest delay of a deferred ack).
    """

    def __init__(self, config: ClientConfig, *, group: str | None = None,
                 consumer_name: str | None = None, client: Any = None, batch_size: int = 10,
                 block_ms: int = 1000, expect_json: bool = True, heartbeat: bool = True,
                 shutdown_grace: float = 10.0, meta_refresh: float = 2.0,
                 promote_interval: float = 0.5, ack_flush_interval: float = 0.02,
                 max_payload_bytes: int = MAX_PAYLOAD_BYTES) -> None:
        self.config = config
        self.group = group
        self.name = consumer_name or default_consumer_name()
        if (not self.name or ":" in self.name or self.name.startswith("#")
                or any(c.isspace() for c in self.name)):
            raise ConfigError("consumer names may not contain ':' or whitespace, nor start "
                              "with '#'")
        if config.queue_type != "PubSub" and not group:
            raise ConfigError(f"a {config.queue_type} consumer needs a group name")
        if batch_size < 1 or block_ms < 1:
            raise ConfigError("batch_size and block_ms must be positive")
        self.batch_size = batch_size
        self.block_ms = block_ms
        self.expect_json = expect_json
        self.heartbeat_enabled = heartbeat
        self.shutdown_grace = shutdown_grace
        self.promote_interval = promote_interval
        self.ack_flush_interval = ack_flush_interval
        self.max_payload_bytes = max_payload_bytes
        self._own_client = client is None
        self._client = client if client is not None else config.connect()
        parts = config.partition_keys()
        self._parts = parts
        self._meta = MetaCache(self._client, parts[0].meta, ttl=meta_refresh,
                               default_type=config.queue_type,
                               default_partitions=config.partitions)
        self._backend: Backend | None = None
        self._buffer: deque[Message] = deque()
        self._held: dict[tuple[int, str], Message] = {}
        self._acks: list[Message] = []
        self._late: list[Delivery] = []
        self._stop = asyncio.Event()
        self._started = False
        self._closed = False
        self._maintenance: asyncio.Task[None] | None = None
        self._fatal: BaseException | None = None
        self._handler: Handler | None = None
        self._next_reclaim = 0.0
        self._next_promote = 0.0
        self._was_paused = False
        self._auth_failing_since: float | None = None
        self._pause_field = f"paused:{self.group}"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, *, group: str | None = None,
                 consumer_name: str | None = None, **kwargs: Any) -> Consumer:
        """A consumer configured from the credentials Secret's env keys.

        ``group`` defaults to ``$AQ_GROUP``.
        """
        env = os.environ if environ is None else environ
        return cls(ClientConfig.from_env(env), group=group or env.get("AQ_GROUP") or None,
                   consumer_name=consumer_name, **kwargs)

    # --- lifecycle ----------------------------------------------------------------------------

    async def __aenter__(self) -> Consumer:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()

    @property
    def meta(self) -> QueueMeta:
        """The queue's settings as last read."""
        return self._meta.current

    @property
    def visibility_ms(self) -> int:
        return self.meta.visibility_ms(self.group or "")

    @property
    def paused(self) -> bool:
        """True while the group's pause flag is set in the metadata hash."""
        return self.meta.paused(self.group) is not None

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    async def start(self) -> None:
        """Read the metadata, set up the backend and the maintenance task. Called by the
        first read; call it yourself to fail fast on bad credentials."""
        if self._started:
            return
        meta = await self._meta.get(force=True)
        self._meta.schema()  # a queue whose schema cannot be checked here fails now, unread
        self._parts = self.config.partition_keys(meta.partitions)
        self._backend = open_backend(meta, self._client, self.config, self.group, self.name,
                                     self._parts, self.max_payload_bytes)
        await self._backend.start()
        self._started = True
        self._maintenance = asyncio.create_task(self._maintain(), name="aq-maintenance")

    def stop(self) -> None:
        """Stop taking new work (safe from a signal handler). Iteration ends; :meth:`run`
        finishes in-flight handlers up to ``shutdown_grace`` and returns."""
        self._stop.set()

    async def close(self) -> None:
        """Stop, flush pending acks, close the connection (if this consumer made it).

        Stream messages read but never handed to a handler are released: other consumers
        reclaim them at their next reclaim (seconds), not after the visibility timeout.
        Messages handed out but not acked stay pending and are reclaimed after the
        visibility timeout: nothing is lost.
        """
        if self._closed:
            return
        self.stop()
        self._closed = True
        if self._maintenance is not None:
            self._maintenance.cancel()
            await asyncio.wait({self._maintenance}, timeout=5)
        with contextlib.suppress(*redis_errors()):
            await self.flush_acks()
        unstarted = [m._handle for m in self._buffer]
        backend = self._backend
        if backend is not None:
            with contextlib.suppress(*redis_errors()):  # a Cluster's reads in flight
                unstarted += [d.handle for d in await backend.drain()]
            if unstarted and backend.releases:
                self._buffer.clear()
                with contextlib.suppress(*redis_errors()):
                    await backend.release(unstarted, self.visibility_ms)
            with contextlib.suppress(*redis_errors()):
                await backend.close()
        if self._own_client:
            await self._client.aclose()

    # --- iteration ------------------------------------------------------------------------------

    def __aiter__(self) -> Consumer:
        return self

    async def __anext__(self) -> Message:
        msg = self._take_buffered() or await self.next_message()
        if msg is None:
            raise StopAsyncIteration
        return msg

    async def next_message(self) -> Message | None:
        """The next message, waiting as long as needed; None once stopped."""
        await self.start()
        failures = 0
        while True:
            msg = self._take_buffered()
            if msg is not None:
                return msg
            _reraise_swallowed_cancel()
            self._check_fatal()
            paused = self._update_pause()
            if self._buffer and not paused:
                msg = self._buffer.popleft()
                if not msg.settled and not msg.lost:
                    return msg
                continue
            if self.stopping:
                return None
            if paused:
                await self._sleep(min(0.1, self._meta.ttl))
                continue
            try:
                await self._fetch()
            except ResponseError as exc:
                if is_no_group(exc):
                    log.warning("consumer group %r does not exist yet; waiting", self.group)
                    await self._sleep(1.0)
                    continue
                if not is_transient(exc):
                    raise self._translate(exc) from None
                failures += 1
                await self._pause_after_failure(exc, failures)
                continue
            except redis_errors() as exc:
                if not self._retryable(exc):
                    raise
                failures += 1
                await self._pause_after_failure(exc, failures)
                continue
            failures = 0
            self._auth_failing_since = None

    def _retryable(self, exc: BaseException) -> bool:
        """Transient, including ``WRONGPASS`` for up to :data:`AUTH_GRACE_S` once these
        credentials have worked (the server lost its in-memory ACL users: a restart
        without persistence or a failover; the operator re-creates them)."""
        if not isinstance(exc, AuthenticationError):
            return is_transient(exc)
        now = time.monotonic()
        if self._auth_failing_since is None:
            self._auth_failing_since = now
        return is_transient(exc, authenticated_before=self._started) and (
            now - self._auth_failing_since < AUTH_GRACE_S)

    async def _pause_after_failure(self, exc: BaseException, failures: int) -> None:
        """Transient Redis trouble (connection lost, LOADING, failover): back off with
        full jitter, 100 ms doubling up to 5 s, and try again."""
        log.warning("read failed (%s); retry %d", safe_message(exc, 200), failures)
        await self._sleep(_READ_RETRY.delay_ms(failures) / 1000)

    def _translate(self, exc: ResponseError) -> BaseException:
        if is_library_missing(exc):
            return LibraryMissingError("the agentqueue Functions library is not loaded")
        return exc

    def _check_fatal(self) -> None:
        if self._fatal is not None:
            raise self._fatal
        task = self._maintenance
        if task is not None and task.done() and not task.cancelled():
            exc = task.exception()
            if exc is not None:
                raise exc

    def _take_buffered(self) -> Message | None:
        """The hot path: the next buffered message when nothing else needs doing."""
        buffer = self._buffer
        while buffer and self._fatal is None and not self._update_pause():
            msg = buffer.popleft()
            if not msg.settled and not msg.lost:
                return msg
        return None

    def _update_pause(self) -> bool:
        if not self._was_paused and self._pause_field not in self._meta.current.raw:
            return False  # the common case, without building the record
        record = self.meta.paused(self.group)
        if (record is not None) != self._was_paused:
            self._was_paused = record is not None
            if record is not None:
                log.warning("group %r paused (%s): taking no new work", self.group,
                            record.get("reason"))
            else:
                log.info("group %r resumed", self.group)
        return record is not None

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)

    @property
    def _reclaim_interval(self) -> float:
        return min(5.0, max(0.05, self.visibility_ms / 2000))

    async def _fetch(self) -> None:
        """One round: adopt late deliveries, or reclaim, or read; admitted messages go
        to the buffer."""
        backend = self._backend
        assert backend is not None
        deliveries, self._late = self._late, []
        now = time.monotonic()
        if not deliveries and now >= self._next_reclaim:
            self._next_reclaim = now + self._reclaim_interval
            deliveries = await backend.maintain(
                self.visibility_ms, self.batch_size, [m._handle for m in self._held.values()],
                [m._handle for m in self._acks])
            if len(deliveries) >= self.batch_size:
                # A full batch: a stopped or dead consumer left more; take the rest
                # batch after batch instead of one batch per reclaim interval.
                self._next_reclaim = now
        if not deliveries:
            block = min(self.block_ms, int(self._reclaim_interval * 1000) + 1)
            acks = self._take_acks()
            read = asyncio.ensure_future(
                backend.read(self.batch_size, block, [m._handle for m in acks]))
            stopped = asyncio.ensure_future(self._stop.wait())
            try:
                await asyncio.wait({read, stopped}, return_when=asyncio.FIRST_COMPLETED)
            except asyncio.CancelledError:
                # Our caller gave up (e.g. a timeout around next_message): what this read
                # brings is kept for the next call instead of being stranded.
                read.add_done_callback(lambda t: self._adopt(t, acks))
                raise
            finally:
                stopped.cancel()
            if not read.done():  # stopping: entries it may still deliver stay pending
                read.cancel()
                await asyncio.wait({read})
                self._acks.extend(acks)  # maybe not sent; XACK/LREM twice is harmless
                return
            try:
                deliveries = read.result()
            except BaseException:
                self._acks.extend(acks)
                raise
        await self._admit(deliveries)

    def _adopt(self, read: asyncio.Future[list[Delivery]], acks: list[Message]) -> None:
        if read.cancelled() or read.exception() is not None:
            self._acks.extend(acks)
        else:
            self._late.extend(read.result())

    async def _admit(self, deliveries: list[Delivery]) -> None:
        """Buffer the good deliveries as messages; dead-letter malformed and exhausted
        ones. Messages are buffered before any await, so a cancellation strands none."""
        backend = self._backend
        assert backend is not None
        settles = backend.settles  # else nothing to keep or ack, no delivery limit
        meta = self.meta
        limit = meta.max_deliveries_for(self.group)
        schema = self._meta.schema()
        rejected: list[tuple[Delivery, str, int]] = []
        now = time.monotonic()
        for d in deliveries:
            env = d.envelope
            if env is None:
                rejected.append((d, f"malformed entry: {d.reason}", d.delivered))
                continue
            deliveries_so_far = d.delivered + env.attempt
            if deliveries_so_far > limit and settles:
                rejected.append((d, f"exceeded maxDeliveries ({deliveries_so_far} > {limit})"
                                 + (f"; last error: {env.error}" if env.error else ""),
                                 deliveries_so_far))
                continue
            payload: Any = env.body
            if self.expect_json:
                try:
                    payload = parse_json(env.body)
                    if schema is not None:
                        schema.validate(payload)
                except DecodeError as exc:
                    rejected.append((d, f"malformed entry: {exc.reason}", deliveries_so_far))
                    continue
                except SchemaValidationError as exc:
                    rejected.append((d, f"schema violation: {exc}", deliveries_so_far))
                    continue
            msg = Message(id=d.id, partition=d.partition, body=env.body, payload=payload,
                          idempotency_key=env.idempotency_key, headers=env.headers,
                          attempt=env.attempt, deliveries=deliveries_so_far,
                          last_error=env.error, priority=d.priority, _consumer=self,
                          _handle=d.handle, _touched=now)
            self._buffer.append(msg)
            if settles:
                self._held[(d.partition, d.id)] = msg
        if rejected:
            await backend.deadletter(rejected, _now_ms(), meta.dead_letter)

    # --- settling ------------------------------------------------------------------------------

    def _take_acks(self) -> list[Message]:
        acks, self._acks = self._acks, []
        return acks

    async def flush_acks(self) -> None:
        """Send deferred acknowledgements now."""
        acks = self._take_acks()
        if not acks or self._backend is None:
            return
        try:
            await self._backend.ack([m._handle for m in acks])
        except BaseException:
            self._acks.extend(acks)
            raise

    @property
    def retry_policy(self) -> RetryPolicy:
        return self.meta.retry

    def _release(self, msg: Message) -> None:
        msg._settle()
        self._held.pop((msg.partition, msg.id), None)

    # --- Settler (message.py): what Message.ack, .nack and .once call; use those -------------

    def ack_message(self, msg: Message) -> None:
        """Settle now; the XACK/LREM goes with the next read or flush (no await here:
        this runs once per message)."""
        self._release(msg)
        if self._backend is not None and not self._backend.settles:
            return
        self._acks.append(msg)

    async def nack_message(self, msg: Message, error: BaseException | str | None,
                           delay: float | None) -> None:
        """Settle now; schedule a retry, or dead-letter on the last allowed delivery."""
        self._release(msg)
        backend = self._backend
        if backend is None or not backend.settles:
            return
        reason = (error if isinstance(error, str) else
                  safe_message(error) if error is not None else "nacked")
        meta = self.meta
        limit = meta.max_deliveries_for(self.group)
        d = Delivery(msg.partition, msg.id, msg._handle, None, None, msg.deliveries,
                     msg.priority)
        if msg.deliveries >= limit:
            await backend.deadletter(
                [(d, f"exhausted {limit} deliveries; last error: {reason}", msg.deliveries)],
                _now_ms(), meta.dead_letter)
            return
        delay_ms = (int(delay * 1000) if delay is not None
                    else self.retry_policy.delay_ms(msg.deliveries))
        await backend.nack(d, _now_ms() + delay_ms, reason)

    async def run_once(self, msg: Message, name: str, effect: Effect | None) -> bool:
        """The done-marker of ``msg`` and ``name`` (see :meth:`Message.once`)."""
        part = self._parts[msg.partition]
        ident = msg.idempotency_key or f"id:{msg.id}"
        marker = f"{part.idempotency_prefix}{ident}\x1f{name}"
        ttl = self.meta.idempotency_ttl_ms
        if effect is None:
            return bool(await self._client.set(marker, msg.id, nx=True, px=ttl))
        async with self._client.pipeline(transaction=True) as pipe:
            while True:
                try:
                    await pipe.watch(marker)
                    # GET, not EXISTS: redis-py's cluster pipeline drops an EXISTS sent
                    # between WATCH and MULTI unsent (and returns itself, which is falsy)
                    if await pipe.get(marker) is not None:
                        return False  # leaving the block unwatches
                    pipe.multi()
                    pipe.set(marker, msg.id, px=ttl)
                    effect(pipe)
                    await pipe.execute()
                    return True
                except WatchError:
                    continue

    # --- background work ---------------------------------------------------------------------

    async def _maintain(self) -> None:
        """Every tick: refresh metadata, flush acks, heartbeat held messages, promote
        retries. Transient Redis errors are logged and retried on the next tick."""
        tick = 0.01
        last_flush = time.monotonic()
        last_beat = time.monotonic()
        while not self._closed:
            await asyncio.sleep(tick)
            _reraise_swallowed_cancel()
            try:
                now = time.monotonic()
                if self._meta.stale():
                    await self._refresh_meta()
                vis = self.visibility_ms / 1000
                tick = min(0.05, self.ack_flush_interval, max(0.005, vis / 10))
                if self._acks and now - last_flush >= self.ack_flush_interval:
                    last_flush = now
                    await self.flush_acks()
                if self.heartbeat_enabled and now - last_beat >= vis / 6:
                    last_beat = now
                    await self._heartbeat(now, vis / 3)
                if now >= self._next_promote:
                    self._next_promote = now + self.promote_interval
                    assert self._backend is not None
                    await self._backend.promote(_now_ms(), 100)
            except redis_errors() as exc:
                if is_no_group(exc):
                    log.warning("consumer group %r is missing; waiting for it", self.group)
                elif isinstance(exc, ResponseError) and not is_transient(exc):
                    self._fatal = self._translate(exc)
                    return
                _reraise_swallowed_cancel()
                log.warning("consumer maintenance failed (%s); retrying",
                            safe_message(exc, 200))
                await asyncio.sleep(0.2)

    async def _refresh_meta(self) -> None:
        meta = await self._meta.get(force=True)
        if meta.partitions != len(self._parts) and self._backend is not None:
            log.info("queue now has %d partitions", meta.partitions)
            self._parts = self.config.partition_keys(meta.partitions)
            self._backend.set_partitions(self._parts)

    async def _heartbeat(self, now: float, every: float) -> None:
        backend = self._backend
        if backend is None or not self._held:
            return
        due = {key: m._handle for key, m in self._held.items() if now - m._touched >= every}
        owned = await backend.heartbeat(list(due.values()))
        for key, handle in due.items():
            msg = self._held.get(key)
            if msg is None:
                continue
            if handle in owned:
                msg._touched = now
            else:
                msg.lost = True
                self._held.pop(key, None)
                log.warning("message %s was reclaimed by another consumer or dead-lettered "
                            "while held here; its ack will be a no-op", msg.id)

    # --- handler style ---------------------------------------------------------------------

    def handler(self, fn: Handler) -> Handler:
        """Decorator registering the handler :meth:`run` uses."""
        self._handler = fn
        return fn

    async def run(self, handler: Handler | None = None, *, concurrency: int = 1,
                  install_signal_handlers: bool = True) -> None:
        """Process messages until stopped (SIGTERM/SIGINT, or :meth:`stop`), then close.

        The handler's return acks the message (unless it acked/nacked itself); an
        exception nacks it (retry with backoff, dead-letter after maxDeliveries).
        """
        fn = handler or self._handler
        if fn is None:
            raise ConfigError("no handler: pass one or decorate it with @consumer.handler")
        loop = asyncio.get_running_loop()
        installed: list[signal.Signals] = []
        if install_signal_handlers:
            for signum in (signal.SIGTERM, signal.SIGINT):
                with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                    loop.add_signal_handler(signum, self.stop)
                    installed.append(signum)
        slots = asyncio.Semaphore(concurrency)
        tasks: set[asyncio.Task[None]] = set()

        def finished(task: asyncio.Task[None]) -> None:
            tasks.discard(task)
            slots.release()

        try:
            while await self._acquire_unless_stopped(slots):
                msg = await self.next_message()
                if msg is None:
                    slots.release()
                    break
                task = asyncio.create_task(self._handle(fn, msg))
                tasks.add(task)
                task.add_done_callback(finished)
            if tasks:
                _, unfinished = await asyncio.wait(tasks, timeout=self.shutdown_grace)
                for task in unfinished:
                    task.cancel()
                if unfinished:
                    log.warning("%d handlers did not finish within %.1fs; their messages "
                                "stay pending and will be reclaimed", len(unfinished),
                                self.shutdown_grace)
                    await asyncio.wait(unfinished)
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)
            await self.close()

    async def _acquire_unless_stopped(self, slots: asyncio.Semaphore) -> bool:
        """Wait for a free handler slot; False (and no slot taken) once stopped."""
        acquire = asyncio.ensure_future(slots.acquire())
        stopped = asyncio.ensure_future(self._stop.wait())
        await asyncio.wait({acquire, stopped}, return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        if acquire.done():
            if not self.stopping:
                return True
            slots.release()
            return False
        acquire.cancel()
        await asyncio.wait({acquire})
        if not acquire.cancelled():
            slots.release()
        return False

    async def _handle(self, fn: Handler, msg: Message) -> None:
        try:
            await fn(msg)
        except asyncio.CancelledError:
            raise  # shutdown: leave the message pending for reclaim
        except Exception as exc:  # noqa: BLE001 - any handler failure is the message's failure: nack it, keep consuming
            log.info("handler failed on %s: %s", msg.id, safe_message(exc, 300))
            if not msg.settled:
                await self._settle_safely(msg.nack(exc))
            return
        if not msg.settled:
            await msg.ack()

    async def _settle_safely(self, coro: Any) -> None:
        try:
            await coro
        except redis_errors() as exc:
            # The message stays pending: it is reclaimed after the visibility timeout.
            log.warning("could not settle a message (%s)", safe_message(exc, 200))
