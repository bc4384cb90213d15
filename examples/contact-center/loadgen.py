"""Send N synthetic conversations to the ``intake`` queue (the telephony system's stand-in),
and with ``--report`` wait for their outcomes and check the seed's three SLAs.

    python loadgen.py -n 100                 # credentials: INTAKE_* (Secret intake.loadgen)
    python loadgen.py -n 7200 --report       # + FEEDBACK_* (Secret feedback.dashboard)

Each conversation has an id (``conv-<run>-<n>``) used as idempotency key, so re-running
with the same ``--run`` sends nothing twice (it says so); the region is the partition key,
so one region's conversations stay in order on one intake partition. The SLAs (seed article,
"Contact Center Copilot"): 99% of conversations handled within 30 s, retries below 2% of
deliveries, escalations picked up by a human within 2 minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from agentqueue_client import Consumer, Message, Outgoing, Producer

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
# The seed's SLAs.
SLA_HANDLED_S, SLA_HANDLED_SHARE = 30.0, 0.99
SLA_RETRY_SHARE = 0.02
SLA_ESCALATION_S = 120.0
# Stream entry ids are "<ms>-<seq>": an id older than the send by more than this is the
# id of an earlier run's entry, returned for a duplicate idempotency key.
_DUPLICATE_SLACK_MS = 1000


def conversations(n: int, run: str = "demo", now: float | None = None) -> list[dict[str, Any]]:
    """``n`` deterministic conversations, stamped ``sent_at`` (epoch seconds)."""
    sent_at = time.time() if now is None else now
    return [{"id": f"conv-{run}-{i}", "region": REGIONS[i % len(REGIONS)],
             "text": TEXTS[i % len(TEXTS)], "sent_at": sent_at} for i in range(n)]


def duplicates(ids: Sequence[str], sent_ms: int) -> int:
    """How many of the returned Stream ids belong to entries of an earlier send."""
    return sum(1 for i in ids if int(i.split("-", 1)[0]) < sent_ms - _DUPLICATE_SLACK_MS)


async def send(intake: Mapping[str, str] | None, n: int, run: str = "demo") -> list[str]:
    """Send ``n`` conversations to intake (credentials from ``intake`` or ``INTAKE_*``)."""
    if intake is None:
        from agents import env_for
        intake = env_for("intake")
    async with Producer.from_env(intake) as producer:
        out: list[str] = []
        convs = conversations(n, run)
        for start in range(0, n, 500):  # bounded pipelines for large bursts
            out += await producer.send_many(
                Outgoing(c, key=c["region"], idempotency_key=c["id"])
                for c in convs[start:start + 500])
        return out


def _quantile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


@dataclass(frozen=True)
class SLAReport:
    sent: int
    outcomes: int
    resolved: int
    escalated: int
    duration_s: float
    handled_p50: float
    handled_p99: float
    handled_within: float        # share of sent conversations done within SLA_HANDLED_S
    redeliveries: int
    deliveries: int
    escalation_p99: float | None

    @property
    def retry_share(self) -> float:
        return self.redeliveries / self.deliveries if self.deliveries else 0.0

    @property
    def met(self) -> dict[str, bool]:
        return {
            "handled": self.handled_within >= SLA_HANDLED_SHARE,
            "retries": self.retry_share < SLA_RETRY_SHARE,
            "escalation": self.escalation_p99 is None or self.escalation_p99 < SLA_ESCALATION_S,
        }

    def lines(self) -> list[str]:
        ok = {True: "met", False: "MISSED"}
        esc = "n/a" if self.escalation_p99 is None else f"p99 {self.escalation_p99:.2f} s"
        return [
            f"conversations  {self.sent} sent, {self.outcomes} outcomes ({self.resolved} "
            f"resolved, {self.escalated} escalated) in {self.duration_s:.1f} s",
            f"SLA handled < {SLA_HANDLED_S:.0f} s for {SLA_HANDLED_SHARE:.0%}   "
            f"{self.handled_within:.2%} within; p50 {self.handled_p50:.2f} s, "
            f"p99 {self.handled_p99:.2f} s   {ok[self.met['handled']]}",
            f"SLA retries < {SLA_RETRY_SHARE:.0%}                 "
            f"{self.retry_share:.2%} ({self.redeliveries} of {self.deliveries} deliveries)   "
            f"{ok[self.met['retries']]}",
            f"SLA escalation wait < {SLA_ESCALATION_S / 60:.0f} min       {esc}   "
            f"{ok[self.met['escalation']]}",
        ]


def sla_report(outcomes: Sequence[Mapping[str, Any]], sent: int, started: float,
               finished: float) -> SLAReport:
    """The seed's three SLAs from the outcomes published on ``feedback`` (pure).

    A conversation that produced no outcome counts as not handled in time. Each outcome
    took one delivery per stage (intake, a specialist queue, and escalation when
    escalated) plus its redeliveries.
    """
    handled = [o["done_at"] - o["sent_at"] for o in outcomes]
    escalated = [o for o in outcomes if o["outcome"] == "escalated"]
    waits = [o["done_at"] - o["escalated_at"] for o in escalated if o.get("escalated_at")]
    redeliveries = sum(int(o.get("redeliveries", 0)) for o in outcomes)
    first_deliveries = 2 * len(outcomes) + len(escalated)
    return SLAReport(
        sent=sent, outcomes=len(outcomes), resolved=len(outcomes) - len(escalated),
        escalated=len(escalated), duration_s=finished - started,
        handled_p50=_quantile(handled, 0.5) if handled else math.inf,
        handled_p99=_quantile(handled, 0.99) if handled else math.inf,
        handled_within=(sum(1 for h in handled if h < SLA_HANDLED_S) / sent) if sent else 1.0,
        redeliveries=redeliveries, deliveries=first_deliveries + redeliveries,
        escalation_p99=_quantile(waits, 0.99) if waits else None)


async def run_with_report(intake: Mapping[str, str], feedback: Mapping[str, str], n: int,
                          run: str, timeout: float) -> tuple[SLAReport, int]:
    """Subscribe to feedback, send ``n``, collect their outcomes; return (report, duplicates)."""
    outcomes: dict[str, dict[str, Any]] = {}
    prefix = f"conv-{run}-"
    done = asyncio.Event()
    subscriber = Consumer.from_env(feedback)
    await subscriber.start()  # Pub/Sub: subscribed before the first outcome is published

    async def collect(msg: Message) -> None:
        if str(msg.payload.get("id", "")).startswith(prefix):
            outcomes.setdefault(msg.payload["id"], msg.payload)  # at-least-once upstream
            if len(outcomes) >= n:
                done.set()

    task = asyncio.create_task(subscriber.run(collect, install_signal_handlers=False))
    started = time.time()
    try:
        ids = await send(intake, n, run)
        dups = duplicates(ids, int(started * 1000))
        if dups < n:
            with contextlib.suppress(TimeoutError):  # the report counts what is missing
                await asyncio.wait_for(done.wait(), timeout)
    finally:
        subscriber.stop()
        await task
    return sla_report(list(outcomes.values()), n - dups, started, time.time()), dups


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=100, help="conversations to send")
    parser.add_argument("--run", default=None,
                        help="run id, part of each idempotency key (default: a new one)")
    parser.add_argument("--report", action="store_true",
                        help="wait for the outcomes on feedback and print the SLA figures")
    parser.add_argument("--timeout", type=float, default=300.0,
                        help="--report: seconds to wait for all outcomes")
    args = parser.parse_args(argv)
    from agents import env_for
    if not env_for("intake").get("REDIS_URL"):
        raise SystemExit("loadgen: missing INTAKE_REDIS_URL (Secret intake.loadgen): mount it "
                         "with envFrom prefix INTAKE_, or eval \"$(python agents.py creds "
                         "loadgen -n <namespace>)\" first")
    run = args.run or time.strftime("%H%M%S")
    if not args.report:
        started_ms = int(time.time() * 1000)
        ids = asyncio.run(send(None, args.n, run))
        dups = duplicates(ids, started_ms)
        print(f"run {run}: sent {len(ids) - dups} new conversations"
              + (f"; {dups} were already enqueued by an earlier send of this run "
                 "(same idempotency keys: nothing new)" if dups else ""))
        return
    if not env_for("feedback").get("REDIS_URL"):
        raise SystemExit("--report: missing FEEDBACK_REDIS_URL (Secret feedback.dashboard)")
    report, dups = asyncio.run(run_with_report(env_for("intake"), env_for("feedback"),
                                               args.n, run, args.timeout))
    if dups:
        print(f"run {run}: {dups} of {args.n} were already enqueued by an earlier send "
              "of this run (nothing new for them; use a new --run)")
    for line in report.lines():
        print(line)
    sys.exit(0 if all(report.met.values()) and report.outcomes == report.sent else 1)


if __name__ == "__main__":
    main()
