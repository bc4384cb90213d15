"""runtime.Waits: what a ConsumerGroup waiting for its queue awaits (pure asyncio)."""

from __future__ import annotations

import asyncio

from agentqueue.runtime import Waits


async def test_every_waiter_of_a_key_wakes_and_nothing_is_left_behind() -> None:
    waits: Waits[str] = Waits()
    short = asyncio.create_task(waits.wait("q", 0.05))
    long = asyncio.create_task(waits.wait("q", 5.0))
    other = asyncio.create_task(waits.wait("other", 5.0))
    assert await short is False  # timed out: the key must stay for the one still waiting
    waits.fire("q")
    assert await asyncio.wait_for(long, 1.0) is True
    assert len(waits) == 1  # only "other" is waited for
    waits.fire("other")
    assert await other is True
    assert len(waits) == 0


async def test_a_key_nobody_waits_for_holds_nothing() -> None:
    waits: Waits[str] = Waits()
    assert await waits.wait("never-made", 0.01) is False
    waits.fire("never-waited")
    assert len(waits) == 0
    # A fire before the wait is not remembered: callers compare versions first.
    assert await waits.wait("never-waited", 0.01) is False
