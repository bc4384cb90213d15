"""List queues: the reliable pattern (LMOVE into a processing list), priorities,
idempotent sends, retries, dead-lettering, and recovery of a dead consumer's list."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from agentqueue.tools import dlq_list, dlq_replay, peek
from agentqueue_client import Consumer, Outgoing, Producer

from .agents.aio import nothing_for, take
from .agents.harness import part, provision, sdk_config

pytest_plugins = ["tests.redis_fixtures"]

GROUP = "listeners"


@pytest.fixture
def admin(redis_client: Any) -> Any:
    return redis_client


def consumer(cfg: Any, name: str = "c1", **kwargs: Any) -> Consumer:
    kwargs.setdefault("block_ms", 100)
    kwargs.setdefault("promote_interval", 0.02)
    return Consumer(cfg, group=GROUP, consumer_name=name, **kwargs)


async def test_fifo_ack_and_priorities(redis_server: Any, admin: Any) -> None:
    cfg = sdk_config(redis_server, "tasks", queue_type="List")
    await provision(admin, cfg, group=GROUP, priority_levels=3)
    async with Producer(cfg) as producer:
        await producer.send_many([Outgoing({"n": 1}, priority=2), Outgoing({"n": 2}),
                                  Outgoing({"n": 3}, priority=2), Outgoing({"n": 4}),
                                  Outgoing(b"\xffbinary", priority=1)])
        with pytest.raises(ValueError):
            await producer.send({"n": 0}, priority=3)
    head = await peek(admin, cfg.namespace, cfg.queue, count=10)
    assert [m.priority for m in head] == [0, 0, 1, 2, 2]
    async with consumer(cfg, expect_json=False, batch_size=10) as c:
        msgs = await take(c, 5)
        assert [m.body for m in msgs] == [b'{"n":2}', b'{"n":4}', b"\xffbinary",
                                          b'{"n":1}', b'{"n":3}']
        assert await admin.llen(part(cfg).processing("c1")) == 5
        for m in msgs:
            await m.ack()
        await c.flush_acks()
    assert await admin.llen(part(cfg).processing("c1")) == 0


async def test_idempotent_list_send(redis_server: Any, admin: Any) -> None:
    cfg = sdk_config(redis_server, "dedup", queue_type="List", partitions=2)
    await provision(admin, cfg, group=GROUP)
    async with Producer(cfg) as producer:
        ids = await asyncio.gather(*(producer.send({"n": 1}, idempotency_key="same")
                                     for _ in range(5)))
    assert len(set(ids)) == 1
    total = sum([await admin.llen(part(cfg, p).queue_key) for p in range(2)])
    assert total == 1


async def test_retry_dead_letter_and_replay(redis_server: Any, admin: Any) -> None:
    cfg = sdk_config(redis_server, "retries", queue_type="List")
    await provision(admin, cfg, group=GROUP, max_deliveries=2, retry_initial_ms=150)
    async with Producer(cfg) as producer:
        await producer.send({"n": 1}, idempotency_key="k-1")
    async with consumer(cfg) as c:
        (m1,) = await take(c, 1)
        t0 = time.monotonic()
        await m1.nack(RuntimeError("first"))
        assert await admin.zcard(part(cfg).retry) == 1
        (m2,) = await take(c, 1)
        assert 0.14 <= time.monotonic() - t0 <= 0.5
        assert (m2.id, m2.attempt, m2.deliveries) == (m1.id, 1, 2)
        assert m2.last_error == "RuntimeError: first"
        await m2.nack("second")  # last allowed delivery: dead-lettered
        await nothing_for(c, 0.3)
    assert await admin.llen(part(cfg).processing("c1")) == 0
    (letter,) = await dlq_list(admin, cfg.namespace, cfg.queue)
    assert letter.original_id == m1.id and letter.deliveries == 2
    assert "second" in (letter.error or "") and letter.idempotency_key == "k-1"
    assert (await dlq_replay(admin, cfg.namespace, cfg.queue, [letter.ref])).count == 1
    async with consumer(cfg) as c:
        (m3,) = await take(c, 1)
        assert (m3.id, m3.attempt, m3.idempotency_key) == (m1.id, 0, "k-1")
        await m3.ack()


async def test_list_counts_retries_and_deliveries(redis_server: Any, admin: Any) -> None:
    """The retry-rate SLO's counters: ``retries`` in the nack's MULTI, ``deliveries``
    with the next pipeline (or on close), over both partitions."""
    cfg = sdk_config(redis_server, "counted", queue_type="List", partitions=2)
    await provision(admin, cfg, group=GROUP, max_deliveries=2, retry_initial_ms=50)
    async with Producer(cfg) as producer:
        await producer.send_many([{"n": i} for i in range(6)])

    async def counts() -> tuple[int, int]:
        stats = [await admin.hgetall(part(cfg, p).stats) for p in range(2)]
        return (sum(int(s.get("retries", 0)) for s in stats),
                sum(int(s.get("deliveries", 0)) for s in stats))

    async with consumer(cfg, batch_size=6) as c:
        first = await take(c, 6)
        for m in first[:3]:
            await m.nack("again")  # retries 1..3
        assert (await counts())[0] == 3
        for m in first[3:]:
            await m.ack()
        again = await take(c, 3)
        assert sorted(m.id for m in again) == sorted(m.id for m in first[:3])
        await again[0].nack("last")  # the last allowed delivery: dead-lettered, no retry
        for m in again[1:]:
            await m.ack()
    assert await counts() == (3, 9)  # 6 first deliveries + 3 retried ones


async def test_dead_consumer_list_is_recovered(redis_server: Any, admin: Any) -> None:
    cfg = sdk_config(redis_server, "recover", queue_type="List")
    await provision(admin, cfg, group=GROUP, visibility_ms=200)
    async with Producer(cfg) as producer:
        await producer.send_many([{"n": 1}, {"n": 2}])
    dying = consumer(cfg, "dying", heartbeat=False, batch_size=2)
    first = await take(dying, 2)
    await dying.close()  # "crashes" holding both: nothing acked
    assert await admin.llen(part(cfg).processing("dying")) == 2
    async with consumer(cfg, "heir") as heir:
        again = await take(heir, 2, timeout=3)
        assert [m.id for m in again] == [m.id for m in first]  # order kept
        assert all(m.attempt == 1 and "dying timed out" in (m.last_error or "")
                   for m in again)
        for m in again:
            await m.ack()
    assert await admin.llen(part(cfg).processing("dying")) == 0


async def test_heartbeat_keeps_a_list_consumer_alive(redis_server: Any, admin: Any) -> None:
    cfg = sdk_config(redis_server, "alive", queue_type="List")
    await provision(admin, cfg, group=GROUP, visibility_ms=200)
    async with Producer(cfg) as producer:
        await producer.send({"n": 1})
    async with consumer(cfg, "slow") as slow, consumer(cfg, "other") as other:
        (msg,) = await take(slow, 1)
        await nothing_for(other, 0.6)
        await msg.ack()


async def test_own_processing_list_recovered_at_start(redis_server: Any, admin: Any) -> None:
    cfg = sdk_config(redis_server, "restart", queue_type="List")
    await provision(admin, cfg, group=GROUP)
    async with Producer(cfg) as producer:
        await producer.send({"n": 1})
    await admin.lmove(part(cfg).queue_key, part(cfg).processing("same"), "RIGHT", "LEFT")
    async with consumer(cfg, "same") as c:
        (msg,) = await take(c, 1)
        assert msg.payload == {"n": 1} and msg.attempt == 1


async def test_malformed_list_elements(redis_server: Any, admin: Any) -> None:
    cfg = sdk_config(redis_server, "junk", queue_type="List")
    await provision(admin, cfg, group=GROUP)
    await admin.lpush(part(cfg).queue_key, "garbage", '{"i": "1", "d": "{bad"}')
    async with Producer(cfg) as producer:
        await producer.send({"ok": True})
    async with consumer(cfg, batch_size=1) as c:
        (msg,) = await take(c, 1)
        assert msg.payload == {"ok": True}
        await msg.ack()
    letters = await dlq_list(admin, cfg.namespace, cfg.queue)
    assert sorted("not a valid JSON envelope" in (x.error or "") or
                  "not valid JSON" in (x.error or "") for x in letters) == [True, True]
    assert await admin.llen(part(cfg).processing("c1")) == 0
