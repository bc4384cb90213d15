"""PollHub: one poll per server per tick; quiet subscribers sleep through unchanged ticks."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from agentqueue.pollhub import PollHub, PollResult, Quiet


class Source:
    def __init__(self) -> None:
        self.value = 0
        self.polls = 0

    async def poll(self, client: Any, requests: list[Any]) -> list[Any]:
        self.polls += 1
        return [self.value for _ in requests]


async def _client() -> None:
    return None


async def test_quiet_subscriber_sleeps_until_figures_change_or_time_is_up() -> None:
    src = Source()
    hub: PollHub[str] = PollHub(src.poll)
    try:
        first = await hub.next("s", _client, "g", "req", 0.02)
        assert first.figures == 0
        touched: list[float] = []
        t0 = time.monotonic()
        waiting = asyncio.ensure_future(
            hub.next("s", _client, "g", "req", 0.02, Quiet(0, t0 + 5.0, touched.append)))
        await asyncio.sleep(0.3)
        assert not waiting.done() and len(touched) >= 5  # polled, not woken
        src.value = 1  # new work: the next tick wakes it
        result = await asyncio.wait_for(waiting, 1.0)
        assert result.figures == 1 and time.monotonic() - t0 < 1.0

        # Bounded: woken at `until` even if nothing changes.
        t0 = time.monotonic()
        result = await asyncio.wait_for(
            hub.next("s", _client, "g", "req", 0.02, Quiet(1, t0 + 0.2)), 2.0)
        assert 0.15 < time.monotonic() - t0 < 1.0

        # poke(): the next tick is delivered although nothing changed (a spec change).
        t0 = time.monotonic()
        waiting = asyncio.ensure_future(
            hub.next("s", _client, "g", "req", 0.02, Quiet(1, t0 + 5.0)))
        await asyncio.sleep(0.1)
        assert not waiting.done()
        hub.poke("g")
        await asyncio.wait_for(waiting, 1.0)
    finally:
        await hub.close()


async def test_errors_always_wake() -> None:
    calls = {"n": 0}

    async def failing(client: Any, requests: list[Any]) -> list[Any]:
        calls["n"] += 1
        raise ConnectionError("redis down")

    hub: PollHub[str] = PollHub(failing)
    try:
        result = await asyncio.wait_for(
            hub.next("s", _client, "g", "req", 0.02, Quiet(0, time.monotonic() + 5.0)), 1.0)
        assert isinstance(result.error, ConnectionError)
    finally:
        await hub.close()


class CountingEvent(asyncio.Event):
    def __init__(self) -> None:
        super().__init__()
        self.sets = 0

    def set(self) -> None:
        self.sets += 1
        super().set()


async def test_subscribers_rearming_after_each_tick_do_not_wake_the_loop() -> None:
    """Every group re-subscribes after handling its figures; at 10,000 groups a wake per
    re-subscription made the loop scan all of them once per group (quadratic)."""
    src = Source()
    hub: PollHub[int] = PollHub(src.poll)
    delivered = {"n": 0}

    def rearm(key: int) -> Any:
        def deliver(result: PollResult) -> None:
            delivered["n"] += 1
            hub.subscribe("s", _client, key, "req", 0.1, None, rearm(key))
        return deliver

    try:
        hub.subscribe("s", _client, 0, "req", 0.1, None, rearm(0))
        wake = hub.loops["s"].wake = CountingEvent()
        for key in range(1, 2000):
            hub.subscribe("s", _client, key, "req", 0.1, None, rearm(key))
        await asyncio.sleep(1.0)
        ticks = src.polls
        assert ticks >= 5 and delivered["n"] >= 2000 * (ticks - 1)
        # The new subscribers may wake it (due at once); their re-arming never does.
        assert wake.sets < 2000 + ticks, wake.sets
        before = wake.sets
        await asyncio.sleep(0.5)
        assert wake.sets == before and src.polls > ticks
    finally:
        await hub.close()


async def test_subscribers_that_joined_at_different_moments_share_ticks() -> None:
    src = Source()
    hub: PollHub[int] = PollHub(src.poll)

    def rearm(key: int) -> Any:
        def deliver(result: PollResult) -> None:
            hub.subscribe("s", _client, key, "req", 0.2, None, rearm(key))
        return deliver

    try:
        for key in range(50):  # one joins every 13 ms: phases all over the interval
            hub.subscribe("s", _client, key, "req", 0.2, None, rearm(key))
            await asyncio.sleep(0.013)
        await asyncio.sleep(0.5)  # aligned after their first tick
        before = src.polls
        await asyncio.sleep(1.0)
        # One poll per interval for all of them (5 a second), not one per phase (~50).
        assert 4 <= src.polls - before <= 7, src.polls - before
    finally:
        await hub.close()
