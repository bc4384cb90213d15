"""One polling loop per Redis server for all consumer groups on it.

Each ConsumerGroup daemon subscribes its group; the hub reads lag/pending for every
subscribed group on a server in one pipelined round trip per tick and hands each
daemon its figures. Metrics and status come from the same numbers, so there is no
second polling loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

log = logging.getLogger("agentqueue.pollhub")

K = TypeVar("K")  # group identity
R = TypeVar("R")  # per-group result

# poll(client, requests) -> one result per request, in the same order.
PollFn = Callable[[Any, list[Any]], Awaitable[list[Any]]]


@dataclass
class _Sub:
    request: Any
    interval: float
    next_due: float = 0.0
    waiter: asyncio.Future[Any] | None = None
    quiet: Quiet | None = None


@dataclass
class Quiet:
    """A subscriber's wish not to be woken while nothing changes: until `until`
    (monotonic), a result whose figures equal `figures` goes to `touch` (cheap, e.g.
    refresh an observed-at time) instead of waking the waiter. An idle fleet then costs
    one poll per server per tick, not one daemon wake-up per group."""

    figures: Any
    until: float
    touch: Callable[[PollResult], None] | None = None


@dataclass
class PollResult:
    """Either figures or the error that prevented reading them."""

    figures: Any = None
    error: BaseException | None = None
    at: float = field(default_factory=time.time)


class _ServerLoop:
    def __init__(self, key: str, get_client: Callable[[], Awaitable[Any]], poll: PollFn) -> None:
        self.key = key
        self.get_client = get_client
        self.poll = poll
        self.subs: dict[Any, _Sub] = {}
        self.wake = asyncio.Event()
        self.task = asyncio.create_task(self._run(), name=f"poll-{key}")
        self.last_duration = 0.0

    async def _run(self) -> None:
        while True:
            if not self.subs:
                self.wake.clear()
                await self.wake.wait()
            now = time.monotonic()
            # Subscribers due within a little while ride along: groups that joined at
            # different moments share ticks instead of each costing a round trip.
            due = {k: s for k, s in self.subs.items()
                   if s.waiter and s.next_due <= now + min(0.1, s.interval / 4)}
            if not due:
                next_at = min((s.next_due for s in self.subs.values()), default=now + 0.1)
                self.wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), max(0.0, next_at - now) + 0.001)
                continue
            started = time.monotonic()
            try:
                client = await self.get_client()
                results = await self.poll(client, [s.request for s in due.values()])
                outcome = {k: PollResult(figures=r) for k, r in zip(due, results, strict=True)}
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - handed to every waiter to classify
                outcome = {k: PollResult(error=exc) for k in due}
            self.last_duration = time.monotonic() - started
            for k, sub in due.items():
                sub.next_due = started + sub.interval
                result = outcome[k]
                quiet = sub.quiet
                if (quiet is not None and result.error is None and started < quiet.until
                        and result.figures == quiet.figures):
                    if quiet.touch is not None:
                        quiet.touch(result)
                    continue
                if sub.waiter and not sub.waiter.done():
                    sub.waiter.set_result(result)


class PollHub(Generic[K]):
    def __init__(self, poll: PollFn) -> None:
        self.poll = poll
        self.loops: dict[str, _ServerLoop] = {}

    async def next(self, server_key: str, get_client: Callable[[], Awaitable[Any]], key: K,
                   request: Any, interval: float, quiet: Quiet | None = None) -> PollResult:
        """Wait for this group's figures from the next tick of its server's loop (with
        `quiet`: from the first tick whose figures differ, or after `quiet.until`)."""
        loop = self.loops.get(server_key)
        if loop is None:
            loop = self.loops[server_key] = _ServerLoop(server_key, get_client, self.poll)
        sub = loop.subs.get(key)
        if sub is None:
            sub = loop.subs[key] = _Sub(request, interval)
        sub.request, sub.interval, sub.quiet = request, interval, quiet
        sub.waiter = asyncio.get_running_loop().create_future()
        loop.wake.set()
        try:
            return await sub.waiter
        finally:
            sub.waiter = None
            sub.quiet = None

    def poke(self, key: K) -> None:
        """Deliver the next tick to this subscriber even if nothing changed (its spec
        did)."""
        for loop in self.loops.values():
            sub = loop.subs.get(key)
            if sub is not None:
                sub.quiet = None

    def forget(self, key: K) -> None:
        for loop in self.loops.values():
            loop.subs.pop(key, None)

    async def close(self) -> None:
        for loop in self.loops.values():
            loop.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loop.task
        self.loops.clear()
