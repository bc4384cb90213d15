"""Lag polling: read lag/pending for 1,000 and 10,000 consumer groups.

Layout: one stream per group (a ConsumerGroup on a one-partition queue), each with 20
entries of which the group has read 10 and acked 5: every group has lag 10 and 5
pending, the busy case (an idle fleet is cheaper: nothing pending to look up).

Measured, each reading the same facts per group — XINFO GROUPS, XLEN, the due retries
(ZCOUNT) and the oldest pending entry (XPENDING - + 1):
- value: the gateway's `poll_groups` (what the operator runs every tick: redis.asyncio,
  a read-only Lua script per 50 partitions, 1,000 partitions per pipeline), with the
  operator's garbage-collector thresholds (agentqueue/gctune.py);
- baseline: the four commands one at a time (redis.asyncio, awaiting each);
- reference: the four commands as plain pipelined commands (redis.asyncio, 1,000 groups
  per pipeline), to show what the script adds over pipelining alone.

Goal: 10,000 groups in < 250 ms.
"""

from __future__ import annotations

import asyncio
import gc
import sys
import time
from typing import Any

import redis
import redis.asyncio as aioredis

from .common import BenchRedis, Row, fmt_ms, log, main, median, met, skipped

NAME = "polling"
ENTRIES, READ, ACKED = 20, 10, 5
GROUP = "workers"
NAMESPACE = "bench"
GOAL_10K_S = 0.250
PAYLOAD = b"x" * 64


def stream_key(i: int) -> str:
    return f"aq:{{{NAMESPACE}/q{i}/0}}:q"


def populate(client: redis.Redis, groups: int) -> None:
    """``groups`` streams with one group each: lag 10, pending 5."""
    batch = 500
    for start in range(0, groups, batch):
        pipe = client.pipeline(transaction=False)
        for i in range(start, min(groups, start + batch)):
            key = stream_key(i)
            for _ in range(ENTRIES):
                pipe.xadd(key, {"d": PAYLOAD})
            pipe.xgroup_create(key, GROUP, id="0")
        pipe.execute()
        pipe = client.pipeline(transaction=False)
        for i in range(start, min(groups, start + batch)):
            pipe.xreadgroup(GROUP, "c1", {stream_key(i): ">"}, count=READ)
        reads = pipe.execute()
        pipe = client.pipeline(transaction=False)
        for i, read in zip(range(start, min(groups, start + batch)), reads, strict=True):
            ids = [entry_id for _, entries in read for entry_id, _ in entries][:ACKED]
            pipe.xack(stream_key(i), GROUP, *ids)
        pipe.execute()


# --- raw ways of reading the same facts --------------------------------------------------------

def retry_key(i: int) -> str:
    return f"aq:{{{NAMESPACE}/q{i}/0}}:retry"


async def one_at_a_time(client: aioredis.Redis, groups: int) -> int:
    """ZCOUNT, XINFO GROUPS, XLEN, XPENDING - + 1: awaiting each command."""
    now = int(time.time() * 1000)
    total_pending = 0
    for i in range(groups):
        key = stream_key(i)
        await client.zcount(retry_key(i), "-inf", now)
        info = await client.xinfo_groups(key)
        await client.xlen(key)
        if info[0]["pending"]:
            await client.xpending_range(key, GROUP, "-", "+", 1)
        total_pending += int(info[0]["pending"])
    return total_pending


async def pipelined(client: aioredis.Redis, groups: int, batch: int = 1000) -> int:
    """The same commands pipelined (XPENDING for every group: the pipeline cannot skip
    it for groups with nothing pending without a second round trip)."""
    now = int(time.time() * 1000)
    total_pending = 0
    for lo in range(0, groups, batch):
        async with client.pipeline(transaction=False) as pipe:
            for i in range(lo, min(groups, lo + batch)):
                key = stream_key(i)
                pipe.zcount(retry_key(i), "-inf", now)
                pipe.xinfo_groups(key)
                pipe.xlen(key)
                pipe.xpending_range(key, GROUP, "-", "+", 1)
            out = await pipe.execute()
        total_pending += sum(int(info[0]["pending"]) for info in out[1::4])
    return total_pending


async def gateway(client: aioredis.Redis, groups: int) -> int:
    from agentqueue.redisgw.poller import GroupTarget, poll_groups

    targets = [GroupTarget(NAMESPACE, f"q{i}", GROUP, 1) for i in range(groups)]
    figures = await poll_groups(client, targets)
    return sum(f.pending for f in figures)


async def time_poll(server: BenchRedis, fn: Any, groups: int, repeat: int) -> float:
    """Median wall time; one untimed warm-up (connection, script load)."""
    client = server.aclient()
    try:
        expected = groups * (READ - ACKED)
        got = await fn(client, min(groups, 100) if repeat > 1 else groups)
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            got = await fn(client, groups)
            times.append(time.perf_counter() - start)
        if got != expected:
            raise RuntimeError(f"{fn.__name__} saw {got} pending, expected {expected}")
        return median(times)
    finally:
        await client.aclose()


def gateway_missing() -> str | None:
    try:
        from agentqueue.redisgw.poller import GroupTarget, poll_groups  # noqa: F401
    except ImportError as exc:
        return f"agentqueue.redisgw.poller not importable ({exc})"
    return None


def run(quick: bool) -> list[Row]:
    sizes = [100] if quick else [1_000, 10_000]
    repeat = 1 if quick else 5
    rows: list[Row] = []
    with BenchRedis() as server:
        sync = server.client()
        try:
            for n in sizes:
                server.flush()
                log(f"polling: creating {n:,} streams with one group each")
                populate(sync, n)
                goal = "< 250 ms" if n == 10_000 else ""
                slow = asyncio.run(time_poll(server, one_at_a_time, n,
                                             1 if n >= 10_000 else min(repeat, 3)))
                plain = asyncio.run(time_poll(server, pipelined, n, repeat))
                case = f"{n:,} groups: gateway poll_groups vs one command at a time"
                missing = gateway_missing()
                if missing:
                    rows.append(skipped(NAME, case, missing, goal))
                else:
                    # As in the operator process (agentqueue.gctune): its GC thresholds.
                    from agentqueue import gctune

                    defaults = gc.get_threshold()
                    gctune.tune()
                    try:
                        value = asyncio.run(time_poll(server, gateway, n, repeat))
                    finally:
                        gc.set_threshold(*defaults)
                    ok = value < GOAL_10K_S if n == 10_000 else None
                    rows.append(Row(NAME, case, fmt_ms(value), fmt_ms(slow),
                                    f"{slow / value:.0f}× faster", goal, met(ok)))
                rows.append(Row(NAME, f"{n:,} groups: same commands plainly pipelined "
                                "(reference) vs one at a time", fmt_ms(plain), fmt_ms(slow),
                                f"{slow / plain:.0f}× faster", "", ""))
        finally:
            sync.close()
    return rows


if __name__ == "__main__":
    sys.exit(main(NAME, run))
