"""DLQ tools (list, show, replay, purge) and peek, on a real redis-server."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from agentqueue.tools import dlq_list, dlq_purge, dlq_replay, dlq_show, peek
from agentqueue.tools.dlq import parse_ref
from agentqueue_client import ClientConfig, Outgoing, Producer, partition_for

from .agents.harness import part, provision, sdk_config

pytest_plugins = ["tests.redis_fixtures"]

GROUP = "workers"


@pytest.fixture
async def binary_admin(redis_server: Any) -> Any:
    """A bytes-mode admin client (binary payloads survive)."""
    client = sdk_config(redis_server, "x").connect()
    yield client
    await client.aclose()


async def _dead_letter(admin: Any, cfg: ClientConfig, partition: int, entry_id: str,
                       error: str) -> None:
    k = part(cfg, partition)
    await admin.xreadgroup(GROUP, "c9", {k.queue_key: ">"}, count=100)
    await admin.fcall("aq_deadletter", 2, k.queue_key, k.dead_letter, GROUP, entry_id, "c9",
                      error, "5", "1700000000000")


async def test_list_show_replay_purge(redis_server: Any, redis_client: Any,
                                      binary_admin: Any) -> None:
    cfg = sdk_config(redis_server, "bad", partitions=2)
    await provision(redis_client, cfg)
    async with Producer(cfg) as producer:
        ids = await producer.send_many([
            Outgoing({"n": 0}, key="a", idempotency_key="k0", headers={"h": "1"}),
            Outgoing(b"\xff\x00binary", key="a"),
            Outgoing({"n": 2}, key="d"),
        ])
    pa, pb = partition_for("a", 2), partition_for("d", 2)
    assert pa != pb
    for i, entry_id in enumerate(ids):
        await _dead_letter(binary_admin, cfg, pa if i < 2 else pb, entry_id, f"error {i}")
        await asyncio.sleep(0.003)  # distinct dead-letter ids across partitions

    letters = await dlq_list(binary_admin, cfg.namespace, cfg.queue)
    assert len(letters) == 3
    by_orig = {lt.original_id: lt for lt in letters}
    first = by_orig[ids[0]]
    assert (first.partition, first.group, first.consumer, first.deliveries) == (
        pa, GROUP, "c9", 5)
    assert first.error == "error 0" and first.idempotency_key == "k0"
    assert first.time_ms == 1700000000000 and "x.id" not in first.fields
    assert by_orig[ids[1]].payload == b"\xff\x00binary"
    assert first.to_dict()["fields"]["d"] == '{"n":0}'
    assert len(await dlq_list(binary_admin, cfg.namespace, cfg.queue, partition=pb)) == 1

    shown = await dlq_show(binary_admin, cfg.namespace, cfg.queue, first.ref)
    assert shown == first
    assert await dlq_show(binary_admin, cfg.namespace, cfg.queue, first.dlq_id) == first
    assert await dlq_show(binary_admin, cfg.namespace, cfg.queue, "1-1") is None

    # replay two by reference (one bare id), one missing
    result = await dlq_replay(binary_admin, cfg.namespace, cfg.queue,
                              [first.ref, by_orig[ids[1]].dlq_id, "0/1-1"])
    assert result.count == 2 and result.missing == ["0/1-1"]
    entries = await binary_admin.xrange(part(cfg, pa).queue_key, "(" + ids[1], "+")
    replayed = {e[1][b"d"]: e[1] for e in entries}
    assert replayed[b'{"n":0}'] == {b"d": b'{"n":0}', b"k": b"k0", b"h": b'{"h":"1"}'}
    assert replayed[b"\xff\x00binary"] == {b"d": b"\xff\x00binary"}
    assert [lt.original_id for lt in await dlq_list(binary_admin, cfg.namespace, cfg.queue)] \
        == [ids[2]]

    assert await dlq_purge(binary_admin, cfg.namespace, cfg.queue, ["9/1-1"]) == 0
    assert await dlq_purge(binary_admin, cfg.namespace, cfg.queue, "all") == 1
    assert await dlq_list(binary_admin, cfg.namespace, cfg.queue) == []


async def test_replay_all_only_takes_what_was_there(redis_server: Any, redis_client: Any,
                                                    binary_admin: Any) -> None:
    cfg = sdk_config(redis_server, "many")
    await provision(redis_client, cfg)
    async with Producer(cfg) as producer:
        ids = await producer.send_many([{"n": i} for i in range(250)])
    for entry_id in ids:
        await _dead_letter(redis_client, cfg, 0, entry_id, "bad")
    result = await dlq_replay(binary_admin, cfg.namespace, cfg.queue, "all", batch=100)
    assert result.count == 250
    assert await redis_client.xlen(part(cfg).dead_letter) == 0
    assert await redis_client.xlen(part(cfg).queue_key) == 500
    assert await dlq_purge(binary_admin, cfg.namespace, cfg.queue, [f"0/{ids[0]}"]) == 0


async def test_ambiguous_bare_id(redis_server: Any, redis_client: Any) -> None:
    cfg = sdk_config(redis_server, "twins", partitions=2)
    await provision(redis_client, cfg)
    for p in (0, 1):
        await redis_client.xadd(part(cfg, p).dead_letter, {"d": "1", "x.id": "1-0"}, id="5-0")
    with pytest.raises(ValueError, match="use <partition>/<id>"):
        await dlq_show(redis_client, cfg.namespace, cfg.queue, "5-0")
    with pytest.raises(ValueError):
        await dlq_replay(redis_client, cfg.namespace, cfg.queue, ["5-0"])
    shown = await dlq_show(redis_client, cfg.namespace, cfg.queue, "1/5-0")
    assert shown is not None and shown.partition == 1 and shown.payload == b"1"
    assert await dlq_purge(redis_client, cfg.namespace, cfg.queue, ["5-0"]) == 2


def test_parse_ref() -> None:
    assert parse_ref("3/1700-0") == (3, "1700-0")
    assert parse_ref("1700-0") == (None, "1700-0")
    with pytest.raises(ValueError):
        parse_ref("x/1700-0")


async def test_peek(redis_server: Any, redis_client: Any, binary_admin: Any) -> None:
    cfg = sdk_config(redis_server, "peeked", partitions=2)
    await provision(redis_client, cfg)
    async with Producer(cfg) as producer:
        sent = await producer.send_many([{"n": i} for i in range(6)])
    # peek merges the partitions by entry id: when the pipeline crosses a millisecond, the
    # send order (round robin over 2 partitions) is not the id order.
    ids = sorted(sent, key=lambda i: tuple(int(x) for x in i.split("-")))
    await redis_client.xadd(part(cfg, 0).queue_key, {"oops": "1"})
    head = await peek(binary_admin, cfg.namespace, cfg.queue, count=3)
    assert [m.id for m in head] == ids[:3]
    assert head[0].preview() == '{"n":0}'
    await redis_client.xreadgroup(GROUP, "c", {part(cfg, 0).queue_key: ">",
                                               part(cfg, 1).queue_key: ">"}, count=2)
    after = await peek(binary_admin, cfg.namespace, cfg.queue, count=10, group=GROUP)
    # The malformed entry sorts among them by its id (same millisecond or not).
    assert [m.id for m in after if m.problem is None] == ids[4:]
    (bad,) = [m for m in after if m.problem is not None]
    assert bad.partition == 0 and "unknown field" in bad.problem
    assert await redis_client.xlen(part(cfg, 0).queue_key) == 4  # nothing consumed

    lcfg = sdk_config(redis_server, "plist", queue_type="List")
    await provision(redis_client, lcfg, group=None, priority_levels=2)
    async with Producer(lcfg) as producer:
        await producer.send_many([Outgoing({"n": 1}, priority=1), Outgoing({"n": 2})])
    listed = await peek(binary_admin, lcfg.namespace, lcfg.queue)
    assert [(m.priority, m.body) for m in listed] == [(0, b'{"n":2}'), (1, b'{"n":1}')]

    pcfg = sdk_config(redis_server, "ps", queue_type="PubSub")
    await provision(redis_client, pcfg, group=None)
    assert await peek(binary_admin, pcfg.namespace, pcfg.queue) == []
