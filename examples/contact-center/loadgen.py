"""Send N synthetic conversations to the ``intake`` queue (the telephony system's stand-in).

    python loadgen.py -n 100          # credentials: INTAKE_* (Secret intake.loadgen)

Each conversation has an id (``conv-<run>-<n>``) used as idempotency key, so re-running
with the same ``--run`` sends nothing twice; the region is the partition key, so one
region's conversations stay in order on one intake partition.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Mapping
from typing import Any

from agentqueue.client import Outgoing, Producer

REGIONS = ("emea", "amer", "apac")
# A fixed rotation of customer utterances covering every route and escalation rule.
TEXTS = (
    "I was charged twice on my last invoice",
    "The app shows an error when I login",
    "I want to cancel, your competitor is cheaper",
    "Please refund the payment, or I call my lawyer",
    "Wifi is slow since the outage yesterday",
    "My bill is wrong, let me talk to a supervisor",
    "How do I update my payment method?",
    "The router keeps crashing, get me a supervisor",
    "Thinking about switching provider, any offers?",
    "General question about my account",
)


def conversations(n: int, run: str = "demo") -> list[dict[str, Any]]:
    """``n`` deterministic conversations."""
    return [{"id": f"conv-{run}-{i}", "region": REGIONS[i % len(REGIONS)],
             "text": TEXTS[i % len(TEXTS)]} for i in range(n)]


async def send(intake: Mapping[str, str] | None, n: int, run: str = "demo") -> list[str]:
    """Send ``n`` conversations to intake (credentials from ``intake`` or ``INTAKE_*``)."""
    if intake is None:
        from agents import env_for
        intake = env_for("intake")
    async with Producer.from_env(intake) as producer:
        return await producer.send_many(
            Outgoing(c, key=c["region"], idempotency_key=c["id"]) for c in conversations(n, run))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=100, help="conversations to send")
    parser.add_argument("--run", default="demo", help="run id (part of each idempotency key)")
    args = parser.parse_args(argv)
    ids = asyncio.run(send(None, args.n, args.run))
    print(f"sent {len(ids)} conversations")


if __name__ == "__main__":
    main()
