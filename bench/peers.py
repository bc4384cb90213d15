"""Peer task queues on the same loopback Redis, with no-op jobs.

- taskiq-redis `RedisStreamBroker` (Redis Streams + consumer group, the closest peer):
  acked after the task ran (``AcknowledgeType.WHEN_EXECUTED``), reclaim of idle
  messages after 10 min; no dead-letter queue, no idempotency keys.
- RQ (lists, a forked work horse per job, the default `Worker`): no ack at all; a job
  whose worker dies is moved to the failed registry, not redelivered.

Both are optional: without the package the benchmark prints a 'skipped' row.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any

from .common import BenchRedis, MissingPrerequisite

_done = 0


@dataclass(frozen=True)
class PeerResult:
    name: str
    produce_per_s: float
    process_per_s: float
    jobs: int
    guarantee: str


# --- taskiq-redis ------------------------------------------------------------------------------

async def _taskiq(server: BenchRedis, jobs: int) -> PeerResult:
    try:
        from taskiq.acks import AcknowledgeType
        from taskiq.api import run_receiver_task
        from taskiq_redis import RedisStreamBroker
    except ImportError:
        raise MissingPrerequisite("pip install taskiq-redis") from None
    logging.getLogger("taskiq").setLevel(logging.ERROR)
    counter = {"n": 0}
    finished = asyncio.Event()
    queue = "taskiq-bench"
    broker = RedisStreamBroker(server.url, queue_name=queue, consumer_group_name="bench",
                               xread_block=100)

    @broker.task(task_name="noop")
    async def noop(i: int) -> None:
        counter["n"] += 1
        if counter["n"] >= jobs:
            finished.set()

    await broker.startup()  # declares the consumer group at "$" before anything is sent
    try:
        start = time.perf_counter()
        for i in range(jobs):
            await noop.kiq(i)
        produce = time.perf_counter() - start

        start = time.perf_counter()
        worker = asyncio.create_task(run_receiver_task(
            broker, max_async_tasks=100, ack_time=AcknowledgeType.WHEN_EXECUTED))
        try:
            await asyncio.wait_for(finished.wait(), timeout=max(60.0, jobs / 100))
            client = server.aclient()
            try:  # every job acked, not only run
                while int((await client.xpending(queue, "bench"))["pending"]) > 0:
                    await asyncio.sleep(0.001)
            finally:
                await client.aclose()
            process = time.perf_counter() - start
        finally:
            worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await worker
    finally:
        await broker.shutdown()
    return PeerResult("taskiq-redis (streams)", jobs / produce, jobs / process, jobs,
                      "ack after run, no DLQ")


def taskiq(server: BenchRedis, jobs: int) -> PeerResult:
    return asyncio.run(_taskiq(server, jobs))


# --- RQ ------------------------------------------------------------------------------------

def rq_noop(i: int) -> None:
    """The RQ job (imported by the forked work horse by its dotted path)."""


def rq(server: BenchRedis, jobs: int) -> PeerResult:
    try:
        import rq as rq_mod
    except ImportError:
        raise MissingPrerequisite("pip install rq") from None
    logging.getLogger("rq.worker").setLevel(logging.ERROR)
    conn = server.client()
    try:
        queue = rq_mod.Queue("rq-bench", connection=conn)
        start = time.perf_counter()
        for i in range(jobs):
            queue.enqueue(rq_noop, i)
        produce = time.perf_counter() - start
        worker: Any = rq_mod.Worker([queue], connection=conn)
        start = time.perf_counter()
        worker.work(burst=True, logging_level="ERROR")
        process = time.perf_counter() - start
        done = queue.finished_job_registry.count
        if done < jobs:
            raise RuntimeError(f"RQ finished only {done} of {jobs} jobs")
    finally:
        conn.close()
    return PeerResult("RQ (default forking Worker)", jobs / produce, jobs / process, jobs,
                      "no ack, no redelivery")
