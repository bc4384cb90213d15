"""Conformance of the wire protocol (docs/protocol.md) on a real redis-server.

A stand-in for a client written in another language: every producer and consumer step
below is a plain redis-py command taken from docs/protocol.md, run as the queue's role
ACL users (so the commands the document asks for are shown to be allowed for that
role). Nothing here imports the Python SDK (``agentqueue_client``); the operator's own
code only provisions the queue, as the operator would (metadata hash, library, groups,
ACL users), and runs its sweep where the document says the operator does. The last
two tests (each on a Stream and a List queue) run the Python SDK in a subprocess as the
other party: what this document sends, the SDK reads, and the other way round.

One guarantee does not hold yet and is marked ``xfail(strict=True)``: ``maxDeliveries``
is enforced by consumers, not by the server (docs/protocol.md, section 10).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import sys
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aredis
from redis.exceptions import NoPermissionError, ResponseError, WatchError

from agentqueue.models import AgentQueueSpec
from agentqueue.planning.acl import acl_rules
from agentqueue.planning.queue_plan import plan_queue
from agentqueue.redisgw import functions, list_sweep, provision, users
from agentqueue.redisgw import groups as operator_groups
from agentqueue.redisgw.meta import write_group_meta
from agentqueue_client import keys

NS = "team-c"
GROUP = "workers"
ROOT = Path(__file__).resolve().parents[1]


# --- what the document says, written out (no SDK) ------------------------------------------

def key(queue: str, partition: int, suffix: str) -> str:
    """docs/protocol.md section 2: ``aq:{ns/q/p}:<suffix>``."""
    return f"aq:{{{NS}/{queue}/{partition}}}:{suffix}"


def partition_of(routing_key: str, partitions: int) -> int:
    """Section 2: CRC-32 of the key's UTF-8 bytes modulo the partition count."""
    return zlib.crc32(routing_key.encode("utf-8")) % partitions


def now_ms() -> int:
    return int(time.time() * 1000)


def backoff_ms(meta: Mapping[bytes, bytes], n: int) -> int:
    """Section 6.3, without jitter (the queues here have ``retryJitter`` 0)."""
    assert meta[b"retryJitter"] == b"0"
    cap = min(int(meta[b"retryMaxMs"]),
              int(meta[b"retryInitialMs"]) * float(meta[b"retryMultiplier"]) ** (n - 1))
    return int(cap)


ENVELOPE = {b"d", b"k", b"h", b"a", b"e"}


def stream_problem(fields: Mapping[bytes, bytes]) -> str | None:
    """Section 4.1: why a live stream entry is not a valid envelope, or None."""
    for name in fields:
        if name.startswith(b"x."):
            return f"reserved dead-letter field {name.decode()!r} in a live entry"
        if name not in ENVELOPE:
            return f"unknown field {name.decode(errors='replace')!r}"
    if b"d" not in fields:
        return "missing payload field 'd'"
    if b"a" in fields and not (fields[b"a"].isdigit() and int(fields[b"a"]) <= 1_000_000):
        return "field 'a' is not a small non-negative integer"
    if b"h" in fields:
        headers = json.loads(fields[b"h"])
        if not isinstance(headers, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in headers.items()):
            return "field 'h' is not a JSON object of strings"
    return None


def element(message_id: str, payload: bytes, **extra: Any) -> bytes:
    """Section 4.2: ``i`` first, ``d`` (UTF-8 text) or ``b`` (base64), then the rest."""
    obj: dict[str, Any] = {"i": message_id}
    try:
        obj["d"] = payload.decode("utf-8")
    except UnicodeDecodeError:
        obj["b"] = base64.b64encode(payload).decode("ascii")
    obj.update({k: v for k, v in extra.items() if v is not None})
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def read_element(raw: bytes) -> dict[str, Any]:
    """Section 4.2, the reading side; raises ValueError for a malformed element."""
    obj = json.loads(raw)
    if not isinstance(obj, dict):
        raise ValueError("element is not a JSON object")
    unknown = set(obj) - {"i", "d", "b", "k", "h", "a", "e", "p"}
    if unknown:
        raise ValueError(f"unknown field {sorted(unknown)[0]!r}")
    if not isinstance(obj.get("i"), str) or not obj["i"]:
        raise ValueError("element has no valid message id 'i'")
    if ("d" in obj) == ("b" in obj):
        raise ValueError("element needs exactly one of 'd' and 'b'")
    obj["payload"] = (obj["d"].encode("utf-8") if "d" in obj
                      else base64.b64decode(obj["b"], validate=True))
    return obj


def attempt(fields: Mapping[bytes, bytes]) -> int:
    """Field ``a``; anything but digits counts as 0, as the library reads it."""
    raw = fields.get(b"a", b"0")
    return int(raw) if raw.isdigit() else 0


def new_message_id() -> str:
    return f"{now_ms()}-{os.urandom(6).hex()}"


async def fcall(client: Any, name: str, fkeys: list[str], *args: Any) -> Any:
    return await client.fcall(name, len(fkeys), *fkeys, *args)


# --- provisioning, as the operator does it ------------------------------------------------

@dataclass
class Queue:
    name: str
    type: str
    partitions: int
    admin: Any
    producer: Any
    consumer: Any
    observer: Any
    url: str = ""
    credentials: dict[str, tuple[str, str]] = field(default_factory=dict)

    def k(self, partition: int, suffix: str) -> str:
        return key(self.name, partition, suffix)

    async def meta(self, client: Any = None) -> dict[bytes, bytes]:
        """Section 3: HGETALL of partition 0's metadata hash."""
        return await (client or self.consumer).hgetall(self.k(0, "meta"))


MakeQueue = Callable[..., Awaitable[Queue]]


@pytest.fixture
async def make_queue(redis_server: Any, redis_client: Any) -> AsyncIterator[MakeQueue]:
    """Provision a queue through the operator's own planning and gateway code, and
    log in as its producer, consumer and observer ACL users."""
    opened: list[Any] = []

    async def make(name: str, *, queue_type: str = "Stream", partitions: int = 1,
                   visibility_ms: int = 30_000, group_max_deliveries: int | None = None,
                   **spec: Any) -> Queue:
        body = {"type": queue_type, "partitions": partitions, **spec}
        body.setdefault("delivery", {"maxDeliveries": 3,
                                     "retry": {"initialDelay": "300ms", "jitter": False}})
        queue_spec = AgentQueueSpec.model_validate(body)
        observed = await provision.observe_queue(redis_client, NS, name, queue_spec)
        await provision.apply(redis_client, plan_queue(queue_spec, NS, name, observed,
                                                       generation=1))
        parts = keys.partition_keys(NS, name, partitions)
        if queue_type == "Stream":
            await operator_groups.ensure_group(redis_client, parts, GROUP, "Beginning")
        await write_group_meta(redis_client, parts, {
            f"visibilityMs:{GROUP}": str(visibility_ms),
            f"maxDeliveries:{GROUP}": str(group_max_deliveries
                                          or queue_spec.delivery.max_deliveries)}, [])
        clients: dict[str, Any] = {}
        credentials: dict[str, tuple[str, str]] = {}
        for role in ("producer", "consumer", "observer"):
            username = keys.acl_username(NS, name, f"{role}-1")
            password = users.new_password()
            await users.ensure_user(redis_client, username,
                                    acl_rules(role, NS, name, queue_type, partitions),
                                    [users.sha256_hex(password)])
            client = aredis.Redis.from_url(redis_server.url, username=username,
                                           password=password)
            opened.append(client)
            clients[role] = client
            credentials[role] = (username, password)
        return Queue(name, queue_type, partitions, redis_client, clients["producer"],
                     clients["consumer"], clients["observer"], redis_server.url, credentials)

    yield make
    for client in opened:
        await client.aclose()


async def denied(call: Awaitable[Any]) -> None:
    with pytest.raises(NoPermissionError):
        await call


# --- Stream: a plain-command producer and consumer -----------------------------------------

async def send(q: Queue, payload: bytes, *, partition: int = 0, idem: str | None = None,
               headers: Mapping[str, str] | None = None,
               extra: Mapping[str, bytes | str] | None = None) -> tuple[bytes, int]:
    """Section 5.1: FCALL aq_enqueue; returns (entry id, duplicate flag)."""
    meta = await q.meta(q.producer)
    fields: list[Any] = ["d", payload]
    if idem is not None:
        fields += ["k", idem]
    if headers:
        fields += ["h", json.dumps(dict(headers), separators=(",", ":"))]
    for name, value in (extra or {}).items():
        fields += [name, value]
    ttl = meta[b"idempotencyTtlMs"]
    fkeys = [q.k(partition, "q")]
    if idem is not None and meta[b"idempotency"] == b"1":
        fkeys.append(q.k(partition, f"idem:{idem}"))
    entry_id, duplicate = await fcall(q.producer, "aq_enqueue", fkeys, ttl, *fields)
    return entry_id, int(duplicate)


@dataclass
class Entry:
    partition: int
    id: bytes
    fields: dict[bytes, bytes]
    deliveries: int


async def times_delivered(q: Queue, partition: int, entry_id: bytes, consumer: str,
                          client: Any = None) -> int | None:
    rows = await (client or q.consumer).xpending_range(
        q.k(partition, "q"), GROUP, entry_id, entry_id, 1, consumername=consumer)
    return int(rows[0]["times_delivered"]) if rows else None


async def read(q: Queue, consumer: str = "c1", count: int = 10,
               client: Any = None) -> list[Entry]:
    """Section 6.1: XREADGROUP over every partition; deliveries = times delivered + a."""
    c = client or q.consumer
    streams = {q.k(p, "q"): ">" for p in range(q.partitions)}
    index = {q.k(p, "q").encode(): p for p in range(q.partitions)}
    out = []
    for stream, entries in await c.xreadgroup(GROUP, consumer, streams, count=count,
                                              block=50) or []:
        p = index[stream]
        for entry_id, fields in entries:
            delivered = await times_delivered(q, p, entry_id, consumer, c)
            assert delivered is not None
            out.append(Entry(p, entry_id, fields, delivered + attempt(fields)))
    return out


async def claim(q: Queue, consumer: str, partition: int = 0,
                client: Any = None) -> list[Entry]:
    """Section 6.6: XAUTOCLAIM with the group's visibility timeout, then XPENDING."""
    c = client or q.consumer
    meta = await q.meta(c)
    visibility = int(meta[f"visibilityMs:{GROUP}".encode()])
    _cursor, claimed, *_ = await c.xautoclaim(q.k(partition, "q"), GROUP, consumer,
                                              visibility, "0-0", count=10)
    out = []
    for entry_id, fields in claimed:
        if fields is None:
            continue
        delivered = await times_delivered(q, partition, entry_id, consumer, c)
        assert delivered is not None
        out.append(Entry(partition, entry_id, fields, delivered + attempt(fields)))
    return out


async def max_deliveries(q: Queue) -> int:
    meta = await q.meta()
    return int(meta.get(f"maxDeliveries:{GROUP}".encode()) or meta[b"maxDeliveries"])


async def deadletter(q: Queue, entry: Entry, consumer: str, reason: str) -> int:
    """Section 6.5."""
    return int(await fcall(q.consumer, "aq_deadletter",
                           [q.k(entry.partition, "q"), q.k(entry.partition, "dlq")],
                           GROUP, entry.id, consumer, reason, entry.deliveries, now_ms()))


async def admit(q: Queue, entries: list[Entry], consumer: str = "c1") -> list[Entry]:
    """Section 6.1's admission: dead-letter malformed and exhausted entries."""
    limit = await max_deliveries(q)
    good = []
    for entry in entries:
        problem = stream_problem(entry.fields)
        if problem is not None:
            assert await deadletter(q, entry, consumer, f"malformed entry: {problem}") == 1
        elif entry.deliveries > limit:
            reason = f"exceeded maxDeliveries ({entry.deliveries} > {limit})"
            if b"e" in entry.fields:
                reason += f"; last error: {entry.fields[b'e'].decode()}"
            assert await deadletter(q, entry, consumer, reason) == 1
        else:
            good.append(entry)
    return good


async def nack(q: Queue, entry: Entry, consumer: str, error: str) -> int:
    """Section 6.3: retry with backoff, or dead-letter on the last allowed delivery."""
    limit = await max_deliveries(q)
    if entry.deliveries >= limit:
        return await deadletter(q, entry, consumer,
                                f"exhausted {limit} deliveries; last error: {error}")
    due = now_ms() + backoff_ms(await q.meta(), entry.deliveries)
    p = entry.partition
    return int(await fcall(q.consumer, "aq_nack",
                           [q.k(p, "q"), q.k(p, "retry"), q.k(p, "stats")],
                           GROUP, entry.id, due, error))


async def promote(q: Queue, partition: int = 0) -> int:
    """Section 6.4."""
    return int(await fcall(q.consumer, "aq_promote",
                           [q.k(partition, "q"), q.k(partition, "retry")], now_ms(), 100))


async def pending(q: Queue, partition: int = 0) -> int:
    return int((await q.observer.xpending(q.k(partition, "q"), GROUP))["pending"])


async def dead_letters(q: Queue, partition: int = 0) -> list[dict[bytes, bytes]]:
    return [fields for _, fields in await q.observer.xrange(q.k(partition, "dlq"))]


async def until(check: Callable[[], Awaitable[Any]], timeout: float = 3.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value or time.monotonic() > deadline:
            return value
        await asyncio.sleep(0.02)


# --- keys ------------------------------------------------------------------------------------

def test_the_documented_keys_are_the_operators() -> None:
    p = keys.PartitionKeys(NS, "jobs", 3)
    assert key("jobs", 3, "q") == p.queue_key
    assert key("jobs", 3, "q:2") == p.priority_key(2)
    assert key("jobs", 3, "dlq") == p.dead_letter
    assert key("jobs", 3, "retry") == p.retry
    assert key("jobs", 3, "meta") == p.meta
    assert key("jobs", 3, "stats") == p.stats
    assert key("jobs", 3, "idem:order-7") == p.idempotency("order-7")
    assert key("jobs", 3, "proc:pod-1") == p.processing("pod-1")
    assert key("jobs", 0, "ch") == keys.channel_name(NS, "jobs")
    assert keys.queue_key_pattern(NS, "jobs") == f"aq:{{{NS}/jobs/*"
    assert keys.acl_username(NS, "jobs", "worker") == f"aq.{NS}.jobs.worker"
    # The document's examples (section 2).
    assert zlib.crc32(b"customer-7") == 42760520
    assert (partition_of("customer-7", 4), partition_of("order-1", 4)) == (0, 3)


# --- Stream queues -----------------------------------------------------------------------------

async def test_send_receive_and_ack(make_queue: MakeQueue) -> None:
    q = await make_queue("orders", partitions=2)
    meta = await q.meta(q.producer)
    assert meta[b"type"] == b"Stream" and meta[b"partitions"] == b"2"
    where = partition_of("customer-7", q.partitions)
    payload = json.dumps({"task": "summarise", "doc": 42}).encode()
    entry_id, duplicate = await send(q, payload, partition=where,
                                     headers={"traceparent": "00-" + "1" * 32 + "-" + "2" * 16
                                              + "-01"})
    assert duplicate == 0 and entry_id.count(b"-") == 1
    [entry] = await read(q)
    assert (entry.partition, entry.id, entry.deliveries) == (where, entry_id, 1)
    assert set(entry.fields) == {b"d", b"h"} and entry.fields[b"d"] == payload
    assert json.loads(entry.fields[b"h"])["traceparent"].startswith("00-111")
    assert stream_problem(entry.fields) is None
    assert await pending(q, where) == 1
    assert await q.consumer.xack(q.k(where, "q"), GROUP, entry.id) == 1
    assert await pending(q, where) == 0
    assert await q.consumer.xack(q.k(where, "q"), GROUP, entry.id) == 0
    assert await read(q) == []


async def test_each_role_runs_only_its_part(make_queue: MakeQueue) -> None:
    q = await make_queue("roles")
    await send(q, b"x")
    # producer: enqueue only
    await denied(q.producer.xreadgroup(GROUP, "c1", {q.k(0, "q"): ">"}))
    await denied(fcall(q.producer, "aq_promote", [q.k(0, "q"), q.k(0, "retry")], 1, 1))
    await denied(q.producer.xrange(q.k(0, "dlq")))
    # consumer: no enqueue, no groups, no settings
    await denied(fcall(q.consumer, "aq_enqueue", [q.k(0, "q")], 1000, "d", "x"))
    await denied(q.consumer.xgroup_create(q.k(0, "q"), "mine", id="0"))
    await denied(q.consumer.hset(q.k(0, "meta"), "maxDeliveries", "1000"))
    await denied(q.consumer.hset(q.k(0, "stats"), "retries", "0"))
    # observer: reads only
    assert await q.observer.xlen(q.k(0, "q")) == 1
    assert (await q.observer.hgetall(q.k(0, "meta")))[b"type"] == b"Stream"
    await denied(q.observer.xreadgroup(GROUP, "c1", {q.k(0, "q"): ">"}))
    await denied(q.observer.xack(q.k(0, "q"), GROUP, "0-1"))
    # nobody touches another queue
    other = key("roles2", 0, "q")
    for client in (q.producer, q.consumer, q.observer):
        await denied(client.xlen(other))
    assert (await q.producer.fcall_ro("aq_version", 0)).decode() == functions.LIBRARY_VERSION


async def test_idempotent_send(make_queue: MakeQueue) -> None:
    q = await make_queue("payments", partitions=2, idempotency={"ttl": "1h"})
    where = partition_of("order-1", q.partitions)
    first, dup1 = await send(q, b'{"amount":5}', partition=where, idem="order-1")
    again, dup2 = await send(q, b'{"amount":6}', partition=where, idem="order-1")
    assert (dup1, dup2) == (0, 1) and again == first
    assert await q.observer.xlen(q.k(where, "q")) == 1
    [(_, fields)] = await q.observer.xrange(q.k(where, "q"))
    assert fields == {b"d": b'{"amount":5}', b"k": b"order-1"}
    assert await q.producer.get(q.k(where, "idem:order-1")) == first
    assert 0 < await q.admin.pttl(q.k(where, "idem:order-1")) <= 3_600_000
    # Remembered per partition: the same key sent elsewhere is not recognised.
    _, dup3 = await send(q, b'{"amount":5}', partition=1 - where, idem="order-1")
    assert dup3 == 0
    with pytest.raises(ResponseError, match="ttl_ms must be a positive integer"):
        await fcall(q.producer, "aq_enqueue", [q.k(where, "q"), q.k(where, "idem:x")],
                    0, "d", "x")


async def test_nack_retry_promotion_and_redelivery(make_queue: MakeQueue) -> None:
    q = await make_queue("flaky")  # maxDeliveries 3, backoff 300 ms doubling, no jitter
    payload = b"\x00\xff binary \x01 payload \xc3\x28"
    headers = {"who": "conformance"}
    await send(q, payload, idem="job-1", headers=headers)
    [first] = await admit(q, await read(q))
    assert first.deliveries == 1

    start = now_ms()
    assert await nack(q, first, "c1", "downstream 503") == 1
    assert await pending(q) == 0
    [(member, due)] = await q.consumer.execute_command("ZRANGE", q.k(0, "retry"), 0, -1,
                                                      "WITHSCORES")
    assert start + 300 <= int(due) <= now_ms() + 300
    assert await q.observer.hget(q.k(0, "stats"), "retries") == b"1"
    assert await nack(q, first, "c1", "again") == 0  # not pending any more: nothing
    assert await q.observer.zcard(q.k(0, "retry")) == 1

    assert await promote(q) == 0  # not due yet
    assert await until(lambda: promote(q)) == 1
    assert await q.observer.zcard(q.k(0, "retry")) == 0
    [second] = await admit(q, await read(q))
    assert second.id != first.id
    assert second.fields[b"d"] == payload
    assert second.fields[b"k"] == b"job-1"
    assert json.loads(second.fields[b"h"]) == headers
    assert (second.fields[b"a"], second.fields[b"e"]) == (b"1", b"downstream 503")
    assert set(second.fields) == {b"d", b"k", b"h", b"a", b"e"}
    assert second.deliveries == 2

    start = now_ms()
    assert await nack(q, second, "c1", "still 503") == 1
    [(_, due)] = await q.consumer.execute_command("ZRANGE", q.k(0, "retry"), 0, -1,
                                                  "WITHSCORES")
    assert int(due) >= start + 600  # the second retry waits twice as long
    assert await promote(q) == 0
    assert await until(lambda: promote(q)) == 1
    [third] = await admit(q, await read(q))
    assert third.deliveries == 3 and third.fields[b"a"] == b"2"
    # The last allowed delivery fails: dead-lettered, not retried.
    assert await nack(q, third, "c1", "gave up") == 1
    assert await q.observer.zcard(q.k(0, "retry")) == 0
    [letter] = await dead_letters(q)
    assert letter[b"d"] == payload and letter[b"a"] == b"2"
    assert letter[b"x.deliveries"] == b"3"
    assert letter[b"x.error"] == b"exhausted 3 deliveries; last error: gave up"
    assert await q.observer.hget(q.k(0, "stats"), "retries") == b"2"


async def test_dead_letter_with_reason(make_queue: MakeQueue) -> None:
    q = await make_queue("letters")
    entry_id, _ = await send(q, b'{"n":1}', idem="n-1", headers={"a": "b"})
    [entry] = await read(q, consumer="pod-7")
    before = now_ms()
    assert await deadletter(q, entry, "pod-7", "cannot summarise: empty document") == 1
    assert await pending(q) == 0
    [letter] = await dead_letters(q)
    assert letter[b"d"] == b'{"n":1}' and letter[b"k"] == b"n-1"
    assert letter[b"h"] == b'{"a":"b"}'
    assert letter[b"x.id"] == entry_id
    assert letter[b"x.group"] == GROUP.encode()
    assert letter[b"x.consumer"] == b"pod-7"
    assert letter[b"x.error"] == b"cannot summarise: empty document"
    assert letter[b"x.deliveries"] == b"1"
    assert before <= int(letter[b"x.time"]) <= now_ms()
    assert await deadletter(q, entry, "pod-7", "twice") == 0  # not pending: nothing
    assert len(await dead_letters(q)) == 1


async def test_a_malformed_entry_is_stored_and_dead_lettered_by_the_consumer(
        make_queue: MakeQueue) -> None:
    """The server stores any fields (section 10); the consumer's admission (6.1)
    dead-letters what is not an envelope, with ``malformed entry: <why>``."""
    q = await make_queue("messy")
    await send(q, b"ok", extra={"zz": "unknown"})
    await fcall(q.producer, "aq_enqueue", [q.k(0, "q")], 1000, "k", "no-payload")
    await send(q, b"forged", extra={"x.error": "forged"})
    await send(q, b"bad attempt", extra={"a": "-1"})
    await send(q, b"fine")
    entries = await read(q)
    assert len(entries) == 5  # Redis took them all
    [good] = await admit(q, entries)
    assert good.fields == {b"d": b"fine"}
    letters = await dead_letters(q)
    reasons = [letter[b"x.error"].decode() for letter in letters]
    assert reasons == ["malformed entry: unknown field 'zz'",
                       "malformed entry: missing payload field 'd'",
                       "malformed entry: reserved dead-letter field 'x.error' in a live entry",
                       "malformed entry: field 'a' is not a small non-negative integer"]
    assert letters[0][b"zz"] == b"unknown"  # every field is kept for inspection
    assert letters[2][b"d"] == b"forged"    # the forged x.* field was replaced
    assert await pending(q) == 1


async def test_claim_after_the_visibility_timeout(make_queue: MakeQueue) -> None:
    q = await make_queue("slow", visibility_ms=600)
    entry_id, _ = await send(q, b"long job")
    [held] = await read(q, consumer="c1")
    assert await claim(q, "c2") == []  # not expired: nobody may take it

    # c1 keeps it with a heartbeat: XPENDING (still mine?), then XCLAIM 0 JUSTID.
    await asyncio.sleep(0.3)
    assert await times_delivered(q, 0, entry_id, "c1") == 1
    assert await q.consumer.xclaim(q.k(0, "q"), GROUP, "c1", 0, [entry_id],
                                   justid=True) == [entry_id]
    await asyncio.sleep(0.3)
    assert await claim(q, "c2") == []  # 600 ms after the read, 300 after the heartbeat
    assert await times_delivered(q, 0, entry_id, "c1") == 1  # heartbeats do not count

    # c1 hangs: after the timeout c2 claims it, one delivery more.
    await asyncio.sleep(0.7)
    [claimed] = await claim(q, "c2")
    assert (claimed.id, claimed.fields, claimed.deliveries) == (entry_id, held.fields, 2)
    assert await times_delivered(q, 0, entry_id, "c1") is None  # c1 can tell it lost it
    assert await q.consumer.xack(q.k(0, "q"), GROUP, claimed.id) == 1

    # Handing back at shutdown: XCLAIM 0 IDLE <visibility> JUSTID; claimable at once.
    await send(q, b"prefetched")
    [unstarted] = await read(q, consumer="c1")
    await q.consumer.xclaim(q.k(0, "q"), GROUP, "c1", 0, [unstarted.id], idle=600,
                            justid=True)
    [taken] = await claim(q, "c2")
    assert taken.id == unstarted.id and taken.deliveries == 2


async def test_the_consumer_dead_letters_past_max_deliveries(make_queue: MakeQueue) -> None:
    """Section 6.1: deliveries = times delivered + a, against the group's own limit."""
    q = await make_queue("poison", visibility_ms=100, group_max_deliveries=2,
                         delivery={"maxDeliveries": 5})
    entry_id, _ = await send(q, b"kills every consumer")
    [first] = await admit(q, await read(q, consumer="c1"))
    assert first.deliveries == 1
    await asyncio.sleep(0.15)
    [second] = await admit(q, await claim(q, "c2"))
    assert second.deliveries == 2
    await asyncio.sleep(0.15)
    third = await claim(q, "c3")
    assert third[0].deliveries == 3
    assert await admit(q, third, consumer="c3") == []
    [letter] = await dead_letters(q)
    assert letter[b"x.id"] == entry_id and letter[b"x.deliveries"] == b"3"
    assert letter[b"x.error"] == b"exceeded maxDeliveries (3 > 2)"
    assert letter[b"x.consumer"] == b"c3"
    assert await pending(q) == 0


async def test_the_operators_sweep_dead_letters_an_expired_exhausted_entry(
        make_queue: MakeQueue) -> None:
    """Section 6.6, what the operator does: an entry left idle past the timeout with
    times delivered + a >= maxDeliveries goes to the dead-letter stream."""
    q = await make_queue("abandoned", visibility_ms=300, group_max_deliveries=2)
    entry_id, _ = await send(q, b"x")
    await read(q, consumer="c1")
    await asyncio.sleep(0.35)
    await claim(q, "c2")  # 2 deliveries; c2 dies too
    parts = keys.partition_keys(NS, q.name, q.partitions)
    early = await operator_groups.reclaim(q.admin, parts, GROUP, 300, 2)
    assert early.dead_lettered == 0  # not idle long enough yet
    await asyncio.sleep(0.35)
    swept = await operator_groups.reclaim(q.admin, parts, GROUP, 300, 2)
    assert swept.dead_lettered == 1
    [letter] = await dead_letters(q)
    assert letter[b"x.id"] == entry_id and letter[b"x.consumer"] == b"c2"
    assert letter[b"x.error"] == operator_groups.TIMEOUT_ERROR.encode()
    assert letter[b"x.error"] == b"aq: not acknowledged within the visibility timeout"
    assert await pending(q) == 0


async def test_a_message_delivered_more_than_max_deliveries_is_dead_lettered(
        make_queue: MakeQueue) -> None:
    """Section 10: Redis hands an entry out on every claim whatever its count, so one
    delivery beyond ``maxDeliveries`` cannot be prevented; the operator's next sweep
    (every half visibility timeout) dead-letters it, however recently it was claimed."""
    q = await make_queue("sticky", visibility_ms=300, group_max_deliveries=2)
    await send(q, b"poison")
    parts = keys.partition_keys(NS, q.name, q.partitions)
    counts = [entry.deliveries for entry in await read(q, consumer="c1")]
    for _ in range(3):
        await asyncio.sleep(0.35)
        # A careless consumer: claims as soon as the entry expired, never acks, never
        # looks at the count.
        counts += [entry.deliveries for entry in await claim(q, "c1")]
        # The operator sweeps every half timeout; with the consumer this quick, every
        # sweep finds the entry freshly claimed.
        await asyncio.sleep(0.05)
        await operator_groups.reclaim(q.admin, parts, GROUP, 300, 2)
    assert counts == [1, 2, 3], counts  # one delivery over the limit, then no more
    assert await pending(q) == 0
    [letter] = await dead_letters(q)
    assert letter[b"x.error"] == b"aq: exceeded maxDeliveries (3 > 2)"
    assert letter[b"x.deliveries"] == b"3"


async def test_the_pause_flag_is_read_by_consumers(make_queue: MakeQueue) -> None:
    """Section 6.7: the consumer role reads ``paused:<group>``; Redis does not refuse
    reads meanwhile (the pause is cooperative)."""
    q = await make_queue("pausable", partitions=2)
    parts = keys.partition_keys(NS, q.name, q.partitions)
    record = json.dumps({"reason": "maintenance", "at": "2026-12-07T12:00:00Z"})
    await write_group_meta(q.admin, parts, {f"paused:{GROUP}": record}, [])
    flag = await q.consumer.hget(q.k(0, "meta"), f"paused:{GROUP}")
    assert flag is not None and json.loads(flag)["reason"] == "maintenance"
    await send(q, b"while paused")
    assert len(await read(q)) == 1  # a consumer that ignores the flag still gets work
    await write_group_meta(q.admin, parts, {}, [f"paused:{GROUP}"])
    assert await q.consumer.hget(q.k(0, "meta"), f"paused:{GROUP}") is None


# --- List queues ---------------------------------------------------------------------------------

async def list_send(q: Queue, payload: bytes, *, priority: int = 0, partition: int = 0,
                    idem: str | None = None, headers: Mapping[str, str] | None = None
                    ) -> str:
    """Section 5.2: LPUSH onto the level's key; with an idempotency key, WATCH/MULTI."""
    level_key = q.k(partition, "q" if priority == 0 else f"q:{priority}")
    message_id = new_message_id()
    el = element(message_id, payload, k=idem, h=dict(headers) if headers else None,
                 p=priority or None)
    if idem is None:
        await q.producer.lpush(level_key, el)
        return message_id
    meta = await q.meta(q.producer)
    idem_key = q.k(partition, f"idem:{idem}")
    async with q.producer.pipeline(transaction=True) as pipe:
        while True:
            try:
                await pipe.watch(idem_key)
                existing = await pipe.get(idem_key)
                if existing is not None:
                    return str(existing.decode())
                pipe.multi()
                pipe.set(idem_key, message_id, px=int(meta[b"idempotencyTtlMs"]))
                pipe.lpush(level_key, el)
                await pipe.execute()
                return message_id
            except WatchError:
                continue


async def list_read(q: Queue, consumer: str, partition: int = 0) -> bytes | None:
    """Section 7: LMOVE from the most urgent non-empty level into the processing list,
    with a heartbeat."""
    meta = await q.meta()
    proc = q.k(partition, f"proc:{consumer}")
    await q.consumer.zadd(q.k(partition, "proc:#consumers"), {consumer: now_ms()})
    for level in range(int(meta[b"priorityLevels"])):
        level_key = q.k(partition, "q" if level == 0 else f"q:{level}")
        raw = await q.consumer.lmove(level_key, proc, "RIGHT", "LEFT")
        if raw is not None:
            await q.consumer.hincrby(q.k(partition, "stats"), "deliveries", 1)
            return bytes(raw)
    return None


async def list_settle(q: Queue, consumer: str, raw: bytes,
                      then: Callable[[Any], None], partition: int = 0) -> bool:
    """Section 7: WATCH the processing list, LPOS, MULTI, LREM + ``then``, EXEC."""
    proc = q.k(partition, f"proc:{consumer}")
    async with q.consumer.pipeline(transaction=True) as pipe:
        while True:
            try:
                await pipe.watch(proc)
                if await pipe.lpos(proc, raw) is None:
                    return False
                pipe.multi()
                pipe.lrem(proc, 1, raw)
                then(pipe)
                await pipe.execute()
                return True
            except WatchError:
                continue


async def test_list_send_receive_priority_order_and_ack(make_queue: MakeQueue) -> None:
    q = await make_queue("tickets", queue_type="List", priorityLevels=3)
    sent = [await list_send(q, b'"first"'), await list_send(q, b'"low"', priority=2),
            await list_send(q, b'"mid"', priority=1), await list_send(q, b'"second"'),
            await list_send(q, b"\xff\x00 binary", headers={"t": "1"})]
    await denied(q.producer.lrange(q.k(0, "q"), 0, -1))  # producers only write
    got = []
    while (raw := await list_read(q, "agent-1")) is not None:
        got.append(raw)
    decoded = [read_element(raw) for raw in got]
    assert [d["payload"] for d in decoded] == [b'"first"', b'"second"', b"\xff\x00 binary",
                                               b'"mid"', b'"low"']
    assert [d["i"] for d in decoded] == [sent[0], sent[3], sent[4], sent[2], sent[1]]
    assert [d.get("p", 0) for d in decoded] == [0, 0, 0, 1, 2]
    assert got[0].startswith(b'{"i":"')  # i first: the operator reads the enqueue time
    assert "b" in decoded[2] and decoded[2]["h"] == {"t": "1"}
    proc = q.k(0, "proc:agent-1")
    assert await q.observer.llen(proc) == 5
    for raw in got:
        assert await q.consumer.lrem(proc, 1, raw) == 1  # ack: the exact bytes
    assert await q.observer.llen(proc) == 0
    assert await q.observer.hget(q.k(0, "stats"), "deliveries") == b"5"


async def test_list_idempotent_send(make_queue: MakeQueue) -> None:
    q = await make_queue("list-once", queue_type="List")
    first = await list_send(q, b'{"n":1}', idem="n-1")
    again = await list_send(q, b'{"n":2}', idem="n-1")
    assert again == first
    assert await q.observer.llen(q.k(0, "q")) == 1
    raw = await list_read(q, "agent-1")
    assert raw is not None and read_element(raw)["k"] == "n-1"


async def test_list_nack_promotion_and_dead_letter(make_queue: MakeQueue) -> None:
    q = await make_queue("list-flaky", queue_type="List", priorityLevels=2)
    message_id = await list_send(q, b'{"job":1}', priority=1, idem="job-1")
    raw = await list_read(q, "agent-1")
    assert raw is not None
    msg = read_element(raw)
    deliveries = 1 + msg.get("a", 0)
    assert deliveries == 1
    due = now_ms() + backoff_ms(await q.meta(), deliveries)
    retried = element(msg["i"], msg["payload"], k=msg["k"], a=1, e="timeout", p=msg["p"])

    def schedule(pipe: Any) -> None:
        pipe.zadd(q.k(0, "retry"), {retried: due})
        pipe.hincrby(q.k(0, "stats"), "retries", 1)

    assert await list_settle(q, "agent-1", raw, schedule)
    assert not await list_settle(q, "agent-1", raw, schedule)  # not held any more
    assert await q.observer.llen(q.k(0, "proc:agent-1")) == 0
    assert await q.observer.zcard(q.k(0, "retry")) == 1

    async def promote_list() -> int:
        async with q.consumer.pipeline(transaction=True) as pipe:
            await pipe.watch(q.k(0, "retry"))
            due_now = await pipe.zrange(q.k(0, "retry"), "-inf", now_ms(), byscore=True,
                                        offset=0, num=100)
            if not due_now:
                return 0
            pipe.multi()
            pipe.zrem(q.k(0, "retry"), *due_now)
            for member in due_now:
                level = min(read_element(member).get("p", 0), 1)
                pipe.lpush(q.k(0, "q" if level == 0 else f"q:{level}"), member)
            await pipe.execute()
            return len(due_now)

    assert await promote_list() == 0
    assert await until(promote_list) == 1
    raw2 = await list_read(q, "agent-2")
    assert raw2 is not None
    again = read_element(raw2)
    assert (again["i"], again["a"], again["e"], again["p"]) == (message_id, 1, "timeout", 1)
    assert 1 + again["a"] == 2  # deliveries

    letter_fields = {"d": again["payload"], "k": again["k"], "a": "1", "e": "timeout",
                     "p": "1", "x.id": again["i"], "x.deliveries": "2", "x.group": GROUP,
                     "x.consumer": "agent-2", "x.error": "exhausted: invalid input",
                     "x.time": str(now_ms())}
    assert await list_settle(q, "agent-2", raw2,
                             lambda pipe: pipe.xadd(q.k(0, "dlq"), letter_fields))
    [letter] = await dead_letters(q)
    assert letter[b"d"] == b'{"job":1}' and letter[b"x.id"] == message_id.encode()
    assert await q.observer.llen(q.k(0, "proc:agent-2")) == 0
    assert await q.observer.hget(q.k(0, "stats"), "retries") == b"1"


async def test_list_recovery_of_a_dead_consumers_messages(make_queue: MakeQueue) -> None:
    q = await make_queue("list-crash", queue_type="List", visibility_ms=200)
    await list_send(q, b'"older"')
    await list_send(q, b'"newer"')
    lost = await list_read(q, "agent-1")  # agent-1 takes "older", then dies
    assert lost is not None
    await asyncio.sleep(0.25)
    meta = await q.meta()
    visibility = int(meta[f"visibilityMs:{GROUP}".encode()])
    heartbeats = q.k(0, "proc:#consumers")
    await q.consumer.zadd(heartbeats, {"agent-2": now_ms()})
    dead = await q.consumer.zrange(heartbeats, "-inf", f"({now_ms() - visibility}",
                                   byscore=True, offset=0, num=100)
    assert dead == [b"agent-1"]
    proc = q.k(0, "proc:agent-1")
    async with q.consumer.pipeline(transaction=True) as pipe:
        await pipe.watch(proc)
        held = await pipe.lrange(proc, -100, -1)
        pipe.multi()
        for raw in held:
            msg = read_element(raw)
            back = element(msg["i"], msg["payload"], a=msg.get("a", 0) + 1,
                           e="consumer agent-1 timed out (visibility timeout)")
            pipe.lrem(proc, 1, raw)
            pipe.rpush(q.k(0, "q"), back)  # the head: first in line again
        await pipe.execute()
    await q.consumer.zrem(heartbeats, "agent-1")
    raw = await list_read(q, "agent-2")
    assert raw is not None
    msg = read_element(raw)
    assert (msg["payload"], msg["a"]) == (b'"older"', 1)
    assert msg["e"] == "consumer agent-1 timed out (visibility timeout)"


# --- the Python SDK as the other party -----------------------------------------------------------

_SDK_CONSUMER = """
import asyncio, base64, json, sys
from agentqueue_client import Consumer

async def main():
    consumer = Consumer.from_env(group=sys.argv[1], consumer_name="sdk-1", block_ms=100,
                                 promote_interval=0.05)
    out = []
    async with consumer:
        while len(out) < int(sys.argv[2]):
            msg = await asyncio.wait_for(consumer.next_message(), 10)
            out.append({"body": base64.b64encode(msg.body).decode(), "headers": dict(msg.headers),
                        "key": msg.idempotency_key, "attempt": msg.attempt,
                        "deliveries": msg.deliveries, "priority": msg.priority})
            await msg.ack()
        await consumer.flush_acks()
    print(json.dumps(out))

asyncio.run(main())
"""

_SDK_PRODUCER = """
import asyncio, json, sys
from agentqueue_client import Outgoing, Producer

async def main():
    async with Producer.from_env() as producer:
        priority = 1 if sys.argv[1] == "List" else None
        ids = await producer.send_many([
            Outgoing({"n": 1}, key="customer-7", headers={"t": "1"}, priority=priority),
            Outgoing({"n": 2}, idempotency_key="order-9"),
            Outgoing(b"\\xff\\x00raw", idempotency_key="order-10"),
        ])
    print(json.dumps(ids))

asyncio.run(main())
"""


async def run_sdk(q: Queue, role: str, script: str, *args: str) -> Any:
    username, password = q.credentials[role]
    env = dict(os.environ)
    env.update({
        "REDIS_URL": q.url, "REDIS_USERNAME": username,
        "REDIS_PASSWORD": password, "AQ_NAMESPACE": NS, "AQ_QUEUE": q.name,
        "AQ_QUEUE_TYPE": q.type, "AQ_PARTITIONS": str(q.partitions), "AQ_ROLE": role,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "operator"), str(ROOT / "clients" / "python"), str(ROOT / "devtools"), str(ROOT)]),
    })
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, *args, env=env, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 0, err.decode()[-2000:]
    return json.loads(out)


SCHEMA = {"type": "object", "required": ["n"], "properties": {"n": {"type": "integer"}}}


@pytest.mark.parametrize("queue_type", ["Stream", "List"])
async def test_the_python_consumer_reads_what_this_document_sends(
        make_queue: MakeQueue, queue_type: str) -> None:
    """A malformed message and a schema violation from a foreign producer are taken by
    Redis and dead-lettered by the Python consumer with the documented reasons (section
    5.4, 6.1); a valid one reaches it intact."""
    q = await make_queue(f"interop-in-{queue_type.lower()}", queue_type=queue_type,
                         schema=SCHEMA)
    headers = {"traceparent": "00-" + "3" * 32 + "-" + "4" * 16 + "-01"}
    if queue_type == "Stream":
        await send(q, b'{"n":1}', extra={"zz": "1"})
        await send(q, b'{"n":"one"}')
        await send(q, b'{"n":1}', idem="n-1", headers=headers)
    else:
        await q.producer.lpush(q.k(0, "q"), b'{"d":"{\\"n\\":1}"}')  # no "i"
        await list_send(q, b'{"n":"one"}')
        await list_send(q, b'{"n":1}', idem="n-1", headers=headers)
    [got] = await run_sdk(q, "consumer", _SDK_CONSUMER, GROUP, "1")
    assert base64.b64decode(got["body"]) == b'{"n":1}'
    assert (got["headers"], got["key"], got["attempt"], got["deliveries"]) == (
        headers, "n-1", 0, 1)
    reasons = sorted(letter[b"x.error"].decode() for letter in await dead_letters(q))
    assert len(reasons) == 2
    assert reasons[0].startswith("malformed entry: ")
    assert reasons[1].startswith("schema violation: ")
    assert all(letter[b"x.group"] == GROUP.encode() for letter in await dead_letters(q))
    if queue_type == "Stream":
        assert await pending(q) == 0
    else:
        assert await q.observer.llen(q.k(0, "proc:sdk-1")) == 0


@pytest.mark.parametrize("queue_type", ["Stream", "List"])
async def test_this_document_reads_what_the_python_producer_sends(
        make_queue: MakeQueue, queue_type: str) -> None:
    """The Python producer's envelope and partition choice are the documented ones."""
    extra = {"priorityLevels": 2} if queue_type == "List" else {}
    q = await make_queue(f"interop-out-{queue_type.lower()}", queue_type=queue_type,
                         partitions=4, **extra)
    ids = await run_sdk(q, "producer", _SDK_PRODUCER, queue_type)
    where = [partition_of("customer-7", 4), partition_of("order-9", 4),
             partition_of("order-10", 4)]
    if queue_type == "Stream":
        # Entry ids are per stream: two partitions may hold the same id.
        found: dict[tuple[int, str], dict[bytes, bytes]] = {}
        for p in range(4):
            for entry_id, fields in await q.observer.xrange(q.k(p, "q")):
                assert stream_problem(fields) is None
                found[(p, entry_id.decode())] = fields
        assert len(found) == 3
        assert found[(where[0], ids[0])] == {b"d": b'{"n":1}', b"h": b'{"t":"1"}'}
        assert found[(where[1], ids[1])] == {b"d": b'{"n":2}', b"k": b"order-9"}
        assert found[(where[2], ids[2])] == {b"d": b"\xff\x00raw", b"k": b"order-10"}
        assert await q.admin.get(q.k(where[1], "idem:order-9")) == ids[1]
    else:
        elements: dict[str, tuple[int, int, dict[str, Any], bytes]] = {}
        for p in range(4):
            for level in range(2):
                for raw in await q.observer.lrange(q.k(p, "q" if level == 0 else "q:1"),
                                                   0, -1):
                    msg = read_element(raw)
                    elements[msg["i"]] = (p, level, msg, raw)
        assert [elements[i][0] for i in ids] == where
        p0, level0, first, raw0 = elements[ids[0]]
        assert level0 == 1 and first["p"] == 1 and first["h"] == {"t": "1"}
        assert raw0.startswith(b'{"i":"') and first["payload"] == b'{"n":1}'
        assert elements[ids[1]][2]["k"] == "order-9"
        third = elements[ids[2]][2]
        assert "b" in third and third["payload"] == b"\xff\x00raw"
        assert ids[0].split("-")[0].isdigit()  # <Unix ms>-<hex>


# --- the operator's sweep of List queues (guarantees whatever the consumers do) ------------

def list_queue(q: Queue, *, visibility_ms: int, max_deliveries: int,
               dead_letter: bool = True, levels: int = 1) -> list_sweep.ListQueue:
    return list_sweep.ListQueue(keys.partition_keys(NS, q.name, q.partitions), GROUP, levels,
                                visibility_ms, max_deliveries, dead_letter)


async def test_the_operators_list_sweep_recovers_a_dead_consumers_messages(
        make_queue: MakeQueue) -> None:
    """A foreign consumer that never recovers anyone: its crashed peer's messages come back
    at the head of the queue (``a`` + 1), through the operator's sweep alone."""
    q = await make_queue("list-swept", queue_type="List", visibility_ms=200)
    for body in (b'"older"', b'"newer"', b'"third"'):
        await list_send(q, body)
    taken = [await list_read(q, "agent-1"), await list_read(q, "agent-1")]
    assert None not in taken
    await q.consumer.zadd(q.k(0, "proc:#consumers"), {"agent-2": now_ms() + 60_000})
    spec = list_queue(q, visibility_ms=200, max_deliveries=3)
    early = await list_sweep.sweep(q.admin, spec, now_ms())
    assert (early.recovered, early.dead_lettered) == (0, 0)  # agent-1 is not late yet
    await asyncio.sleep(0.25)
    swept = await list_sweep.sweep(q.admin, spec, now_ms())
    assert (swept.recovered, swept.dead_lettered, swept.promoted) == (2, 0, 0)
    assert await q.observer.llen(q.k(0, "proc:agent-1")) == 0
    assert await q.observer.zrange(q.k(0, "proc:#consumers"), 0, -1) == [b"agent-2"]
    got = [read_element(raw) for raw in [await list_read(q, "agent-2") for _ in range(3)]
           if raw is not None]
    assert [(m["payload"], m.get("a", 0)) for m in got] == [
        (b'"older"', 1), (b'"newer"', 1), (b'"third"', 0)]  # first in line again, in order
    assert got[0]["e"] == "consumer agent-1 timed out (visibility timeout)"
    again = await list_sweep.sweep(q.admin, spec, now_ms())
    assert (again.recovered, again.dead_lettered) == (0, 0)  # agent-2 is alive


async def test_a_list_message_that_kills_every_consumer_reaches_the_dead_letter_queue(
        make_queue: MakeQueue) -> None:
    """Consumers that crash on a message and never check the count: after
    ``maxDeliveries`` deliveries the operator's sweep dead-letters it, with the reason."""
    q = await make_queue("list-poison", queue_type="List", visibility_ms=100)
    message_id = await list_send(q, b'{"poison":true}')
    spec = list_queue(q, visibility_ms=100, max_deliveries=2)
    outcomes = []
    for n in range(1, 4):
        raw = await list_read(q, f"agent-{n}")
        if raw is None:
            break
        outcomes.append(1 + read_element(raw).get("a", 0))
        await asyncio.sleep(0.15)  # agent-n died holding it
        result = await list_sweep.sweep(q.admin, spec, now_ms())
        assert result.recovered + result.dead_lettered == 1
    assert outcomes == [1, 2]  # never a third delivery
    [letter] = await dead_letters(q)
    assert letter[b"x.id"] == message_id.encode() and letter[b"x.deliveries"] == b"2"
    assert letter[b"x.error"] == b"aq: not acknowledged within the visibility timeout"
    assert (letter[b"x.group"], letter[b"x.consumer"]) == (GROUP.encode(), b"agent-2")
    assert letter[b"d"] == b'{"poison":true}'
    assert await q.observer.llen(q.k(0, "q")) == 0


async def test_the_operator_promotes_list_retries_and_dead_letters_past_the_limit(
        make_queue: MakeQueue) -> None:
    """Retries come back without any consumer promoting; a retry whose next delivery
    would be over ``maxDeliveries`` goes to the dead-letter queue instead."""
    q = await make_queue("list-retries", queue_type="List", priorityLevels=2)
    retry = q.k(0, "retry")
    due, later = now_ms() - 1, now_ms() + 60_000
    await q.consumer.zadd(retry, {
        element("m-ok", b'"again"', a=1, e="flaky", p=1): due,
        element("m-out", b'"done"', a=3, e="flaky"): due,
        element("m-later", b'"wait"', a=1): later,
        b"not an envelope": due,
    })
    await q.consumer.lpush(q.k(0, "q:1"), element("m-first", b'"queued"', p=1))
    result = await list_sweep.sweep(q.admin, list_queue(q, visibility_ms=30_000,
                                                       max_deliveries=3, levels=2), now_ms())
    assert (result.promoted, result.dead_lettered) == (2, 1)
    assert await q.observer.zrange(retry, 0, -1) == [element("m-later", b'"wait"', a=1)]
    level1 = [read_element(raw)["i"] for raw in await q.observer.lrange(q.k(0, "q:1"), 0, -1)]
    assert level1 == ["m-ok", "m-first"]  # the tail (LPUSH): behind what was queued
    assert await q.observer.lrange(q.k(0, "q"), 0, -1) == [b"not an envelope"]  # the reader
    [letter] = await dead_letters(q)                                              # decides
    assert letter[b"x.id"] == b"m-out" and letter[b"x.deliveries"] == b"4"
    assert letter[b"x.error"] == b"aq: exceeded maxDeliveries (4 > 3)"
    assert letter[b"x.consumer"] == list_sweep.SWEEPER.encode()


async def test_the_list_sweep_is_bounded_and_goes_on_next_time(
        make_queue: MakeQueue, monkeypatch: pytest.MonkeyPatch) -> None:
    """A long processing list is recovered a bounded number of elements per sweep; its
    owner stays known as dead until the list is empty, so nothing is left behind."""
    monkeypatch.setattr(list_sweep, "RECOVER_BATCH", 2)
    monkeypatch.setattr(list_sweep, "RECOVER_BATCHES", 2)
    q = await make_queue("list-long", queue_type="List", visibility_ms=100)
    for n in range(5):
        await list_send(q, json.dumps(n).encode())
    while await list_read(q, "agent-1") is not None:
        pass
    await asyncio.sleep(0.15)
    spec = list_queue(q, visibility_ms=100, max_deliveries=3)
    first = await list_sweep.sweep(q.admin, spec, now_ms())
    assert first.recovered == 4 and await q.observer.llen(q.k(0, "proc:agent-1")) == 1
    assert await q.observer.zrange(q.k(0, "proc:#consumers"), 0, -1) == [b"agent-1"]
    second = await list_sweep.sweep(q.admin, spec, now_ms())
    assert second.recovered == 1
    assert await q.observer.zrange(q.k(0, "proc:#consumers"), 0, -1) == []
    back = [read_element(raw)["payload"] for raw in await q.observer.lrange(q.k(0, "q"), 0, -1)]
    assert sorted(back) == [b"0", b"1", b"2", b"3", b"4"]  # all back, none twice


async def test_a_malformed_element_of_a_dead_consumer_is_dead_lettered_or_dropped(
        make_queue: MakeQueue) -> None:
    q = await make_queue("list-junk", queue_type="List", visibility_ms=100)
    await q.consumer.lpush(q.k(0, "proc:agent-1"), b"\x00junk", element("m-1", b'"x"', a=2))
    await q.consumer.zadd(q.k(0, "proc:#consumers"), {"agent-1": now_ms() - 1000})
    off = await list_sweep.sweep(q.admin, list_queue(q, visibility_ms=100, max_deliveries=3,
                                                     dead_letter=False), now_ms())
    assert (off.recovered, off.dead_lettered) == (0, 2)  # dropped, as the consumers do
    assert await dead_letters(q) == [] and await q.observer.llen(q.k(0, "q")) == 0
    await q.consumer.lpush(q.k(0, "proc:agent-1"), b"\x00junk")
    await q.consumer.zadd(q.k(0, "proc:#consumers"), {"agent-1": now_ms() - 1000})
    on = await list_sweep.sweep(q.admin, list_queue(q, visibility_ms=100, max_deliveries=3),
                                now_ms())
    assert on.dead_lettered == 1
    [letter] = await dead_letters(q)
    assert letter[b"d"] == b"\x00junk"
    assert letter[b"x.error"].startswith(b"malformed entry: ")
