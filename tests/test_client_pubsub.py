"""PubSub queues: broadcast to every subscribed consumer; no storage, no acks."""

from __future__ import annotations

from typing import Any

from agentqueue_client import Consumer, Producer

from .agents.aio import take
from .agents.harness import part, provision, sdk_config

pytest_plugins = ["tests.redis_fixtures"]


async def test_broadcast_to_every_subscriber(redis_server: Any, redis_client: Any) -> None:
    cfg = sdk_config(redis_server, "events", queue_type="PubSub")
    await provision(redis_client, cfg, group=None)
    async with Consumer(cfg, consumer_name="a", block_ms=100) as a, \
            Consumer(cfg, consumer_name="b", block_ms=100) as b, Producer(cfg) as producer:
        await producer.send({"event": 1}, headers={"traceparent": "00-x"})
        await producer.send({"event": 2}, idempotency_key="e-2")
        assert await producer.send({"event": 2}, idempotency_key="e-2")  # duplicate: dropped
        await redis_client.publish(part(cfg).channel, "not an envelope")  # dropped, logged
        await producer.send({"event": 3})
        for c in (a, b):
            msgs = await take(c, 3)
            assert [m.payload for m in msgs] == [{"event": 1}, {"event": 2}, {"event": 3}]
            assert msgs[0].traceparent == "00-x"
            await msgs[0].nack("ignored")  # no-op: nothing is stored
            for m in msgs[1:]:
                await m.ack()  # no-op too
