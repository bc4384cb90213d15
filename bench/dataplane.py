"""Data plane: SDK produce (single, batched) and consume+ack vs raw redis-py and peers.

Everything runs against one throwaway loopback redis-server, one client process; on a
2-core machine Redis gets one core and the Python process the other.

- SDK: `agentqueue_client.Producer` / `Consumer` (asyncio) on a one-partition Stream
  queue provisioned as the operator would (Functions library loaded, metadata hash
  written, consumer group created). Payloads are small dicts (JSON-encoded by the SDK).
- Ceiling: redis.asyncio (the SDK's client) sending exactly the SDK's Redis commands with
  the same pipelining — FCALL aq_enqueue one per round trip (single) or 100 per pipeline
  (batched); XREADGROUP COUNT 100 with the previous batch's XACK in the same pipeline —
  with the payload bytes encoded in advance. Raw and SDK runs alternate (5 pairs), and
  the ratio is the median of the per-pair ratios, so machine noise hits both alike.
  Goal: SDK >= 60% of it.
- Reference: the sync client pipelining plain XADD / XREADGROUP+XACK (the fastest way
  to move entries from Python, no Functions): context for the ceiling.
- Peers: taskiq-redis (Redis Streams, ack after run) and RQ on the same Redis, no-op
  jobs. Goal: SDK consume+ack >= 3x the peer's processing rate.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import redis

from . import peers
from .common import (
    BenchRedis,
    MissingPrerequisite,
    Row,
    fmt_rate,
    fmt_ratio,
    log,
    main,
    median,
    met,
    skipped,
)

NAME = "dataplane"
NAMESPACE, QUEUE, GROUP = "bench", "jobs", "workers"
BATCH = 100
IDEM_TTL_MS = 24 * 3600 * 1000
SDK_GOAL = 0.60
PEER_GOAL = 3.0


@dataclass(frozen=True)
class Sizes:
    single: int
    batched: int
    consume: int
    taskiq: int
    rq: int
    repeat: int


QUICK = Sizes(single=300, batched=2_000, consume=2_000, taskiq=300, rq=10, repeat=1)
FULL = Sizes(single=5_000, batched=50_000, consume=50_000, taskiq=10_000, rq=500, repeat=5)


def payload(i: int) -> dict[str, Any]:
    return {"task": "noop", "i": i}


def payload_bytes(i: int) -> bytes:
    return json.dumps(payload(i), separators=(",", ":")).encode()


def keys() -> Any:
    from agentqueue_client.keys import PartitionKeys

    return PartitionKeys(NAMESPACE, QUEUE, 0)


def provision(server: BenchRedis) -> None:
    """What the operator does for a one-partition Stream queue with one group."""
    from agentqueue.redisgw.functions import LIBRARY_CODE

    part = keys()
    c = server.client()
    try:
        c.function_load(LIBRARY_CODE, replace=True)
        c.hset(part.meta, mapping={
            "type": "Stream", "partitions": "1", "maxDeliveries": "5",
            "retryInitialMs": "1000", "retryMaxMs": "300000", "retryMultiplier": "2",
            "retryJitter": "1", "deadLetter": "1", "idempotency": "1",
            "idempotencyTtlMs": str(IDEM_TTL_MS), "priorityLevels": "1", "generation": "1",
            f"visibilityMs:{GROUP}": "30000"})
        c.xgroup_create(part.queue_key, GROUP, id="0", mkstream=True)
    finally:
        c.close()


def reset(server: BenchRedis) -> None:
    server.flush()
    provision(server)


def pending(server: BenchRedis) -> int:
    c = server.client()
    try:
        return int(c.xpending(keys().queue_key, GROUP)["pending"])
    finally:
        c.close()


def stream_len(server: BenchRedis) -> int:
    c = server.client()
    try:
        return int(c.xlen(keys().queue_key))
    finally:
        c.close()


# --- raw asyncio: the SDK's commands, nothing else -------------------------------------------

async def raw_produce(server: BenchRedis, n: int, batch: int, idem: bool) -> float:
    part = keys()
    bodies = [payload_bytes(i) for i in range(n)]
    client = server.aclient()
    try:
        await client.ping()
        start = time.perf_counter()
        if batch == 1 and not idem:
            for body in bodies:
                await client.fcall("aq_enqueue", 1, part.queue_key, IDEM_TTL_MS, "d", body)
        else:
            for lo in range(0, n, batch):
                async with client.pipeline(transaction=False) as pipe:
                    for i in range(lo, min(n, lo + batch)):
                        if idem:
                            k = f"job-{i}"
                            pipe.fcall("aq_enqueue", 2, part.queue_key, part.idempotency(k),
                                       IDEM_TTL_MS, "d", bodies[i], "k", k)
                        else:
                            pipe.fcall("aq_enqueue", 1, part.queue_key, IDEM_TTL_MS, "d",
                                       bodies[i])
                    await pipe.execute()
        return n / (time.perf_counter() - start)
    finally:
        await client.aclose()


async def raw_consume(server: BenchRedis, n: int) -> float:
    key = keys().queue_key
    client = server.aclient()
    try:
        await client.ping()
        start = time.perf_counter()
        done = 0
        prev: list[bytes] = []
        while done < n:
            async with client.pipeline(transaction=False) as pipe:
                if prev:
                    pipe.xack(key, GROUP, *prev)
                pipe.xreadgroup(GROUP, "raw", {key: ">"}, count=BATCH, block=1)
                out = await pipe.execute()
            entries = out[-1][0][1] if out[-1] else []
            prev = [entry_id for entry_id, _ in entries]
            done += len(prev)
        if prev:
            await client.xack(key, GROUP, *prev)
        return n / (time.perf_counter() - start)
    finally:
        await client.aclose()


# --- the SDK -------------------------------------------------------------------------------------

def sdk_config(server: BenchRedis) -> Any:
    from agentqueue_client.config import ClientConfig

    return ClientConfig(url=server.url, namespace=NAMESPACE, queue=QUEUE)


async def sdk_produce(server: BenchRedis, n: int, batch: int, idem: bool) -> float:
    from agentqueue_client.producer import Outgoing, Producer

    async with Producer(sdk_config(server)) as producer:
        await producer.queue_meta(refresh=True)  # connect + read metadata before timing
        start = time.perf_counter()
        if batch == 1 and not idem:
            for i in range(n):
                await producer.send(payload(i))
        else:
            for lo in range(0, n, batch):
                await producer.send_many(
                    [Outgoing(payload(i), idempotency_key=f"job-{i}" if idem else None)
                     for i in range(lo, min(n, lo + batch))])
        return n / (time.perf_counter() - start)


async def sdk_consume(server: BenchRedis, n: int) -> float:
    from agentqueue_client.consumer import Consumer

    consumer = Consumer(sdk_config(server), group=GROUP, consumer_name="sdk",
                        batch_size=BATCH)
    await consumer.start()
    start = time.perf_counter()
    done = 0
    try:
        async for msg in consumer:
            await msg.ack()
            done += 1
            if done >= n:
                break
    finally:
        await consumer.close()  # flushes the deferred acks
    elapsed = time.perf_counter() - start
    if done < n:
        raise RuntimeError(f"SDK consumer stopped after {done} of {n} messages")
    return n / elapsed


# --- sync reference (plain XADD, no Functions) -----------------------------------------------

def sync_xadd(server: BenchRedis, n: int) -> float:
    key = keys().queue_key
    bodies = [payload_bytes(i) for i in range(n)]
    c = server.client()
    try:
        c.ping()
        start = time.perf_counter()
        for lo in range(0, n, BATCH):
            pipe = c.pipeline(transaction=False)
            for i in range(lo, min(n, lo + BATCH)):
                pipe.xadd(key, {"d": bodies[i]})
            pipe.execute()
        return n / (time.perf_counter() - start)
    finally:
        c.close()


def sync_consume(server: BenchRedis, n: int) -> float:
    key = keys().queue_key
    c: redis.Redis = server.client()
    try:
        c.ping()
        start = time.perf_counter()
        done = 0
        prev: list[bytes] = []
        while done < n:
            pipe = c.pipeline(transaction=False)
            if prev:
                pipe.xack(key, GROUP, *prev)
            pipe.xreadgroup(GROUP, "sync", {key: ">"}, count=BATCH, block=1)
            out = pipe.execute()
            entries = out[-1][0][1] if out[-1] else []
            prev = [entry_id for entry_id, _ in entries]
            done += len(prev)
        if prev:
            c.xack(key, GROUP, *prev)
        return n / (time.perf_counter() - start)
    finally:
        c.close()


# --- measuring -----------------------------------------------------------------------------------

def fill(server: BenchRedis, n: int) -> None:
    """n entries as the SDK would write them (for the consume runs)."""
    from agentqueue_client.codec import Envelope, encode_fields, encode_payload

    key = keys().queue_key
    c = server.client()
    try:
        for lo in range(0, n, 1000):
            pipe = c.pipeline(transaction=False)
            for i in range(lo, min(n, lo + 1000)):
                fields: dict[Any, Any] = encode_fields(Envelope(body=encode_payload(payload(i))))
                pipe.xadd(key, fields)
            pipe.execute()
    finally:
        c.close()


def measure(server: BenchRedis, repeat: int, setup: Callable[[], None],
            fn: Callable[[], float], check: Callable[[], None] | None = None) -> float:
    rates = []
    for _ in range(repeat):
        setup()
        rates.append(fn())
        if check is not None:
            check()
    return median(rates)


def measure_pair(repeat: int, setup: Callable[[], None], raw: Callable[[], float],
                 sdk: Callable[[], float] | None,
                 check: Callable[[], None]) -> tuple[float, float | None, float | None]:
    """Raw and SDK runs interleaved (alternating which goes first), so both see the same
    machine noise; → (median raw rate, median SDK rate, median of the per-pair ratios)."""
    raws: list[float] = []
    sdks: list[float] = []
    ratios: list[float] = []
    for i in range(repeat):
        order = [("raw", raw), ("sdk", sdk)] if i % 2 == 0 else [("sdk", sdk), ("raw", raw)]
        got: dict[str, float] = {}
        for name, fn in order:
            if fn is None:
                continue
            setup()
            got[name] = fn()
            check()
        raws.append(got["raw"])
        if "sdk" in got:
            sdks.append(got["sdk"])
            ratios.append(got["sdk"] / got["raw"])
    if not sdks:
        return median(raws), None, None
    return median(raws), median(sdks), median(ratios)


def arun(fn: Callable[..., Coroutine[Any, Any, float]], *args: Any) -> Callable[[], float]:
    """A callable running ``fn(*args)`` in a fresh event loop."""
    return lambda: asyncio.run(fn(*args))


def sdk_available() -> str | None:
    try:
        from agentqueue_client.consumer import Consumer  # noqa: F401
        from agentqueue_client.producer import Producer  # noqa: F401
    except ImportError as exc:
        return f"agentqueue_client not importable ({exc})"
    return None


def run(quick: bool) -> list[Row]:
    s = QUICK if quick else FULL
    rows: list[Row] = []
    missing_sdk = sdk_available()
    with BenchRedis() as server:
        def reset_() -> None:
            reset(server)

        def filled(n: int) -> Callable[[], None]:
            def setup() -> None:
                reset(server)
                fill(server, n)
            return setup

        def all_acked() -> None:
            left = pending(server)
            if left:
                raise RuntimeError(f"{left} messages left pending")

        def length(n: int) -> Callable[[], None]:
            def check() -> None:
                got = stream_len(server)
                if got != n:
                    raise RuntimeError(f"stream holds {got} entries, expected {n}")
            return check

        produce_cases = [("produce, single (1 per call)", s.single, 1, False),
                         (f"produce, batched ({BATCH} per call)", s.batched, BATCH, False),
                         (f"produce, batched ({BATCH}), idempotency keys", s.batched // 2,
                          BATCH, True)]
        sdk_rates: dict[str, float] = {}
        goal = "SDK ≥ 60% of raw"
        for case, n, batch, idem in produce_cases:
            log(f"dataplane: {case}, {n} messages")
            raw, sdk, ratio = measure_pair(
                s.repeat, reset_, arun(raw_produce, server, n, batch, idem),
                None if missing_sdk else arun(sdk_produce, server, n, batch, idem), length(n))
            if sdk is None or ratio is None:
                rows.append(skipped(NAME, f"SDK {case}", missing_sdk or "", goal))
                continue
            sdk_rates[case] = sdk
            rows.append(Row(NAME, f"SDK {case} vs raw redis.asyncio, same commands",
                            fmt_rate(sdk), fmt_rate(raw), f"{ratio:.2f}×", goal,
                            met(ratio >= SDK_GOAL)))

        case = f"consume+ack (batches of {BATCH})"
        log(f"dataplane: {case}, {s.consume} messages")
        raw, sdk_consume_rate, ratio = measure_pair(
            s.repeat, filled(s.consume), arun(raw_consume, server, s.consume),
            None if missing_sdk else arun(sdk_consume, server, s.consume), all_acked)
        if sdk_consume_rate is None or ratio is None:
            rows.append(skipped(NAME, f"SDK {case}", missing_sdk or "", goal))
        else:
            rows.append(Row(NAME, f"SDK {case} vs raw redis.asyncio, same commands",
                            fmt_rate(sdk_consume_rate), fmt_rate(raw), f"{ratio:.2f}×", goal,
                            met(ratio >= SDK_GOAL)))

        log("dataplane: sync reference")
        ref_p = measure(server, s.repeat, reset_, lambda: sync_xadd(server, s.batched))
        ref_c = measure(server, s.repeat, filled(s.consume),
                        lambda: sync_consume(server, s.consume), all_acked)
        rows.append(Row(NAME, f"reference: sync redis-py, plain XADD pipelined ({BATCH})",
                        fmt_rate(ref_p), "", "", "", ""))
        rows.append(Row(NAME, f"reference: sync redis-py, XREADGROUP+XACK ({BATCH})",
                        fmt_rate(ref_c), "", "", "", ""))

        for runner, jobs in ((peers.taskiq, s.taskiq), (peers.rq, s.rq)):
            server.flush()
            log(f"dataplane: peer {runner.__name__}, {jobs} jobs")
            try:
                peer = runner(server, jobs)
            except MissingPrerequisite as exc:
                rows.append(skipped(NAME, f"peer {runner.__name__}", str(exc)))
                continue
            single = sdk_rates.get(produce_cases[0][0])
            rows.append(Row(NAME, f"SDK produce, single vs {peer.name} enqueue (1 per call)",
                            fmt_rate(single) if single else "n/a",
                            fmt_rate(peer.produce_per_s, "jobs/s"),
                            fmt_ratio(single, peer.produce_per_s) if single else "", "", ""))
            ok = (sdk_consume_rate >= PEER_GOAL * peer.process_per_s
                  if sdk_consume_rate is not None else None)
            rows.append(Row(NAME, f"SDK consume+ack vs {peer.name} processing no-op jobs "
                            f"({peer.guarantee})",
                            fmt_rate(sdk_consume_rate) if sdk_consume_rate else "n/a",
                            fmt_rate(peer.process_per_s, "jobs/s"),
                            fmt_ratio(sdk_consume_rate, peer.process_per_s)
                            if sdk_consume_rate else "", "≥ 3× peer", met(ok)))
    return rows


if __name__ == "__main__":
    sys.exit(main(NAME, run))
