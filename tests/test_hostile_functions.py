"""Hostile input to the Functions library, on a real redis-server (issue 14).

Every function checks its arguments and the types of its keys before it writes, and a
message is acknowledged only after its retry or dead-letter entry exists: a failed
call leaves the message pending (it will be delivered again), never lost."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aredis
from redis.exceptions import ResponseError

from agentqueue.models.queue import QueueType, Role
from agentqueue.planning.acl import acl_rules
from agentqueue.redisgw import connection, functions, users
from agentqueue.redisgw.connection import RedisClient, RedisTarget
from agentqueue.redisgw.errors import RedisSpecError
from agentqueue_client.keys import PartitionKeys, acl_username

P = PartitionKeys("tenant", "jobs", 0)
GROUP = "workers"
MAX_ID = "18446744073709551615-18446744073709551615"
EXHAUSTED = "can take no more entries"


@pytest.fixture
async def lib(redis_client: RedisClient) -> RedisClient:
    await functions.ensure_library(redis_client)
    return redis_client


@pytest.fixture
async def consumer(lib: RedisClient, redis_target: RedisTarget) -> AsyncIterator[aredis.Redis]:
    """A client logged in as the queue's consumer role (the rules the operator sets)."""
    name, password = acl_username("tenant", "jobs", "agent"), users.new_password()
    await users.ensure_user(lib, name, acl_rules(Role.CONSUMER, "tenant", "jobs",
                                                 QueueType.STREAM, 1),
                            [users.sha256_hex(password)])
    client = await connection.connect(RedisTarget(redis_target.url, name, password))
    assert isinstance(client, aredis.Redis)
    yield client
    await connection.close_client(client)


async def _pending_one(client: RedisClient, fields: dict[str, str] | None = None) -> str:
    """Enqueue one message, deliver it to c1: its entry id (pending)."""
    await functions.enqueue(client, P, fields or {"d": "work"})
    try:
        await client.xgroup_create(P.queue_key, GROUP, id="0", mkstream=True)
    except ResponseError as exc:
        assert "BUSYGROUP" in str(exc)
    [[_, [(entry, _)]]] = await client.xreadgroup(GROUP, "c1", {P.queue_key: ">"}, count=1)
    return str(entry)


async def _pending_ids(client: RedisClient) -> list[str]:
    return [str(p["message_id"]) for p in
            await client.xpending_range(P.queue_key, GROUP, "-", "+", 10)]


async def test_nack_with_a_wrong_typed_retry_key_keeps_the_message(
        lib: RedisClient, consumer: aredis.Redis) -> None:
    entry = await _pending_one(lib)
    await lib.set(P.retry, "not a sorted set")
    for client in (lib, consumer):  # as admin and as the consumer role (TYPE allowed)
        with pytest.raises(RedisSpecError,
                           match=r"WRONGTYPE aq_nack: retry key .* holds a string, not a zset"):
            await functions.nack(client, P, GROUP, entry, due_ms=1, error="e")
    assert await _pending_ids(lib) == [entry]  # not acked: it will be delivered again
    assert await lib.get(P.retry) == "not a sorted set"
    assert await lib.exists(P.stats) == 0


async def test_nack_with_a_wrong_typed_stats_key_writes_nothing(
        lib: RedisClient, consumer: aredis.Redis) -> None:
    entry = await _pending_one(lib)
    await lib.rpush(P.stats, "x")
    with pytest.raises(RedisSpecError, match="WRONGTYPE aq_nack: stats key"):
        await functions.nack(consumer, P, GROUP, entry, due_ms=1, error="e")
    assert await lib.exists(P.retry) == 0  # no retry written before the failure
    assert await _pending_ids(lib) == [entry]


async def test_deadletter_into_a_jammed_stream_keeps_the_message(
        lib: RedisClient, consumer: aredis.Redis) -> None:
    entry = await _pending_one(lib)
    await lib.xadd(P.dead_letter, {"d": "jam"}, id=MAX_ID)
    with pytest.raises(RedisSpecError, match=f"aq_deadletter: stream .*dlq {EXHAUSTED}"):
        await functions.deadletter(consumer, P, GROUP, entry, "c1", "poison", 5, 1)
    assert await _pending_ids(lib) == [entry]
    assert await lib.xlen(P.dead_letter) == 1
    # A wrong-typed dead-letter key: refused before anything happens.
    await lib.delete(P.dead_letter)
    await lib.hset(P.dead_letter, "x", "y")
    with pytest.raises(RedisSpecError, match="WRONGTYPE aq_deadletter: dead-letter key"):
        await functions.deadletter(consumer, P, GROUP, entry, "c1", "poison", 5, 1)
    assert await _pending_ids(lib) == [entry]


async def test_enqueue_into_a_jammed_stream_is_a_clear_error(lib: RedisClient) -> None:
    await lib.xadd(P.queue_key, {"d": "jam"}, id=MAX_ID)
    with pytest.raises(RedisSpecError, match=f"aq_enqueue: stream .*:q {EXHAUSTED}"):
        await functions.enqueue(lib, P, {"d": "x"}, idem_key="k1")
    assert await lib.exists(P.idempotency("k1")) == 0  # not marked as sent
    await lib.set(P.idempotency("k2"), "x")
    await lib.delete(P.idempotency("k2"))
    await lib.hset(P.idempotency("k3"), "a", "b")
    with pytest.raises(RedisSpecError, match="WRONGTYPE aq_enqueue: idempotency key"):
        await functions.enqueue(lib, P, {"d": "x"}, idem_key="k3")


async def test_promote_into_a_jammed_stream_keeps_the_retry(lib: RedisClient) -> None:
    member = json.dumps({"d": "again", "a": "1"})
    await lib.zadd(P.retry, {member: 1})
    await lib.xadd(P.queue_key, {"d": "jam"}, id=MAX_ID)
    with pytest.raises(RedisSpecError, match=f"aq_promote: stream .*:q {EXHAUSTED}"):
        await functions.promote(lib, P, now_ms=5)
    assert await lib.zrange(P.retry, 0, -1) == [member]


@pytest.mark.parametrize("forged, expected", [
    ("-1000000", "1"), ("1e999", "1"), ("inf", "1"), ("abc", "1"), ("3", "4")])
async def test_forged_attempt_counters_count_from_zero(lib: RedisClient, forged: str,
                                                       expected: str) -> None:
    entry = await _pending_one(lib, {"d": "x", "a": forged})
    assert await functions.nack(lib, P, GROUP, entry, due_ms=1, error="e")
    [member] = await lib.zrange(P.retry, 0, -1)
    assert json.loads(member)["a"] == expected


@pytest.mark.parametrize("fn, nkeys, args, message", [
    ("aq_nack", 3, [GROUP, "0-1", "inf", "e"], "due_ms must be a non-negative integer"),
    ("aq_nack", 3, [GROUP, "0-1", "-5", "e"], "due_ms must be a non-negative integer"),
    ("aq_nack", 3, [GROUP, "*", "1", "e"], "expected a group and an entry id"),
    ("aq_nack", 3, ["", "0-1", "1", "e"], "expected a group and an entry id"),
    ("aq_promote", 2, ["1", "1001"], "expected now_ms and a limit from 1 to 1000"),
    ("aq_promote", 2, ["1", "0"], "expected now_ms and a limit from 1 to 1000"),
    ("aq_promote", 2, ["nan", "10"], "expected now_ms and a limit from 1 to 1000"),
    ("aq_deadletter", 2, [GROUP, "0-1", "c", "e", "-1", "1"], "deliveries and now_ms must be non-negative integers"),
    ("aq_deadletter", 2, [GROUP, "0-1", "c", "e", "1", "1e3"], "deliveries and now_ms must be non-negative integers"),
    ("aq_deadletter", 2, [GROUP, "1-1-1", "c", "e", "1", "1"], "expected a group"),
    ("aq_enqueue", 2, ["1e3", "d", "x"], "ttl_ms must be a positive integer"),
    ("aq_enqueue", 2, ["0", "d", "x"], "ttl_ms must be a positive integer"),
])
async def test_arguments_are_checked_before_anything_is_written(
        lib: RedisClient, fn: str, nkeys: int, args: list[str], message: str) -> None:
    entry = await _pending_one(lib)
    keys = {"aq_nack": [P.queue_key, P.retry, P.stats], "aq_promote": [P.queue_key, P.retry],
            "aq_deadletter": [P.queue_key, P.dead_letter],
            "aq_enqueue": [P.queue_key, P.idempotency("k")]}[fn]
    args = [entry if a == "0-1" else a for a in args]
    with pytest.raises(ResponseError, match=f"^{fn}: {message}"):
        await lib.fcall(fn, nkeys, *keys, *args)
    assert await _pending_ids(lib) == [entry]
    assert await lib.xlen(P.queue_key) == 1
    for key in (P.retry, P.stats, P.dead_letter, P.idempotency("k")):
        assert await lib.exists(key) == 0


async def test_wrong_number_of_keys_is_refused(lib: RedisClient) -> None:
    with pytest.raises(ResponseError, match="^aq_promote: expected the queue stream"):
        await lib.fcall("aq_promote", 1, P.queue_key, "1", "1")
    with pytest.raises(ResponseError, match="^aq_deadletter: expected the queue"):
        await lib.fcall("aq_deadletter", 3, P.queue_key, P.dead_letter, P.retry, GROUP,
                        "1-1", "c", "e", "1", "1")


async def test_ack_only_after_the_retry_exists(lib: RedisClient) -> None:
    """The order inside aq_nack: a member in the retry set, then the XACK (a failing
    write in between leaves the message pending, tested above)."""
    entry = await _pending_one(lib)
    assert await functions.nack(lib, P, GROUP, entry, due_ms=7, error="e")
    assert await _pending_ids(lib) == []
    [(member, score)] = await lib.zrange(P.retry, 0, -1, withscores=True)
    assert score == 7 and json.loads(member)["aq.src"] == entry
    # Not pending any more (acked): a second nack neither acks nor writes.
    assert await functions.nack(lib, P, GROUP, entry, due_ms=7, error="e") is False
    assert await lib.zcard(P.retry) == 1


async def test_upgrade_keeps_working_with_users_of_the_previous_operator(
        lib: RedisClient, redis_target: RedisTarget) -> None:
    """Library 5 is loaded at the first reconcile of any queue on a server; users of
    other queues get TYPE at their own reconcile. Meanwhile their calls still work
    (the type check is skipped, the write itself refuses a wrong type)."""
    assert functions.LIBRARY_VERSION == "5"
    name, password = acl_username("tenant", "jobs", "old"), users.new_password()
    old_rules = [r.replace(" +type", "") for r in acl_rules(
        Role.CONSUMER, "tenant", "jobs", QueueType.STREAM, 1) if r != "+type"]
    assert not any("+type" in r for r in old_rules)
    await users.ensure_user(lib, name, old_rules, [users.sha256_hex(password)])
    old = await connection.connect(RedisTarget(redis_target.url, name, password))
    try:
        entry = await _pending_one(lib)
        assert await functions.nack(old, P, GROUP, entry, due_ms=1, error="e")
        assert await functions.promote(old, P, now_ms=2) == 1
        entry = await _pending_one(lib)
        assert await functions.deadletter(old, P, GROUP, entry, "c1", "e", 1, 1)
        # a wrong type is still refused by the write, before the XACK
        entry = await _pending_one(lib)
        await lib.delete(P.retry)
        await lib.set(P.retry, "x")
        with pytest.raises(RedisSpecError, match="WRONGTYPE"):
            await functions.nack(old, P, GROUP, entry, due_ms=1, error="e")
        assert entry in await _pending_ids(lib)
    finally:
        await connection.close_client(old)
