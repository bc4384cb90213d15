"""Stream queues end to end on a real redis-server: produce, consume, ack, idempotency,
retries with backoff, dead-lettering, replay, reclaim, heartbeat, pause, malformed
entries, once(), handler style and shutdown."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest

from agentqueue.tools import dlq_list, dlq_replay
from agentqueue_client import (
    Consumer,
    LibraryMissingError,
    Message,
    Outgoing,
    Producer,
    QueueTypeError,
    SchemaValidationError,
    partition_for,
)

from .agents.aio import eventually, nothing_for, take
from .agents.harness import part, provision, sdk_config

pytest_plugins = ["tests.redis_fixtures"]

GROUP = "workers"


@pytest.fixture
def admin(redis_client: Any) -> Any:
    return redis_client


def consumer(cfg: Any, name: str = "c1", **kwargs: Any) -> Consumer:
    kwargs.setdefault("block_ms", 200)
    kwargs.setdefault("promote_interval", 0.02)
    return Consumer(cfg, group=GROUP, consumer_name=name, **kwargs)


async def test_produce_consume_ack(redis_server: Any, admin: Any) -> None:
    cfg = sdk_config(redis_server, "jobs")
    await provision(admin, cfg)
    async with Producer(cfg) as producer:
        ids = [await producer.send({"n": i}, headers={"who": "test"}) for i in range(3)]
        ids.append(await producer.send(b"\x00raw"))
    async with consumer(cfg, expect_json=False) as c:
        msgs = await take(c, 4)
        assert [m.id for m in msgs] == ids
        assert [m.body for m in msgs[:3]] == [b'{"n":0}', b'{"n":1}', b'{"n":2}']
        assert msgs[3].payload == b"\x00raw"
        assert msgs[0].headers == {"who": "test"} and msgs[0].deliveries == 1
        for m in msgs:
            await m.ack()
        await c.flush_acks()
    pending = await admin.xpending(part(cfg).queue_key, GROUP)
    assert pending["pending"] == 0


async def test_idempotent_send_and_partitioning(redis_server: Any, admin: Any) -> None:
    cfg = sdk_config(redis_server, "orders", partitions=4)
    await provision(admin, cfg)
    async with Producer(cfg) as producer:
        first = await producer.send({"order": 1}, idempotency_key="order-1")
        again = await producer.send({"order": 1, "retry": True}, idempotency_key="order-1")
        assert again == first
        ids = await producer.send_many([
            Outgoing({"order": 2}, idempotency_key="order-2"),
            Outgoing({"order": 2}, idempotency_key="order-2"),
            Outgoing({"x": 1}, key="customer-7"),
            {"plain": True},
        ])
        assert ids[0] == ids[1]
        # The idempotency key routes when there is no key; the key routes otherwise.
        where = partition_for("order-1", 4)
        assert await admin.xlen(part(cfg, where).queue_key) >= 1
        assert await admin.get(part(cfg, where).idempotency("order-1")) == first
        entries = await admin.xrange(part(cfg, partition_for("customer-7", 4)).queue_key)
        assert any(f.get("d") == '{"x":1}' for _, f in entries)
        for i in range(8):
            await producer.send({"rr": i})
    lengths = [await admin.xlen(part(cfg, p).queue_key) for p in range(4)]
    assert sum(lengths) == 1 + 1 + 1 + 1 + 8  # duplicates were not enqueued
    assert min(lengths) >= 2  # round robin spread the keyless messages


async def test_schema_violation_sends_nothing(redis_server: Any, admin: Any) -> None:
    cfg = sdk_config(redis_server, "typed")
    await provision(admin, cfg, schema={"type": "object", "required": ["task"],
                                        "properties": {"task": {"type": "string"}}})
    async with Producer(cfg) as producer:
        with pytest.raises(SchemaValidationError) as info:
            await producer.send_many([{"task": "ok"}, {"task": 5}])
        assert info.value.path == "$.task"
        with pytest.raises(SchemaValidationError):
            await producer.send(b"not json")
        with pytest.raises(QueueTypeError):
            await producer.send({"task": "x"}, priority=1)
        assert await admin.xlen(part(cfg).queue_key) == 0
        await producer.send({"task": "fine"})
    assert await admin.xlen(part(cfg).queue_key) == 1


@pytest.mark.parametrize("queue_type", ["Stream", "List"])
async def test_traceparent_propagates_from_the_active_span(redis_server: Any, admin: Any,
                                                           queue_type: str) -> None:
    """The real OpenTelemetry propagator, no monkeypatch: the producer's active span
    reaches the consumer as W3C ``traceparent``; no span, no header; a caller's own
    header wins. A producer that never injects fails the first assertion."""
    from opentelemetry.sdk.trace import TracerProvider

    cfg = sdk_config(redis_server, f"traced-{queue_type.lower()}", queue_type=queue_type)
    await provision(admin, cfg)
    tracer = TracerProvider().get_tracer("test")  # not global: other tests keep theirs
    async with Producer(cfg) as producer:
        with tracer.start_as_current_span("send") as span:
            await producer.send({"n": 1})
            ctx = span.get_span_context()
            mine = "00-" + "1" * 32 + "-" + "2" * 16 + "-01"
            await producer.send({"n": 2}, headers={"traceparent": mine})
        await producer.send({"n": 3})
    async with consumer(cfg) as c:
        got = {m.payload["n"]: m for m in await take(c, 3)}
    assert got[1].traceparent == f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{ctx.trace_flags:02x}"
    assert got[2].traceparent == mine
    assert got[3].traceparent is None and "traceparent" not in got[3].headers


async def test_library_missing_is_a_clear_error(redis_server: Any, admin: Any) -> None:
    cfg = sdk_config(redis_server, "nolib")
    await provision(admin, cfg)
    await admin.function_flush()
    async with Producer(cfg) as producer:
        with pytest.raises(LibraryMissingError):
            await producer.send({"n": 1})


async def test_nack_backoff_dead_letter_and_replay(redis_server: Any, admin: Any) -> None:
    cfg = sdk_config(redis_server, "flaky")
    await provision(admin, cfg, max_deliveries=3, retry_initial_ms=200, retry_multiplier=2.0)
    async with Producer(cfg) as producer:
        await producer.send({"job": 1}, idempotency_key="job-1", headers={"t": "1"})
    seen: list[tuple[float, Message]] = []
    async with consumer(cfg) as c:
        for _ in range(3):
            (msg,) = await take(c, 1, timeout=3)
            seen.append((time.monotonic(), msg))
            await msg.nack(RuntimeError(f"boom {msg.attempt}"))
        # after the third failure (maxDeliveries = 3) it is dead-lettered, not retried
        await nothing_for(c, 0.6)
    gaps = [seen[i + 1][0] - seen[i][0] for i in range(2)]
    assert 0.19 <= gaps[0] <= 0.40, gaps  # retryInitialMs
    assert 0.39 <= gaps[1] <= 0.65, gaps  # x multiplier
    assert [m.attempt for _, m in seen] == [0, 1, 2]
    assert seen[2][1].last_error == "RuntimeError: boom 1"
    assert seen[2][1].idempotency_key == "job-1"
    assert await admin.zcard(part(cfg).retry) == 0
    # two retries counted (aq_nack with the stats key); the third nack dead-lettered
    assert await admin.hgetall(part(cfg).stats) == {"retries": "2"}

    (letter,) = await dlq_list(admin, cfg.namespace, cfg.queue)
    assert letter.deliveries == 3 and letter.group == GROUP and letter.consumer == "c1"
    assert letter.error is not None and "boom 2" in letter.error
    assert letter.original_id == seen[2][1].id and letter.idempotency_key == "job-1"
    assert json.loads(letter.payload) == {"job": 1}

    result = await dlq_replay(admin, cfg.namespace, cfg.queue, "all")
    assert result.count == 1
    assert await dlq_list(admin, cfg.namespace, cfg.queue) == []
    async with consumer(cfg) as c:
        (msg,) = await take(c, 1)
        assert msg.payload == {"job": 1} and msg.idempotency_key == "job-1"
        assert msg.attempt == 0 and msg.deliveries == 1 and msg.headers == {"t": "1"}
        await msg.ack()


async def test_nack_with_explicit_delay(redis_server: Any, admin: Any) -> None:
    cfg = sdk_config(redis_server, "later")
    await provision(admin, cfg, retry_initial_ms=5000)
    async with Producer(cfg) as producer:
        await producer.send({"n": 1})
    async with consumer(cfg) as c:
        (msg,) = await take(c, 1)
        t0 = time.monotonic()
        await msg.nack("not yet", delay=0.15)
        (again,) = await take(c, 1)
        assert 0.14 <= time.monotonic() - t0 <= 0.5
        assert again.last_error == "not yet"
        await again.ack()


async def test_heartbeat_keeps_a_long_task(redis_server: Any, admin: Any) -> None:
    cfg = sdk_config(redis_server, "long")
    await provision(admin, cfg, visibility_ms=250)
    async with Producer(cfg) as producer:
        await producer.send({"n": 1})
    async with consumer(cfg, "slow") as slow, consumer(cfg, "other") as other:
        (msg,) = await take(slow, 1)
        # 3x the visibility timeout of "work" while another consumer keeps reclaiming
        await nothing_for(other, 0.75)
        await msg.ack()
        await slow.flush_acks()
    assert (await admin.xpending(part(cfg).queue_key, GROUP))["pending"] == 0


async def test_without_heartbeat_a_stuck_message_is_reclaimed(redis_server: Any,
                                                               admin: Any) -> None:
    cfg = sdk_config(redis_server, "stuck")
    await provision(admin, cfg, visibility_ms=250)
    async with Producer(cfg) as producer:
        await producer.send({"n": 1})
    async with consumer(cfg, "slow", heartbeat=False) as slow, consumer(cfg, "other") as other:
        (msg,) = await take(slow, 1)
        t0 = time.monotonic()
        (again,) = await take(other, 1, timeout=3)
        assert again.id == msg.id and again.deliveries == 2
        assert 0.24 <= time.monotonic() - t0 <= 1.0
        await again.ack()
        await other.flush_acks()
        await msg.ack()  # late ack of a reclaimed message: harmless
    assert (await admin.xpending(part(cfg).queue_key, GROUP))["pending"] == 0


async def test_reclaim_past_max_deliveries_dead_letters(redis_server: Any, admin: Any) -> None:
    cfg = sdk_config(redis_server, "poison")
    await provision(admin, cfg, visibility_ms=100, max_deliveries=2)
    key = part(cfg).queue_key
    async with Producer(cfg) as producer:
        await producer.send({"poison": True})
    # Two consumers that "crashed" with it: delivery count 2.
    await admin.xreadgroup(GROUP, "dead-1", {key: ">"}, count=1)
    await asyncio.sleep(0.11)
    await admin.xautoclaim(key, GROUP, "dead-2", 100, "0-0", count=10)
    await asyncio.sleep(0.11)
    async with consumer(cfg) as c:
        await nothing_for(c, 0.4)
    (letter,) = await dlq_list(admin, cfg.namespace, cfg.queue)
    assert letter.deliveries == 3 and "exceeded maxDeliveries (3 > 2)" in (letter.error or "")
    assert (await admin.xpending(key, GROUP))["pending"] == 0


async def test_malformed_entries_are_dead_lettered(redis_server: Any, admin: Any) -> None:
    cfg = sdk_config(redis_server, "dirty")
    await provision(admin, cfg, schema={"type": "object", "required": ["n"]})
    key = part(cfg).queue_key
    await admin.xadd(key, {"k": "no-payload"})
    await admin.xadd(key, {"d": "{not json"})
    await admin.xadd(key, {"d": '{"n": 1}', "x.id": "0-1", "x.error": "forged"})
    await admin.xadd(key, {"d": '{"n": 1}', "bogus": "1"})
    await admin.xadd(key, {"d": '{"m": 1}'})
    await admin.xadd(key, {"d": '{"n": 1}', "a": "lots"})
    good = await admin.xadd(key, {"d": '{"n": 2}'})
    async with consumer(cfg) as c:
        (msg,) = await take(c, 1)
        assert msg.id == good and msg.payload == {"n": 2}
        await msg.ack()
    letters = await dlq_list(admin, cfg.namespace, cfg.queue)
    reasons = [lt.error or "" for lt in sorted(letters, key=lambda lt: lt.original_id or "")]
    assert len(reasons) == 6
    for reason, expected in zip(reasons, ["missing payload field 'd'", "not valid JSON",
                                          "reserved dead-letter field", "unknown field",
                                          "schema violation", "field 'a'"], strict=True):
        assert expected in reason
    assert (await admin.xpending(key, GROUP))["pending"] == 0  # close() flushed the ack


async def test_pause_flag_is_honoured(redis_server: Any, admin: Any) -> None:
    cfg = sdk_config(redis_server, "paused")
    await provision(admin, cfg)
    meta = part(cfg).meta
    async with Producer(cfg) as producer, consumer(cfg, meta_refresh=0.05) as c:
        await producer.send({"n": 1})
        (first,) = await take(c, 1)
        await admin.hset(meta, f"paused:{GROUP}", json.dumps({"reason": "downstream", "at": 1}))
        await asyncio.sleep(0.15)
        assert c.paused
        await producer.send({"n": 2})
        await nothing_for(c, 0.4)
        await first.ack()  # in-flight work is still acked while paused
        await c.flush_acks()
        assert (await admin.xpending(part(cfg).queue_key, GROUP))["pending"] == 0
        await admin.hdel(meta, f"paused:{GROUP}")
        (second,) = await take(c, 1)
        assert second.payload == {"n": 2}
        await second.ack()


async def test_once_applies_an_effect_exactly_once(redis_server: Any, admin: Any) -> None:
    cfg = sdk_config(redis_server, "effects")
    await provision(admin, cfg, visibility_ms=100)
    async with Producer(cfg) as producer:
        await producer.send({"n": 1}, idempotency_key="pay-1")
    async with consumer(cfg, "a", heartbeat=False) as a, consumer(cfg, "b") as b:
        (m1,) = await take(a, 1)
        assert await m1.once("charge", lambda pipe: pipe.hincrby("totals", "pay-1", 1))
        # "a" stalls without acking: "b" gets the redelivery and must not charge again
        (m2,) = await take(b, 1, timeout=3)
        assert m2.deliveries == 2
        assert not await m2.once("charge", lambda pipe: pipe.hincrby("totals", "pay-1", 1))
        assert await m2.once("email")
        assert not await m2.once("email")
        await m2.ack()
    assert await admin.hget("totals", "pay-1") == "1"


async def test_handler_style_and_graceful_stop(redis_server: Any, admin: Any) -> None:
    cfg = sdk_config(redis_server, "handled")
    await provision(admin, cfg, retry_initial_ms=10, max_deliveries=2)
    async with Producer(cfg) as producer:
        await producer.send_many([{"n": i} for i in range(6)])
    c = consumer(cfg, shutdown_grace=2.0)
    done: list[int] = []
    failures: list[int] = []

    @c.handler
    async def handle(msg: Message) -> None:
        if msg.payload["n"] == 5:
            failures.append(msg.deliveries)
            raise ValueError("always fails")
        if msg.payload["n"] == 4:
            await asyncio.sleep(0.3)  # still running when stop() is called
        done.append(msg.payload["n"])

    async def stop_when_ready() -> None:
        await eventually(lambda: _ready(done, failures))
        c.stop()

    stopper = asyncio.create_task(stop_when_ready())
    await asyncio.wait_for(c.run(concurrency=3), 10)
    await stopper
    assert sorted(done) == [0, 1, 2, 3, 4]
    assert failures == [1, 2]
    assert (await admin.xpending(part(cfg).queue_key, GROUP))["pending"] == 0
    (letter,) = await dlq_list(admin, cfg.namespace, cfg.queue)
    assert "ValueError: always fails" in (letter.error or "")


async def _ready(done: list[int], failures: list[int]) -> bool:
    return len(done) >= 3 and len(failures) >= 2


async def test_shutdown_leaves_unfinished_work_pending(redis_server: Any, admin: Any) -> None:
    cfg = sdk_config(redis_server, "unfinished")
    await provision(admin, cfg, visibility_ms=200)
    async with Producer(cfg) as producer:
        await producer.send({"n": 1})
    c = consumer(cfg, "quitter", shutdown_grace=0.1)
    started = asyncio.Event()

    async def forever(msg: Message) -> None:
        started.set()
        await asyncio.sleep(30)

    runner = asyncio.create_task(c.run(forever))
    await asyncio.wait_for(started.wait(), 3)
    c.stop()
    await asyncio.wait_for(runner, 3)
    # still pending: another consumer gets it after the visibility timeout
    async with consumer(cfg, "heir") as heir:
        (msg,) = await take(heir, 1, timeout=3)
        assert msg.payload == {"n": 1} and msg.deliveries == 2
        await msg.ack()


async def test_waits_for_a_missing_group(redis_server: Any, admin: Any) -> None:
    cfg = sdk_config(redis_server, "nogroup")
    await provision(admin, cfg, group=None)
    await admin.xadd(part(cfg).queue_key, {"d": "1"})
    async with consumer(cfg) as c:
        reader = asyncio.create_task(take(c, 1, timeout=5))
        await asyncio.sleep(0.3)
        await admin.xgroup_create(part(cfg).queue_key, GROUP, id="0")
        (msg,) = await reader
        assert msg.payload == 1


async def test_tls_with_the_secrets_ca(redis_tls_server: Any) -> None:
    assert redis_tls_server.ca_file is not None
    cfg = sdk_config(redis_tls_server, "secure").with_(
        ca_cert=redis_tls_server.ca_file.read_text())
    assert cfg.url.startswith("rediss://")
    admin = cfg.connect()
    try:
        await admin.flushall()
        await provision(admin, cfg)
        async with Producer(cfg) as producer, consumer(cfg) as c:
            await producer.send({"tls": True}, idempotency_key="t-1")
            (msg,) = await take(c, 1)
            assert msg.payload == {"tls": True}
            await msg.ack()
    finally:
        await admin.aclose()
    with pytest.raises(Exception, match="(?i)certificate|ssl"):
        async with Producer(cfg.with_(ca_cert=None)) as producer:
            await producer.send({"tls": False})
