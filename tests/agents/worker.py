"""A consumer agent for crash drills, run as a subprocess: ``worker.py <consumer name>``.

Configured by the credentials Secret's env keys plus:
  AQ_GROUP            consumer group
  AQ_RESULTS_KEY      hash: idempotency key -> times the side effect happened (must be 1)
  AQ_STATS_KEY        hash: deliveries / skipped (redeliveries caught by once()) / failed
  AQ_WORK_MS          simulated work per message (ms)
  AQ_FAIL_RATE        probability that a first attempt raises (exercises nack/retry)
  AQ_CONCURRENCY      handlers in flight
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import sys

from agentqueue_client import Consumer, Message


async def main(name: str) -> None:
    results = os.environ["AQ_RESULTS_KEY"]
    stats = os.environ["AQ_STATS_KEY"]
    work = float(os.environ.get("AQ_WORK_MS", "0")) / 1000
    fail_rate = float(os.environ.get("AQ_FAIL_RATE", "0"))
    consumer = Consumer.from_env(consumer_name=name, batch_size=20, block_ms=200,
                                 promote_interval=0.05, shutdown_grace=2.0)
    counters = consumer.config.connect()

    @consumer.handler
    async def handle(msg: Message) -> None:
        key = msg.idempotency_key or msg.id
        await counters.hincrby(stats, "deliveries", 1)
        if work:
            await asyncio.sleep(work * random.uniform(0.5, 1.5))
        if msg.attempt == 0 and random.random() < fail_rate:
            await counters.hincrby(stats, "failed", 1)
            raise RuntimeError("simulated flaky downstream")
        applied = await msg.once("count", lambda pipe: pipe.hincrby(results, key, 1))
        if not applied:
            await counters.hincrby(stats, "skipped", 1)

    try:
        await consumer.run(concurrency=int(os.environ.get("AQ_CONCURRENCY", "4")))
    finally:
        await counters.aclose()


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format=f"%(asctime)s {sys.argv[1]} %(levelname)s %(message)s")
    asyncio.run(main(sys.argv[1]))
