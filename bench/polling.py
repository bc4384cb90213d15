"""Lag polling: read lag/pending for 1,000 and 10,000 consumer groups.

Layout: one stream per group (a ConsumerGroup on a one-partition queue), each with 20
entries of which the group has read 10 and acked 5: every group has lag 10 and 5
pending, the busy case (an idle fleet is cheaper: the gateway skips the stream facts).

Measured:
- the gateway's `poll_groups` (what the operator runs every tick, asyncio, pipelined);
- baseline: the same XINFO GROUPS + XLEN per stream one command at a time (asyncio,
  as a loop without pipelining would do it);
- reference: XINFO GROUPS + XLEN pipelined in batches of 1,000 with the sync client
  (the cheapest way to read the raw figures from Python).

Goal: 10,000 groups in < 250 ms.
"""

from __future__ import annotations

import asyncio
import inspect
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import redis
import redis.asyncio as aioredis

from .common import (
    BenchRedis,
    Row,
    fmt_ms,
    log,
    main,
    median,
    met,
    skipped,
)

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


# --- raw ways of reading the figures ---------------------------------------------------------

async def one_at_a_time(client: aioredis.Redis, groups: int) -> int:
    """XINFO GROUPS + XLEN per stream, awaiting each command."""
    total_pending = 0
    for i in range(groups):
        key = stream_key(i)
        info = await client.xinfo_groups(key)
        await client.xlen(key)
        total_pending += int(info[0]["pending"])
    return total_pending


def pipelined_sync(client: redis.Redis, groups: int, batch: int = 1000) -> int:
    total_pending = 0
    for start in range(0, groups, batch):
        pipe = client.pipeline(transaction=False)
        for i in range(start, min(groups, start + batch)):
            key = stream_key(i)
            pipe.xinfo_groups(key)
            pipe.xlen(key)
        out = pipe.execute()
        total_pending += sum(int(info[0]["pending"]) for info in out[0::2])
    return total_pending


# --- the gateway -------------------------------------------------------------------------------

GatewayPoll = Callable[[Any], Awaitable[Any]]


def gateway_poller(groups: int) -> tuple[GatewayPoll, str] | str:
    """A callable running the operator's own poll over every group, or why not."""
    try:
        from agentqueue.redisgw import poller
    except ImportError as exc:
        return f"agentqueue.redisgw.poller not importable ({exc})"
    poll_groups = getattr(poller, "poll_groups", None)
    target_cls = getattr(poller, "GroupTarget", None)
    if poll_groups is None or target_cls is None:
        return "agentqueue.redisgw.poller has no poll_groups/GroupTarget"
    targets = [make_target(target_cls, i) for i in range(groups)]

    async def poll(client: Any) -> Any:
        return await poll_groups(client, targets)

    return poll, f"{poller.__name__}.poll_groups"


def make_target(target_cls: type, i: int) -> Any:
    """A GroupTarget for stream i, built from whatever fields the class declares."""
    from agentqueue.keys import PartitionKeys

    params = inspect.signature(target_cls).parameters
    parts = [PartitionKeys(NAMESPACE, f"q{i}", 0)]
    known: dict[str, Any] = {
        "namespace": NAMESPACE, "queue": f"q{i}", "group": GROUP, "group_name": GROUP,
        "partitions": parts, "partition_keys": parts, "keys": parts, "stream_keys":
        [parts[0].queue_key], "streams": [parts[0].queue_key], "key": f"{NAMESPACE}/q{i}",
        "partition_count": 1, "retry_keys": [parts[0].retry],
    }
    kwargs = {name: known[name] for name in params if name in known}
    return target_cls(**kwargs)


async def time_gateway(server: BenchRedis, poll: GatewayPoll, repeat: int) -> float:
    from agentqueue.redisgw.connection import RedisTarget, connect

    target = RedisTarget(url=server.url)
    client = connect(target) if not inspect.iscoroutinefunction(connect) else \
        await connect(target)
    try:
        await poll(client)  # warm-up: connections, library look-ups
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            await poll(client)
            times.append(time.perf_counter() - start)
        return median(times)
    finally:
        close = getattr(client, "aclose", None) or client.close
        await close()


async def time_one_at_a_time(server: BenchRedis, groups: int, repeat: int) -> float:
    client = server.aclient()
    try:
        await one_at_a_time(client, min(groups, 100))  # warm-up
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            await one_at_a_time(client, groups)
            times.append(time.perf_counter() - start)
        return median(times)
    finally:
        await client.aclose()


def run(quick: bool) -> list[Row]:
    sizes = [100] if quick else [1_000, 10_000]
    repeat = 1 if quick else 5
    rows: list[Row] = []
    with BenchRedis() as server:
        sync = server.client()
        try:
            for n in sizes:
                server.flush()
                log(f"polling: creating {n} streams with one group each")
                populate(sync, n)
                goal = "< 250 ms" if n == 10_000 else ""
                case = f"{n:,} groups: gateway poll_groups vs one at a time"
                slow = asyncio.run(time_one_at_a_time(server, n, 1 if n >= 10_000 else repeat))
                raw = median([_timed(lambda n=n: pipelined_sync(sync, n))
                              for _ in range(repeat)])
                found = gateway_poller(n)
                if isinstance(found, str):
                    rows.append(skipped(NAME, case, found, goal))
                else:
                    poll, _ = found
                    value = asyncio.run(time_gateway(server, poll, repeat))
                    ok = value < GOAL_10K_S if n == 10_000 else None
                    rows.append(Row(NAME, case, fmt_ms(value), fmt_ms(slow),
                                    f"{slow / value:.0f}× faster", goal, met(ok)))
                rows.append(Row(NAME, f"{n:,} groups: raw XINFO GROUPS+XLEN pipelined (sync, "
                                "1,000/batch) vs one at a time", fmt_ms(raw), fmt_ms(slow),
                                f"{slow / raw:.0f}× faster", "", ""))
        finally:
            sync.close()
    return rows


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


if __name__ == "__main__":
    sys.exit(main(NAME, run))
