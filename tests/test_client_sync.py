"""The synchronous wrapper: same behaviour, blocking calls, background heartbeats."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest
import redis

from agentqueue_client.sync import SyncConsumer, SyncMessage, SyncProducer

from .agents.harness import agent_env, part, provision, sdk_config

pytest_plugins = ["tests.redis_fixtures"]


async def test_sync_iteration_and_handler(redis_server: Any, redis_client: Any) -> None:
    cfg = sdk_config(redis_server, "blocking")
    await provision(redis_client, cfg, visibility_ms=300, retry_initial_ms=10)
    env = agent_env(cfg)

    def produce_and_consume() -> tuple[list[Any], list[Any]]:
        with SyncProducer.from_env(env) as producer:
            producer.send({"n": 0}, idempotency_key="n-0")
            producer.send_many([{"n": 1}, {"n": 2}, {"n": 3}])
        got: list[Any] = []
        with SyncConsumer.from_env(env, group="workers", consumer_name="s1",
                                   block_ms=100) as consumer:
            for msg in consumer:
                time.sleep(0.5)  # longer than the visibility timeout: heartbeats run
                got.append(msg.payload)
                msg.ack()
                if len(got) == 2:
                    break
            consumer.flush_acks()
        handled: list[Any] = []
        worker = SyncConsumer.from_env(env, group="workers", consumer_name="s2",
                                       block_ms=100)

        def handle(msg: SyncMessage) -> None:
            if msg.payload["n"] == 3 and msg.attempt == 0:
                raise RuntimeError("retry me")
            assert msg.once("side-effect")
            handled.append((msg.payload["n"], msg.attempt))
            if len(handled) == 2:
                worker.stop()

        runner = threading.Thread(target=worker.run, args=(handle,),
                                  kwargs={"install_signal_handlers": False})
        runner.start()
        runner.join(10)
        assert not runner.is_alive()
        return got, handled

    got, handled = await asyncio.to_thread(produce_and_consume)
    assert got == [{"n": 0}, {"n": 1}]
    assert sorted(handled) == [(2, 0), (3, 1)]
    assert (await redis_client.xpending(part(cfg).queue_key, "workers"))["pending"] == 0


async def test_closing_after_run_does_not_hang(redis_server: Any, redis_client: Any) -> None:
    cfg = sdk_config(redis_server, "closing")
    await provision(redis_client, cfg)

    def run_then_close() -> None:
        with SyncConsumer(cfg, group="workers", consumer_name="x", block_ms=50) as consumer:
            threading.Timer(0.2, consumer.stop).start()
            consumer.run(lambda msg: None, install_signal_handlers=False)

    await asyncio.wait_for(asyncio.to_thread(run_then_close), 10)



@pytest.mark.parametrize("heartbeat", [True, False])
async def test_sync_heartbeats_keep_a_held_message(redis_server: Any, redis_client: Any,
                                                   heartbeat: bool) -> None:
    """A blocking handler holds a message for 4x the visibility timeout. With heartbeats
    its idle time keeps being reset (visibility/3), so a rival's XAUTOCLAIM finds nothing;
    without them (the False case: proof the test can fail) the rival takes it."""
    visibility_ms = 300
    cfg = sdk_config(redis_server, f"held-{str(heartbeat).lower()}")
    await provision(redis_client, cfg, visibility_ms=visibility_ms)
    key = part(cfg).queue_key

    def hold() -> tuple[list[int], list[Any]]:
        with SyncProducer(cfg) as producer:
            producer.send({"n": 1})
        idles: list[int] = []
        admin = redis.Redis.from_url(redis_server.admin_url)
        try:
            with SyncConsumer(cfg, group="workers", consumer_name="holder", block_ms=50,
                              heartbeat=heartbeat) as consumer:
                msg = next(iter(consumer))
                deadline = time.monotonic() + 4 * visibility_ms / 1000
                while time.monotonic() < deadline:  # a slow handler blocking its thread
                    time.sleep(0.05)
                    idles += [r["time_since_delivered"] for r in admin.xpending_range(
                        key, "workers", min="-", max="+", count=10)]
                claimed = admin.xautoclaim(key, "workers", "rival", visibility_ms, "0-0",
                                           justid=True)  # redis-py: just the ids
                msg.ack()
                consumer.flush_acks()
            return idles, claimed
        finally:
            admin.close()

    idles, claimed = await asyncio.wait_for(asyncio.to_thread(hold), 20)
    assert len(idles) >= 10
    if heartbeat:
        assert max(idles) < visibility_ms, idles
        assert claimed == []
    else:
        assert max(idles) > visibility_ms
        assert len(claimed) == 1
