"""The Functions library on a real redis-server: every path of every function."""

from __future__ import annotations

import json

import pytest
from redis.exceptions import ResponseError

from agentqueue.redisgw import connection, functions
from agentqueue.redisgw.connection import RedisClient, RedisTarget
from agentqueue.redisgw.errors import RedisLibraryMissing, RedisSpecError
from agentqueue_client.keys import PartitionKeys, partition_keys

P = PartitionKeys("ns", "jobs", 0)
GROUP = "workers"


@pytest.fixture
async def lib(redis_client: RedisClient) -> RedisClient:
    await functions.ensure_library(redis_client)
    return redis_client


async def _deliver(client: RedisClient, keys: PartitionKeys = P, group: str = GROUP) -> str:
    """Create the group if needed and deliver one entry to consumer c1; its id."""
    try:
        await client.xgroup_create(keys.queue_key, group, id="0", mkstream=True)
    except Exception as exc:  # BUSYGROUP: already there
        assert "BUSYGROUP" in str(exc)
    res = await client.xreadgroup(group, "c1", {keys.queue_key: ">"}, count=1)
    assert res, "nothing delivered"
    entry_id = res[0][1][0][0]
    return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)


async def test_version_and_ensure_library(redis_client: RedisClient) -> None:
    await redis_client.function_flush()
    assert await functions.library_versions(redis_client) == {
        connection.node_name(redis_client): None}  # type: ignore[arg-type]
    assert await functions.ensure_library(redis_client) is True
    assert await functions.ensure_library(redis_client) is False
    assert await redis_client.fcall_ro("aq_version", 0) == functions.LIBRARY_VERSION
    # An older version is replaced.
    old = functions.LIBRARY_CODE.replace(f"local VERSION = '{functions.LIBRARY_VERSION}'",
                                         "local VERSION = 'old'")
    await redis_client.function_load(old, replace=True)
    assert await functions.ensure_library(redis_client) is True
    assert set((await functions.library_versions(redis_client)).values()) == {
        functions.LIBRARY_VERSION}


async def test_upgrade_from_a_library_that_did_not_count_retries(
        redis_client: RedisClient) -> None:
    """Version 3 ignored a third key of aq_nack; the operator replaces it and from then
    on retries are counted (new SDKs pass the stats key to either version)."""
    counting = "  if keys[3] then\n    redis.call('HINCRBY', keys[3], 'retries', 1)\n  end\n"
    assert counting in functions.LIBRARY_CODE
    v3 = functions.LIBRARY_CODE.replace(counting, "").replace(
        f"local VERSION = '{functions.LIBRARY_VERSION}'", "local VERSION = '3'")
    await redis_client.function_load(v3, replace=True)
    for _ in range(2):
        await functions.enqueue(redis_client, P, {"d": "x"})
    assert await functions.nack(redis_client, P, GROUP, await _deliver(redis_client),
                                due_ms=1, error="e")
    assert await redis_client.exists(P.stats) == 0  # old library: not counted
    assert await functions.ensure_library(redis_client) is True
    assert await functions.nack(redis_client, P, GROUP, await _deliver(redis_client),
                                due_ms=1, error="e")
    assert await redis_client.hget(P.stats, "retries") == "1"


async def test_aq_version_is_read_only(lib: RedisClient) -> None:
    [raw] = await lib.function_list(library="agentqueue")
    info = dict(zip(raw[::2], raw[1::2], strict=True))  # RESP2: flat pairs
    funcs = [dict(zip(f[::2], f[1::2], strict=True)) for f in info["functions"]]
    flags = {f["name"]: f["flags"] for f in funcs}
    assert "no-writes" in flags["aq_version"]
    assert flags["aq_enqueue"] == []


async def test_missing_library_is_classified(redis_client: RedisClient) -> None:
    await redis_client.function_flush()
    with pytest.raises(RedisLibraryMissing):
        await functions.enqueue(redis_client, P, {"d": "x"})


async def test_enqueue_plain(lib: RedisClient) -> None:
    first = await functions.enqueue(lib, P, {"d": "hello", "h": '{"a":"b"}'})
    second = await functions.enqueue(lib, P, {"d": "hello"})
    assert not first.duplicate and not second.duplicate and first.id != second.id
    entries = await lib.xrange(P.queue_key)
    assert entries[0] == (first.id, {"d": "hello", "h": '{"a":"b"}'})
    assert await lib.xlen(P.queue_key) == 2


async def test_enqueue_idempotent(lib: RedisClient) -> None:
    a = await functions.enqueue(lib, P, {"d": "1"}, idem_key="order-7", idem_ttl_ms=60_000)
    b = await functions.enqueue(lib, P, {"d": "2"}, idem_key="order-7", idem_ttl_ms=60_000)
    assert (a.duplicate, b.duplicate) == (False, True)
    assert a.id == b.id
    assert await lib.xlen(P.queue_key) == 1
    assert (await lib.xrange(P.queue_key))[0][1] == {"d": "1", "k": "order-7"}
    assert await lib.get(P.idempotency("order-7")) == a.id
    assert 0 < await lib.pttl(P.idempotency("order-7")) <= 60_000
    # another key is another message
    c = await functions.enqueue(lib, P, {"d": "3"}, idem_key="order-8")
    assert not c.duplicate and await lib.xlen(P.queue_key) == 2


async def test_enqueue_validation(lib: RedisClient) -> None:
    with pytest.raises(ValueError):
        await functions.enqueue(lib, P, {})
    with pytest.raises(ValueError):
        await functions.enqueue(lib, P, {"d": "x"}, idem_key="k", idem_ttl_ms=0)
    with pytest.raises(ResponseError, match="field value pairs"):  # straight FCALL
        await lib.fcall("aq_enqueue", 1, P.queue_key, 1000, "d")
    with pytest.raises(ResponseError, match="ttl_ms"):
        await lib.fcall("aq_enqueue", 2, P.queue_key, P.idempotency("x"), "nope", "d", "v")


async def test_enqueue_wrong_type_is_spec_error(lib: RedisClient) -> None:
    await lib.set(P.queue_key, "not a stream")
    with pytest.raises(RedisSpecError, match="WRONGTYPE"):
        await functions.enqueue(lib, P, {"d": "x"})


async def test_nack_schedules_retry(lib: RedisClient) -> None:
    await functions.enqueue(lib, P, {"d": "payload", "h": "{}"})
    entry = await _deliver(lib)
    assert await functions.nack(lib, P, GROUP, entry, due_ms=5_000, error="boom") is True
    assert (await lib.xpending(P.queue_key, GROUP))["pending"] == 0
    [(member, score)] = await lib.zrange(P.retry, 0, -1, withscores=True)
    assert score == 5_000
    msg = json.loads(member)
    assert msg == {"d": "payload", "h": "{}", "a": "1", "e": "boom", "aq.src": entry}
    # not pending any more: a second nack does nothing
    assert await functions.nack(lib, P, GROUP, entry, due_ms=1, error="again") is False
    assert await lib.zcard(P.retry) == 1


async def test_nack_counts_scheduled_retries(lib: RedisClient) -> None:
    for i in range(3):
        await functions.enqueue(lib, P, {"d": f"m{i}"})
    first = await _deliver(lib)
    assert await functions.nack(lib, P, GROUP, first, due_ms=1, error="e")
    assert await lib.hgetall(P.stats) == {"retries": "1"}
    # not pending any more: nothing scheduled, nothing counted
    assert await functions.nack(lib, P, GROUP, first, due_ms=1, error="e") is False
    # an SDK older than library version 4 passes two keys: retried, not counted
    second = await _deliver(lib)
    assert await lib.fcall("aq_nack", 2, P.queue_key, P.retry, GROUP, second, 1, "e") == 1
    assert await lib.zcard(P.retry) == 2
    third = await _deliver(lib)
    assert await functions.nack(lib, P, GROUP, third, due_ms=1, error="e")
    assert await lib.hget(P.stats, "retries") == "2"
    # a dead letter is not a retry
    await functions.enqueue(lib, P, {"d": "poison"})
    assert await functions.deadletter(lib, P, GROUP, await _deliver(lib), "c1", "e", 5, 1)
    assert await lib.hget(P.stats, "retries") == "2"


async def test_nack_of_trimmed_entry_acks_and_returns_0(lib: RedisClient) -> None:
    await functions.enqueue(lib, P, {"d": "x"})
    entry = await _deliver(lib)
    await lib.xdel(P.queue_key, entry)
    assert await functions.nack(lib, P, GROUP, entry, due_ms=1, error="e") is False
    assert (await lib.xpending(P.queue_key, GROUP))["pending"] == 0
    assert await lib.zcard(P.retry) == 0
    assert await lib.exists(P.stats) == 0  # nothing retried, nothing counted


async def test_identical_failures_stay_two_retries(lib: RedisClient) -> None:
    for _ in range(2):
        await functions.enqueue(lib, P, {"d": "same"})
    for _ in range(2):
        entry = await _deliver(lib)
        assert await functions.nack(lib, P, GROUP, entry, due_ms=10, error="same")
    assert await lib.zcard(P.retry) == 2


async def test_promote_moves_due_retries_back(lib: RedisClient) -> None:
    for i in range(3):
        await functions.enqueue(lib, P, {"d": f"m{i}"})
    due = {0: 100, 1: 200, 2: 10_000}
    for i in range(3):
        entry = await _deliver(lib)
        await functions.nack(lib, P, GROUP, entry, due_ms=due[i], error=f"err{i}")
    assert await functions.promote(lib, P, now_ms=150, limit=10) == 1
    assert await functions.promote(lib, P, now_ms=1_000, limit=10) == 1
    assert await functions.promote(lib, P, now_ms=1_000, limit=10) == 0
    assert await lib.zcard(P.retry) == 1
    entries = await lib.xrange(P.queue_key)
    assert len(entries) == 5
    assert entries[3][1] == {"d": "m0", "a": "1", "e": "err0"} or \
        dict(entries[3][1]) == {"d": "m0", "a": "1", "e": "err0"}
    assert list(entries[3][1])[0] == "d"  # payload first
    # a second failure increments the attempt
    res = await lib.xreadgroup(GROUP, "c1", {P.queue_key: ">"}, count=10)
    again = res[0][1][0][0]
    assert await functions.nack(lib, P, GROUP, again, due_ms=0, error="err0b")
    assert await functions.promote(lib, P, now_ms=1, limit=10) == 1
    last = (await lib.xrevrange(P.queue_key, count=1))[0][1]
    assert last["a"] == "2" and last["e"] == "err0b"


async def test_promote_respects_limit(lib: RedisClient) -> None:
    for i in range(5):
        await functions.enqueue(lib, P, {"d": str(i)})
    for _ in range(5):
        await functions.nack(lib, P, GROUP, await _deliver(lib), due_ms=1, error="e")
    assert await functions.promote(lib, P, now_ms=2, limit=2) == 2
    assert await lib.zcard(P.retry) == 3
    with pytest.raises(ValueError):
        await functions.promote(lib, P, now_ms=2, limit=0)


async def test_promote_keeps_an_undecodable_member(lib: RedisClient) -> None:
    await lib.zadd(P.retry, {"not json {": 1})
    assert await functions.promote(lib, P, now_ms=2) == 1
    [(_, fields)] = await lib.xrange(P.queue_key)
    assert fields["d"] == "not json {"


async def test_binary_payload_survives_retry(redis_target: RedisTarget,
                                             lib: RedisClient) -> None:
    raw = await connection.connect(redis_target, decode_responses=False)
    try:
        payload = bytes(range(256)) * 4
        await functions.enqueue(raw, P, {"d": payload})
        entry = await _deliver(raw)
        assert await functions.nack(raw, P, GROUP, entry,
                                    due_ms=1, error="é\x00")
        assert await functions.promote(raw, P, now_ms=5) == 1
        last = (await raw.xrevrange(P.queue_key, count=1))[0][1]
        assert last[b"d"] == payload
        assert last[b"e"] == "é\x00".encode()
    finally:
        await connection.close_client(raw)


async def test_deadletter_moves_with_metadata(lib: RedisClient) -> None:
    await functions.enqueue(lib, P, {"d": "poison", "k": "key-1"})
    entry = await _deliver(lib)
    moved = await functions.deadletter(lib, P, GROUP, entry, consumer="c1",
                                       error="bad input", deliveries=5, now_ms=1234)
    assert moved is True
    assert (await lib.xpending(P.queue_key, GROUP))["pending"] == 0
    [(_, fields)] = await lib.xrange(P.dead_letter)
    assert fields == {"d": "poison", "k": "key-1", "x.id": entry, "x.deliveries": "5",
                      "x.group": GROUP, "x.consumer": "c1", "x.error": "bad input",
                      "x.time": "1234"}
    assert await lib.xlen(P.queue_key) == 1  # other groups still see it
    assert await functions.deadletter(lib, P, GROUP, entry, "c1", "again", 6, 1) is False
    assert await lib.xlen(P.dead_letter) == 1


async def test_deadletter_of_trimmed_entry_acks_and_returns_0(lib: RedisClient) -> None:
    await functions.enqueue(lib, P, {"d": "x"})
    entry = await _deliver(lib)
    await lib.xtrim(P.queue_key, maxlen=0)
    assert await functions.deadletter(lib, P, GROUP, entry, "c1", "e", 1, 1) is False
    assert (await lib.xpending(P.queue_key, GROUP))["pending"] == 0
    assert await lib.exists(P.dead_letter) == 0


async def test_deadletter_of_redriven_entry_replaces_metadata(lib: RedisClient) -> None:
    await lib.xadd(P.queue_key, {"d": "x", "x.id": "1-1", "x.error": "old"})
    entry = await _deliver(lib)
    await functions.deadletter(lib, P, GROUP, entry, "c2", "new", 2, 9)
    [(_, fields)] = await lib.xrange(P.dead_letter)
    assert fields["x.error"] == "new" and fields["x.id"] == entry
    assert list(fields).count("x.error") == 1


async def test_functions_in_cluster(redis_cluster_client: RedisClient) -> None:
    client = redis_cluster_client
    await functions.ensure_library(client)
    versions = await functions.library_versions(client)
    assert len(versions) == 3 and set(versions.values()) == {functions.LIBRARY_VERSION}
    parts = partition_keys("ns", "wide", 8)
    slots = {await client.cluster_keyslot(p.queue_key) for p in parts}
    assert len(slots) > 1  # the partitions really are spread
    for p in parts:
        res = await functions.enqueue(client, p, {"d": f"p{p.partition}"}, idem_key="same")
        assert not res.duplicate
        assert (await functions.enqueue(client, p, {"d": "dup"}, idem_key="same")).duplicate
        entry = await _deliver(client, p)
        assert await functions.deadletter(client, p, GROUP, entry, "c1", "e", 3, 1)
        assert await client.xlen(p.dead_letter) == 1
        await functions.enqueue(client, p, {"d": "retry me"})
        entry = await _deliver(client, p)
        assert await functions.nack(client, p, GROUP, entry, due_ms=1, error="e")
        assert await client.hget(p.stats, "retries") == "1"  # same slot as the stream
        assert await functions.promote(client, p, now_ms=2) == 1


async def test_promote_due_moves_every_partitions_due_retries_in_one_call(
        lib: RedisClient) -> None:
    """The operator's sweep: all partitions of a queue at once; an error is raised, never
    counted as moved."""
    parts = [P, PartitionKeys(P.namespace, P.queue, 1)]
    for part in parts:
        for i in range(2):
            await functions.enqueue(lib, part, {"d": f"m{i}"})
    for part, due in ((parts[0], 100), (parts[0], 5_000), (parts[1], 100)):
        assert await functions.nack(lib, part, GROUP, await _deliver(lib, part), due_ms=due,
                                    error="e")
    assert await functions.promote_due(lib, parts, now_ms=1_000) == 2
    assert [await lib.zcard(p.retry) for p in parts] == [1, 0]
    await lib.set(parts[1].retry, "not a sorted set")
    with pytest.raises(RedisSpecError):
        await functions.promote_due(lib, parts, now_ms=10_000)
