"""One polling loop per Redis server for all consumer groups on it.

The group keeper (keepers/groups.py) subscribes each group with a callback; the hub
reads lag/pending for every subscribed group on a server in one pipelined round trip
per tick and hands each group's figures to its callback (once: a group re-subscribes
after handling them). Metrics and status come from the same numbers, so there is no
second polling loop, and no task per group.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

log = logging.getLogger("agentqueue.pollhub")

K = TypeVar("K")  # group identity
R = TypeVar("R")  # per-group result

# poll(client, requests) -> one result per request, in the same order.
PollFn = Callable[[Any, list[Any]], Awaitable[list[Any]]]


@dataclass(slots=True)
class _Sub:
    request: Any
    interval: float
    next_due: float = 0.0
    deliver: Callable[[PollResult], None] | None = None
    """Armed: called with the next result worth delivering, then disarmed."""
    quiet: Quiet | None = None
    slack: float = 0.0
    """Due this little before `next_due` still rides along with a tick."""


@dataclass
class Quiet:
    """A subscriber's wish not to be woken while nothing changes: until `until`
    (monotonic), a result whose figures equal `figures` goes to `touch` (cheap, e.g.
    refresh an observed-at time) instead of the subscriber's callback. An idle fleet
    then costs one poll per server per tick, not one group tick per group."""

    figures: Any
    until: float
    touch: Callable[[float], None] | None = None
    """Called with the time (epoch seconds) of each unchanged result it swallows."""


@dataclass
class PollResult:
    """Either figures or the error that prevented reading them."""

    figures: Any = None
    error: BaseException | None = None
    at: float = field(default_factory=time.time)


def _next_tick(now: float, interval: float) -> float:
    """The next multiple of `interval` after `now` (a little past it, at least): groups
    with one pollInterval share ticks whenever they were created, so 1,000 groups at 1s
    cost one poll a second, not one per moment a group happened to start (6 a second,
    each with its fixed costs and a scan of every subscriber)."""
    if interval <= 0:
        return now
    # After half an interval at least: a tick just before a grid point waits for the
    # next one (between 0.5 and 1.5 intervals once, then exactly one interval).
    return (math.floor((now + interval / 2) / interval) + 1) * interval


class _ServerLoop:
    def __init__(self, key: str, get_client: Callable[[], Awaitable[Any]], poll: PollFn) -> None:
        self.key = key
        self.get_client = get_client
        self.poll = poll
        self.subs: dict[Any, _Sub] = {}
        self.wake = asyncio.Event()
        self.sleep_until = -math.inf
        """While the loop waits: when it will look again on its own (inf: only when
        woken). -inf while it runs: it looks at every subscriber before it waits."""
        self.task = asyncio.create_task(self._run(), name=f"poll-{key}")
        self.last_duration = 0.0

    async def _run(self) -> None:
        while True:
            if not self.subs:
                self.wake.clear()
                self.sleep_until = math.inf
                await self.wake.wait()
                self.sleep_until = -math.inf
            now = time.monotonic()
            # Subscribers due within a little while ride along: groups that joined at
            # different moments share ticks instead of each costing a round trip.
            due = [(k, s) for k, s in self.subs.items()
                   if s.deliver is not None and s.next_due <= now + s.slack]
            if not due:
                # Only armed subscribers set the pace: one handling its last figures
                # re-arms with subscribe(), which sets `wake`.
                next_at = min((s.next_due for s in self.subs.values() if s.deliver),
                              default=None)
                self.wake.clear()
                timeout = None if next_at is None else max(0.0, next_at - now) + 0.001
                self.sleep_until = math.inf if next_at is None else next_at
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), timeout)
                self.sleep_until = -math.inf
                continue
            started = time.monotonic()
            try:
                client = await self.get_client()
                results = await self.poll(client, [s.request for _, s in due])
                error: BaseException | None = None
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - handed to every waiter to classify
                results, error = [None] * len(due), exc
            self.last_duration = time.monotonic() - started
            self._hand_out(due, results, error, started)

    def _hand_out(self, due: list[tuple[Any, _Sub]], results: list[Any],
                  error: BaseException | None, started: float) -> None:
        """Each due subscriber's result: to its callback, or (quiet and unchanged) to
        its `touch`. One pass, no object per quiet subscriber: an idle fleet of 10,000
        costs this loop, not 10,000 results."""
        at = time.time()
        ticks: dict[float, float] = {}
        for (_, sub), figures in zip(due, results, strict=True):
            next_due = ticks.get(sub.interval)
            if next_due is None:
                next_due = ticks[sub.interval] = _next_tick(started, sub.interval)
            sub.next_due = next_due
            quiet = sub.quiet
            if (quiet is not None and error is None and started < quiet.until
                    and (figures is quiet.figures or figures == quiet.figures)):
                if quiet.touch is not None:
                    quiet.touch(at)
                continue
            deliver, sub.deliver, sub.quiet = sub.deliver, None, None
            if deliver is not None:
                try:
                    deliver(PollResult(figures=figures, at=at) if error is None
                            else PollResult(error=error, at=at))
                except Exception:  # noqa: BLE001 - one subscriber never stops the loop
                    log.exception("poll subscriber failed")


class PollHub(Generic[K]):
    def __init__(self, poll: PollFn) -> None:
        self.poll = poll
        self.loops: dict[str, _ServerLoop] = {}

    def subscribe(self, server_key: str, get_client: Callable[[], Awaitable[Any]], key: K,
                  request: Any, interval: float, quiet: Quiet | None,
                  deliver: Callable[[PollResult], None]) -> None:
        """Hand this group's figures from the next tick of its server's loop to
        `deliver` (with `quiet`: from the first tick whose figures differ, or after
        `quiet.until`). One delivery per call: the subscriber calls again when it has
        handled it. A group that moved to another server leaves its old loop."""
        for other_key, other in self.loops.items():
            if other_key != server_key:
                other.subs.pop(key, None)
        loop = self.loops.get(server_key)
        if loop is None:
            loop = self.loops[server_key] = _ServerLoop(server_key, get_client, self.poll)
        sub = loop.subs.get(key)
        if sub is None:
            sub = loop.subs[key] = _Sub(request, interval)
        sub.request, sub.interval, sub.quiet, sub.deliver = request, interval, quiet, deliver
        sub.slack = min(0.1, interval / 4)
        # Wake the loop only when this subscriber is due before it would look anyway: a
        # group re-arming after its figures (the usual case) is due at the next tick,
        # and waking the loop for each of 10,000 meant a scan of all of them per group.
        if sub.next_due < loop.sleep_until:
            loop.wake.set()

    async def next(self, server_key: str, get_client: Callable[[], Awaitable[Any]], key: K,
                   request: Any, interval: float, quiet: Quiet | None = None) -> PollResult:
        """`subscribe`, awaited."""
        waiter: asyncio.Future[PollResult] = asyncio.get_running_loop().create_future()

        def deliver(result: PollResult) -> None:
            if not waiter.done():
                waiter.set_result(result)

        self.subscribe(server_key, get_client, key, request, interval, quiet, deliver)
        return await waiter

    def poke(self, key: K) -> None:
        """Deliver the next tick to this subscriber even if nothing changed (its spec
        did)."""
        for loop in self.loops.values():
            sub = loop.subs.get(key)
            if sub is not None:
                sub.quiet = None
                sub.next_due = 0.0
                loop.wake.set()

    def forget(self, key: K) -> None:
        for loop in self.loops.values():
            loop.subs.pop(key, None)

    async def close(self) -> None:
        for loop in self.loops.values():
            loop.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loop.task
        self.loops.clear()
