"""redisgw.list_work on a real redis-server: the waiting work of ConsumerGroups on List
queues (priority levels, processing lists found by SCAN and by the heartbeat set, due
retries, live consumers, the oldest message's age), polled beside Stream groups."""

from __future__ import annotations

import time
from typing import Any

import pytest

from agentqueue.redisgw import list_work
from agentqueue.redisgw.connection import RedisClient
from agentqueue.redisgw.list_work import ListWorkPoller, poll_all
from agentqueue.redisgw.poller import GroupTarget
from agentqueue_client.codec import Envelope, encode_element
from agentqueue_client.keys import partition_keys

pytestmark = pytest.mark.asyncio

NS, Q = "ns", "esc"
P0, P1 = partition_keys(NS, Q, 2)
TARGET = GroupTarget(NS, Q, "desk", 2, "List", 3, 5_000)


def element(enqueued_ms: int, n: int = 0, priority: int = 0) -> bytes:
    return encode_element(Envelope(body=b'{"n": %d}' % n), f"{enqueued_ms}-{n}", priority)


async def test_levels_in_flight_retries_consumers_and_age(redis_client: RedisClient) -> None:
    r: Any = redis_client
    now = int(time.time() * 1000)
    # Waiting: 2 at level 0, 1 at level 2 on partition 0; 1 at level 1 on partition 1.
    await r.lpush(P0.priority_key(0), element(now - 1000, 1), element(now - 500, 2))
    await r.lpush(P0.priority_key(2), element(now - 8000, 3, 2))  # the oldest
    await r.lpush(P1.priority_key(1), element(now - 100, 4, 1))
    # In flight: a consumer with a heartbeat, and a list nobody heartbeats for (found by
    # SCAN only: another client, or a consumer already forgotten).
    await r.lpush(P0.processing("alive"), element(now - 200, 5), element(now - 150, 6))
    await r.zadd(P0.processing("#consumers"), {"alive": now, "dead": now - 60_000})
    await r.lpush(P1.processing("stray"), b"not an SDK element")
    # Retries: one due now, one later.
    await r.zadd(P1.retry, {element(now - 300, 7): now - 10, element(now, 8): now + 60_000})
    # Keys that are not this queue's work.
    await r.lpush("aq:{ns/esc2/0}:proc:x", b"other queue")
    await r.lpush(P0.dead_letter.replace(":dlq", ":q:9"), b"beyond priorityLevels")

    (fig,) = await ListWorkPoller().poll(r, [TARGET])
    assert (fig.lag, fig.pending, fig.due_retries, fig.waiting) == (4, 3, 1, 8)
    assert fig.consumers == 1  # "dead" is older than the visibility timeout
    assert 7.5 <= fig.oldest_pending_age_s <= 15
    assert fig.missing_partitions == [] and fig.exact


async def test_new_consumer_found_by_heartbeat_on_the_next_poll(
        redis_client: RedisClient, monkeypatch: pytest.MonkeyPatch) -> None:
    r: Any = redis_client
    poller = ListWorkPoller()
    (fig,) = await poller.poll(r, [TARGET])
    assert fig.waiting == 0
    # After the first SCAN, a new consumer's list is seen through the heartbeat set,
    # without waiting RESCAN_S for the next SCAN.
    now = int(time.time() * 1000)
    await r.zadd(P1.processing("#consumers"), {"late": now})
    await r.lpush(P1.processing("late"), element(now, 1))
    (fig,) = await poller.poll(r, [TARGET])
    assert fig.consumers == 1  # the reply that names it
    (fig,) = await poller.poll(r, [TARGET])
    assert (fig.pending, fig.waiting) == (1, 1)
    # A list only a SCAN can find is found by the next SCAN.
    await r.lpush(P0.processing("ghost"), element(now, 2), element(now, 3))
    (fig,) = await poller.poll(r, [TARGET])
    assert fig.pending == 1
    monkeypatch.setattr(list_work, "RESCAN_S", 0.0)
    (fig,) = await poller.poll(r, [TARGET])
    assert fig.pending == 3


async def test_scan_is_bounded_per_poll_and_continues(
        redis_client: RedisClient, monkeypatch: pytest.MonkeyPatch) -> None:
    r: Any = redis_client
    pipe = r.pipeline(transaction=False)
    for i in range(300):
        pipe.set(f"filler:{i}", "x")
    await pipe.execute()
    await r.lpush(P0.processing("c"), element(int(time.time() * 1000)))
    monkeypatch.setattr(list_work, "SCAN_COUNT", 10)
    monkeypatch.setattr(list_work, "SCAN_CALLS_PER_POLL", 2)
    calls: list[tuple[int, int]] = []  # (cursor passed, cursor returned)
    real_scan = r.scan

    async def scan(cursor: int = 0, **kwargs: Any) -> Any:
        nxt, found = await real_scan(cursor, **kwargs)
        calls.append((int(cursor), int(nxt)))
        return nxt, found

    monkeypatch.setattr(r, "scan", scan)
    poller = ListWorkPoller()
    per_poll, seen = [], []
    for _ in range(60):
        before = len(calls)
        (fig,) = await poller.poll(r, [TARGET])
        per_poll.append(len(calls) - before)
        seen.append(fig.pending)
        if calls and calls[-1][1] == 0:
            break  # the scan went round the whole keyspace
    # 301 keys at about 10 per SCAN call: many polls, never more than 2 calls each, each
    # call continuing where the one before stopped, until the cursor comes back to 0.
    assert max(per_poll) == 2 and len(per_poll) > 1, per_poll
    assert calls[0][0] == 0 and calls[-1][1] == 0
    assert all(calls[i][0] == calls[i - 1][1] for i in range(1, len(calls))), calls
    assert seen[-1] == 1  # the processing list was found by the time the scan ended


async def test_poll_all_keeps_the_callers_order(redis_client: RedisClient) -> None:
    r: Any = redis_client
    stream = partition_keys(NS, "jobs", 1)[0]
    await r.xgroup_create(stream.queue_key, "workers", id="0", mkstream=True)
    await r.xadd(stream.queue_key, {"d": "1"})
    await r.xadd(stream.queue_key, {"d": "2"})
    await r.lpush(P0.priority_key(0), element(int(time.time() * 1000)))
    targets = [GroupTarget(NS, "jobs", "workers", 1), TARGET,
               GroupTarget(NS, "jobs", "missing", 1), TARGET]
    figs = await poll_all(r, targets)
    assert [f.lag for f in figs] == [2, 1, 0, 1]
    assert figs[2].missing_partitions == [0]
    assert [f.lag for f in await poll_all(r, [TARGET])] == [1]
    assert [f.lag for f in await poll_all(r, targets[:1])] == [2]


async def test_cluster_partitions_on_several_primaries(redis_cluster_client: RedisClient
                                                       ) -> None:
    """In a Cluster each partition's keys share a slot: one script call per partition
    (routed to its primary), and the SCAN visits every primary."""
    r: Any = redis_cluster_client
    parts = partition_keys(NS, Q, 4)
    assert len({r.get_node_from_key(p.queue_key).name for p in parts}) > 1
    now = int(time.time() * 1000)
    for i, p in enumerate(parts):
        await r.lpush(p.priority_key(i % 3), element(now - 1000 * (i + 1), i, i % 3))
        await r.lpush(p.processing(f"stray{i}"), element(now, 10 + i))  # SCAN only
    target = GroupTarget(NS, Q, "desk", 4, "List", 3, 5_000)
    (fig,) = await ListWorkPoller().poll(r, [target])
    assert (fig.lag, fig.pending, fig.waiting) == (4, 4, 8)
    assert 3.5 <= fig.oldest_pending_age_s <= 10
