"""A tiny example agent: consumes one queue with the SDK, "handles" each message and acks
it, logging one line per message with timestamps.

Handling = claim the message's done-marker with ``msg.once("handled")`` (the side effect,
at most once per idempotency key, even across redeliveries), then wait ``AQ_WORK_MS``
(default 0). A message whose marker was already claimed is acked and logged as a
``duplicate``: the side effect is not repeated.

Configured from the environment: the credentials Secret through ``envFrom`` (``REDIS_URL``,
``REDIS_USERNAME``, ``REDIS_PASSWORD``, ``AQ_NAMESPACE``, ``AQ_QUEUE``, ...) plus
``AQ_GROUP`` (the Redis consumer group, e.g. the ConsumerGroup's name) and ``AQ_WORK_MS``
on the Deployment.
SIGTERM stops taking work, finishes the message in hand and exits: what a scale-down does.
Runs the same outside a pod: ``AQ_GROUP=billing-agents .venv/bin/python agent.py``.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from datetime import UTC, datetime

from agentqueue_client import ConfigError, Consumer, Message


def _ts(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds")


def _log(line: str) -> None:
    print(f"{_ts(time.time())} {line}", flush=True)


def _enqueued_at(msg: Message) -> float | None:
    # A Stream entry id starts with the milliseconds at which Redis stored the message.
    ms, sep, _ = msg.id.partition("-")
    return int(ms) / 1000 if sep and ms.isdigit() else None


async def main() -> int:
    try:
        work_s = float(os.environ.get("AQ_WORK_MS") or 0) / 1000
        consumer = Consumer.from_env()
    except (ConfigError, ValueError) as exc:
        # Which setting is wrong, without a traceback (and never a credential's value).
        _log(f"agent config error: {exc} (env from the queue's credentials Secret; "
             "AQ_GROUP on the Deployment)")
        return 2
    # Never the URL or the password: only what identifies the work.
    _log(f"agent start queue={consumer.config.namespace}/{consumer.config.queue} "
         f"group={consumer.group} consumer={consumer.name} work_ms={work_s * 1000:.0f}")
    counts = {"handled": 0, "duplicate": 0}

    async def handle(msg: Message) -> None:
        started = time.time()
        first = await msg.once("handled")
        if first:
            await asyncio.sleep(work_s)  # the work itself
        await msg.ack()
        outcome = "handled" if first else "duplicate"
        counts[outcome] += 1
        enqueued = _enqueued_at(msg)
        waited = f" enqueued={_ts(enqueued)} waited_ms={(started - enqueued) * 1000:.0f}" \
            if enqueued else ""
        _log(f"{outcome} id={msg.id} partition={msg.partition} "
             f"key={msg.idempotency_key or '-'} attempt={msg.attempt} "
             f"deliveries={msg.deliveries}{waited} "
             f"took_ms={(time.time() - started) * 1000:.0f}")

    await consumer.run(handle)
    _log(f"agent stop handled={counts['handled']} duplicate={counts['duplicate']}")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
