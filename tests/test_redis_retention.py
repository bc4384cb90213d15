"""redisgw.retention on a real redis-server: trims, protection, dead letters, idempotency."""

from __future__ import annotations

import time
from typing import Any

import pytest

from agentqueue.planning.retention import RetentionSettings
from agentqueue.redisgw import groups, retention
from agentqueue.redisgw.connection import RedisClient
from agentqueue_client.keys import partition_keys

pytestmark = pytest.mark.asyncio

NS, Q = "ns", "jobs"
PARTS = partition_keys(NS, Q, 2)
P0 = PARTS[0]
KEY = P0.queue_key


async def add(client: Any, key: str, n: int, ids: list[str] | None = None) -> list[str]:
    pipe = client.pipeline(transaction=False)
    for i in range(n):
        pipe.xadd(key, {"d": str(i)}, id=ids[i] if ids else "*")
    return list(await pipe.execute())


async def consume(client: Any, group: str, n: int, ack: bool = True) -> list[str]:
    res = await client.xreadgroup(group, "c", {KEY: ">"}, count=n)
    got = [e[0] for e in res[0][1]] if res else []
    if ack and got:
        await client.xack(KEY, group, *got)
    return got


async def undelivered(client: Any, group: str) -> int:
    info = next(g for g in await client.xinfo_groups(KEY) if g["name"] == group)
    return len(await client.xrange(KEY, "(" + info["last-delivered-id"], "+"))


def settings(**kw: Any) -> RetentionSettings:
    return RetentionSettings(**kw)


# ---- maxLength / maxAge ------------------------------------------------------------------------

async def test_max_length_exact(redis_client: RedisClient) -> None:
    await add(redis_client, KEY, 50)
    await add(redis_client, PARTS[1].queue_key, 10)
    res = await retention.apply_retention(redis_client, PARTS, settings(max_length=20,
                                                                        exact=True))
    assert await redis_client.xlen(KEY) == 20 and await redis_client.xlen(PARTS[1].queue_key) == 10
    assert res.trimmed == 30 and [p.trimmed for p in res.partitions] == [30, 0]
    assert res.protected == 0 and res.dropped_undelivered == 0


async def test_max_length_approximate_trims_whole_nodes(redis_client: RedisClient) -> None:
    await add(redis_client, KEY, 1050)
    res = await retention.apply_retention(redis_client, [P0], settings(max_length=500))
    left = await redis_client.xlen(KEY)
    assert 500 <= left < 600 and left != 1050  # ~: whole 100-entry nodes only
    assert res.trimmed == 1050 - left


async def test_max_age(redis_client: RedisClient) -> None:
    now = int(time.time() * 1000)
    old = [f"{now - 10_000}-{i}" for i in range(5)]
    await add(redis_client, KEY, 5, old)
    fresh = await add(redis_client, KEY, 3)
    res = await retention.apply_retention(redis_client, [P0],
                                          settings(max_age_ms=5000, exact=True), now_ms=now)
    assert [e[0] for e in await redis_client.xrange(KEY)] == fresh and res.trimmed == 5


async def test_nothing_configured_for_the_queue_touches_nothing(redis_client: RedisClient) -> None:
    await add(redis_client, KEY, 5)
    res = await retention.apply_retention(redis_client, [P0], settings(dead_letter_max_length=1))
    assert res.trimmed == 0 and await redis_client.xlen(KEY) == 5


# ---- protection ---------------------------------------------------------------------------------

async def test_lagging_group_is_protected_then_trimmed_after_catching_up(
        redis_client: RedisClient) -> None:
    r = redis_client
    await groups.ensure_group(r, [P0], "fast", "Beginning")
    await groups.ensure_group(r, [P0], "slow", "Beginning")
    await add(r, KEY, 100)
    await consume(r, "fast", 100)
    await consume(r, "slow", 30)  # 70 undelivered
    s = settings(max_length=20, exact=True)

    res = await retention.apply_retention(r, [P0], s)
    assert await r.xlen(KEY) == 70 and res.trimmed == 30
    assert res.protected == 50 and res.blocked_by == ["slow"] and res.exact
    assert await undelivered(r, "slow") == 70  # nothing it had not read was dropped

    await consume(r, "slow", 100)  # catches up
    res = await retention.apply_retention(r, [P0], s)
    assert await r.xlen(KEY) == 20 and res.trimmed == 50 and res.protected == 0
    assert res.blocked_by == []


async def test_pending_entries_are_protected(redis_client: RedisClient) -> None:
    r = redis_client
    await groups.ensure_group(r, [P0], "g", "Beginning")
    ids = await add(r, KEY, 100)
    await consume(r, "g", 10)
    got = await consume(r, "g", 20, ack=False)  # 20 pending: ids[10:30]
    await consume(r, "g", 60)  # acked up to ids[89]; 10 undelivered
    await r.xack(KEY, "g", *got[5:])  # ids[15:30] acked; ids[10:15] still pending
    res = await retention.apply_retention(r, [P0], settings(max_length=20, exact=True))
    assert [e[0] for e in await r.xrange(KEY, "-", "+", count=1)] == [ids[10]]
    assert await r.xlen(KEY) == 90 and res.trimmed == 10 and res.protected == 70


async def test_protected_max_age_reports_what_it_kept(redis_client: RedisClient) -> None:
    r = redis_client
    now = int(time.time() * 1000)
    await add(r, KEY, 10, [f"{now - 10_000}-{i}" for i in range(10)])
    await add(r, KEY, 5)
    await groups.ensure_group(r, [P0], "g", "Beginning")
    await consume(r, "g", 4)
    res = await retention.apply_retention(r, [P0], settings(max_age_ms=5000, exact=True),
                                          now_ms=now)
    assert res.trimmed == 4 and res.protected == 6 and res.blocked_by == ["g"]
    assert await r.xlen(KEY) == 11


async def test_protection_holds_when_entries_arrive_between_observe_and_trim(
        redis_client: RedisClient, monkeypatch: pytest.MonkeyPatch) -> None:
    r = redis_client
    await groups.ensure_group(r, [P0], "g", "Beginning")
    await add(r, KEY, 40)
    await consume(r, "g", 25)  # 15 undelivered, maxLength 20 fits them
    real = retention.observe_for_retention

    async def then_burst(*args: Any, **kw: Any) -> Any:
        observed = await real(*args, **kw)
        await add(r, KEY, 30)  # a plain MAXLEN 20 would now cut into the 45 undelivered
        return observed

    monkeypatch.setattr(retention, "observe_for_retention", then_burst)
    await retention.apply_retention(r, [P0], settings(max_length=20, exact=True))
    assert await undelivered(r, "g") == 45 and await r.xlen(KEY) == 45


async def test_lag_is_exact_for_the_report_after_redis_miscounts(redis_client: RedisClient
                                                                 ) -> None:
    """Trim past a group without protection, let it read on (7.0's lag is then wrong
    for good), and check the next protected run still reports exact numbers."""
    r = redis_client
    await groups.ensure_group(r, [P0], "g", "Beginning")
    await add(r, KEY, 60)
    await consume(r, "g", 5)
    res = await retention.apply_retention(
        r, [P0], settings(max_length=40, exact=True, protect_undelivered=False))
    assert res.dropped_undelivered == 15 and res.trimmed == 20
    await consume(r, "g", 10)  # 30 undelivered now; Redis reports more
    res = await retention.apply_retention(r, [P0], settings(max_length=10, exact=True))
    assert res.protected == 20 and res.trimmed == 10 and await undelivered(r, "g") == 30


# ---- protection off --------------------------------------------------------------------------

@pytest.mark.parametrize("exact", [True, False])
async def test_unprotected_dropped_count_is_exact(redis_client: RedisClient, exact: bool) -> None:
    r = redis_client
    await groups.ensure_group(r, [P0], "a", "Beginning")
    await groups.ensure_group(r, [P0], "b", "Beginning")
    await add(r, KEY, 1000)
    await consume(r, "a", 1000)
    await consume(r, "b", 250)
    got = await consume(r, "b", 50, ack=False)  # 50 pending from the 251st entry
    before = await undelivered(r, "b") + len(got)
    res = await retention.apply_retention(
        r, [P0], settings(max_length=100, exact=exact, protect_undelivered=False))
    after = await undelivered(r, "b") + sum(
        1 for e in await r.xrange(KEY, got[0], got[-1]))
    assert res.dropped_undelivered == before - after
    assert res.dropped_undelivered == res.trimmed - 250
    if exact:
        assert res.trimmed == 900 and res.dropped_undelivered == 650


# ---- dead letters -----------------------------------------------------------------------------

async def test_dead_letter_retention_is_independent(redis_client: RedisClient) -> None:
    r = redis_client
    now = int(time.time() * 1000)
    await add(r, P0.dead_letter, 3, [f"{now - 60_000}-{i}" for i in range(3)])
    await add(r, P0.dead_letter, 10)
    await add(r, KEY, 10)
    await groups.ensure_group(r, [P0], "g", "Beginning")
    res = await retention.apply_retention(
        r, PARTS, settings(dead_letter_max_length=4, dead_letter_max_age_ms=30_000, exact=True),
        now_ms=now)
    assert await r.xlen(P0.dead_letter) == 4 and await r.xlen(KEY) == 10
    assert res.dead_letter_trimmed == 9 and res.trimmed == 0
    assert [p.dead_letter_trimmed for p in res.partitions] == [9, 0]


# ---- idempotency keys ---------------------------------------------------------------------------

async def test_idempotency_keys_get_ttl_from_their_enqueue_time(redis_client: RedisClient) -> None:
    r = redis_client
    now = int(time.time() * 1000)
    await r.set(P0.idempotency("fresh"), f"{now - 1000}-0", px=3_600_000)
    await r.set(P0.idempotency("old"), f"{now - 20_000}-0")
    await r.set(PARTS[1].idempotency("odd"), "not-an-id")
    await r.set("aq:{ns/jobs2/0}:idem:x", f"{now}-0")  # another queue: untouched
    res = await retention.adjust_idempotency_ttl(r, NS, Q, 10_000, now_ms=now)
    assert (res.updated, res.expired, res.complete) == (2, 1, True)
    assert 8_000 <= await r.pttl(P0.idempotency("fresh")) <= 9_000
    assert not await r.exists(P0.idempotency("old"))
    assert 0 < await r.pttl(PARTS[1].idempotency("odd")) <= 10_000
    assert await r.pttl("aq:{ns/jobs2/0}:idem:x") == -1


async def test_idempotency_scan_is_bounded_and_resumable(redis_client: RedisClient) -> None:
    r = redis_client
    now = int(time.time() * 1000)
    pipe = r.pipeline(transaction=False)
    for i in range(3000):
        pipe.set(P0.idempotency(f"k{i}"), f"{now}-{i}")
    await pipe.execute()
    res = await retention.adjust_idempotency_ttl(r, NS, Q, 60_000, now_ms=now, max_keys=500)
    assert not res.complete and 0 < res.updated < 3000
    total, cursors = res.updated, res.cursors
    for _ in range(20):
        res = await retention.adjust_idempotency_ttl(r, NS, Q, 60_000, now_ms=now,
                                                     max_keys=500, cursors=cursors)
        total, cursors = total + res.updated, res.cursors
        if res.complete:
            break
    assert res.complete and total >= 3000  # SCAN may return a key twice, never miss one
    assert await r.pttl(P0.idempotency("k7")) > 0


# ---- cluster ---------------------------------------------------------------------------------

async def test_cluster_retention(redis_cluster_client: RedisClient) -> None:
    r = redis_cluster_client
    parts = partition_keys(NS, Q, 6)
    for pk in parts:
        await add(r, pk.queue_key, 30)
        await add(r, pk.dead_letter, 5)
        await r.set(pk.idempotency("x"), f"{int(time.time() * 1000)}-0")
    await groups.ensure_group(r, parts, "g", "Beginning")
    res = await retention.apply_retention(
        r, parts, settings(max_length=10, exact=True, dead_letter_max_length=2))
    assert res.trimmed == 0 and res.protected == 6 * 20  # nothing read yet: all protected
    assert res.dead_letter_trimmed == 6 * 3
    idem = await retention.adjust_idempotency_ttl(r, NS, Q, 60_000)
    assert idem.updated == 6 and idem.complete
