"""Memory per message in Redis for a 1 KB payload: SDK envelope vs raw XADD.

Each case starts from an empty server, writes N messages and divides the growth of
INFO ``used_memory`` by N, so everything a message costs counts (the stream entry and,
with an idempotency key, the key that remembers it with its TTL).

- baseline: ``XADD <queue> * d <1 KB>`` — the smallest entry that carries the payload;
- SDK: `Producer.send_many` (batches of 100) of the same bytes: the default envelope,
  then with an idempotency key, then with a W3C ``traceparent`` header;
- peer (context): taskiq-redis kicking a task with the same 1 KB string argument.

Goal: the default SDK envelope <= 1.15x the raw entry.
"""

from __future__ import annotations

import asyncio
import random
import string
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from . import dataplane
from .common import BenchRedis, MissingPrerequisite, Row, fmt_bytes, log, main, met, skipped

NAME = "memory"
GOAL = 1.15
PAYLOAD_BYTES = 1024
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def one_kb() -> bytes:
    rng = random.Random(42)
    return "".join(rng.choices(string.ascii_letters + string.digits,
                               k=PAYLOAD_BYTES)).encode()


def used_memory(server: BenchRedis) -> int:
    c = server.client()
    try:
        return int(c.info("memory")["used_memory"])
    finally:
        c.close()


def per_message(server: BenchRedis, n: int, write: Callable[[], Coroutine[Any, Any, None]],
                setup: Callable[[], None]) -> float:
    server.flush()
    setup()
    before = used_memory(server)
    asyncio.run(write())
    return (used_memory(server) - before) / n


def run(quick: bool) -> list[Row]:
    n = 500 if quick else 20_000
    body = one_kb()
    rows: list[Row] = []
    part = dataplane.keys()

    with BenchRedis() as server:
        def provision() -> None:
            dataplane.provision(server)

        async def raw() -> None:
            c = server.aclient()
            try:
                for lo in range(0, n, 100):
                    async with c.pipeline(transaction=False) as pipe:
                        for _ in range(lo, min(n, lo + 100)):
                            pipe.xadd(part.queue_key, {"d": body})
                        await pipe.execute()
            finally:
                await c.aclose()

        log(f"memory: raw XADD, {n} x 1 KB")
        baseline = per_message(server, n, raw, provision)

        missing = dataplane.sdk_available()
        goal = f"≤ {GOAL:.2f}×"
        cases: list[tuple[str, dict[str, Any], str]] = [
            ("SDK envelope (payload only)", {}, goal),
            ("SDK envelope + idempotency key (incl. the key kept 24 h)",
             {"idem": True}, ""),
            ("SDK envelope + traceparent header", {"headers": {"traceparent": TRACEPARENT}},
             ""),
        ]
        for case, opts, case_goal in cases:
            if missing:
                rows.append(skipped(NAME, case, missing, case_goal))
                continue

            async def sdk(opts: dict[str, Any] = opts) -> None:
                from agentqueue_client.producer import Outgoing, Producer

                async with Producer(dataplane.sdk_config(server)) as producer:
                    for lo in range(0, n, 100):
                        await producer.send_many([
                            Outgoing(body, idempotency_key=f"order-{i:08d}"
                                     if opts.get("idem") else None,
                                     headers=opts.get("headers"))
                            for i in range(lo, min(n, lo + 100))])

            log(f"memory: {case}")
            value = per_message(server, n, sdk, provision)
            ratio = value / baseline
            rows.append(Row(NAME, f"1 KB payload: {case} vs raw XADD", fmt_bytes(value),
                            fmt_bytes(baseline), f"{ratio:.2f}×", case_goal,
                            met(ratio <= GOAL) if case_goal else ""))

        log("memory: taskiq-redis")
        try:
            peer = per_message(server, n, lambda: _taskiq_kick(server, n, body), lambda: None)
        except MissingPrerequisite as exc:
            rows.append(skipped(NAME, "1 KB payload: taskiq-redis job", str(exc)))
        else:
            rows.append(Row(NAME, "1 KB payload: taskiq-redis job (peer) vs raw XADD",
                            fmt_bytes(peer), fmt_bytes(baseline), f"{peer / baseline:.2f}×",
                            "", ""))
    return rows


async def _taskiq_kick(server: BenchRedis, n: int, body: bytes) -> None:
    try:
        from taskiq_redis import RedisStreamBroker
    except ImportError:
        raise MissingPrerequisite("pip install taskiq-redis") from None
    broker = RedisStreamBroker(server.url, queue_name="taskiq-mem")

    @broker.task(task_name="noop")
    async def noop(text: str) -> None:
        return None

    await broker.startup()
    try:
        text = body.decode()
        for _ in range(n):
            await noop.kiq(text)
    finally:
        await broker.shutdown()


if __name__ == "__main__":
    sys.exit(main(NAME, run))
