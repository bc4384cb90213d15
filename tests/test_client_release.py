"""A consumer that stops (a scale-down, a rolling update) hands the messages it read but
never started back to the group at once: another consumer takes them at its next reclaim,
not after the visibility timeout (seen on the node: a 2 -> 1 scale-down held a drain
for the whole 30 s timeout)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from agentqueue_client import Consumer, Producer

from .agents.aio import take
from .agents.harness import part, provision, sdk_config

pytest_plugins = ["tests.redis_fixtures"]

GROUP = "workers"
VISIBILITY_MS = 30_000
# The other consumer's reclaim runs every min(5 s, visibility / 2) when its reads come back
# empty: the released entries must be handled within that plus a 3 s margin, far below 30 s.
RECLAIM_BOUND_S = 5.0 + 3.0


async def test_unstarted_messages_are_released_on_close(redis_server: Any,
                                                        redis_client: Any) -> None:
    cfg = sdk_config(redis_server, "release")
    await provision(redis_client, cfg, visibility_ms=VISIBILITY_MS)
    async with Producer(cfg) as producer:
        await producer.send_many([{"n": i} for i in range(40)])
    first = Consumer(cfg, group=GROUP, consumer_name="leaving", batch_size=40, block_ms=100)
    (msg,) = await take(first, 1)          # reads all 40 into its buffer, hands out one
    await msg.ack()
    await first.close()
    key = part(cfg).queue_key
    summary = await redis_client.xpending(key, GROUP)
    assert summary["pending"] == 39        # still pending: nothing acked that was not handled
    rows = await redis_client.xpending_range(key, GROUP, "-", "+", 100)
    assert all(r["time_since_delivered"] >= VISIBILITY_MS for r in rows), rows[:3]
    assert all(r["times_delivered"] == 1 for r in rows)  # JUSTID: no delivery counted

    t0 = time.monotonic()
    async with Consumer(cfg, group=GROUP, consumer_name="staying", block_ms=100) as second:
        got = await take(second, 39, timeout=RECLAIM_BOUND_S)
        for m in got:
            await m.ack()
        await second.flush_acks()
    took = time.monotonic() - t0
    assert sorted(m.payload["n"] for m in got) == list(range(1, 40))
    assert took < RECLAIM_BOUND_S, took
    assert (await redis_client.xpending(key, GROUP))["pending"] == 0


async def test_a_dead_consumers_backlog_is_reclaimed_batch_after_batch(
        redis_server: Any, redis_client: Any) -> None:
    """A consumer killed holding 40 messages: the next one takes all 40 in consecutive
    reclaims (batches of 10), not one batch per reclaim interval (2 s here: 4 batches
    would take 6 s after the first)."""
    cfg = sdk_config(redis_server, "dead")
    await provision(redis_client, cfg, visibility_ms=4000)
    async with Producer(cfg) as producer:
        await producer.send_many([{"n": i} for i in range(40)])
    key = part(cfg).queue_key
    await redis_client.xreadgroup(GROUP, "killed", {key: ">"}, count=40)  # then it "dies"
    await asyncio.sleep(4.1)                                              # past visibility
    t0 = time.monotonic()
    async with Consumer(cfg, group=GROUP, consumer_name="heir", block_ms=100) as heir:
        got = await take(heir, 40, timeout=10)
        took = time.monotonic() - t0
        for m in got:
            await m.ack()
        await heir.flush_acks()
    assert sorted(m.payload["n"] for m in got) == list(range(40))
    assert took < 1.5, took  # measured ~0.05 s; one reclaim interval (2 s) would fail it
