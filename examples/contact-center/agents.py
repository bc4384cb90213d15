"""Contact Center Copilot agents: small, deterministic programs on the agentqueue SDK.

No model is involved: the "intelligence" is a keyword table, so a run is reproducible.

Agents (one per Deployment in ``manifests.yaml``; in the image ``/app/contact-center``)::

    python agents.py classify                    # intake -> billing | tech | retention
    python agents.py specialist --queue billing  # billing -> resolved | escalation
    python agents.py evaluate                    # escalation -> feedback (human-desk stand-in)
    eval "$(python agents.py creds classify -n contact-center)"   # credentials via kubectl

Credentials: an agent touches several queues and each queue has its own credentials
Secret (``<queue>.<entry>``). The Deployments mount every Secret with an ``envFrom``
prefix, so the classifier sees ``INTAKE_REDIS_URL``, ``BILLING_REDIS_URL``, ... and
:func:`env_for` strips the prefix again before handing the keys to
``ClientConfig.from_env``. Locally, ``export`` the same variables (see README.md).

Every outcome (``resolved`` by a specialist, ``escalated`` once the evaluator took it off
the escalation queue) is scored by :func:`evaluate` and published on ``feedback`` with the
timestamps the seed's SLAs are measured from (``sent_at`` by loadgen, ``escalated_at`` by the
specialist, ``done_at`` by whoever published the outcome) and the redeliveries it took, so
``loadgen.py --report`` can check them (see README.md).
Forwarded messages keep the conversation id as idempotency key, so a redelivery never
creates a second task downstream.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import logging
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from typing import Any

from agentqueue_client import Consumer, Message, Producer

log = logging.getLogger("contact-center")

SPECIALISTS = ("billing", "tech", "retention")
ROUTES: dict[str, tuple[str, ...]] = {
    "retention": ("cancel", "close my account", "competitor", "switching"),
    "billing": ("invoice", "refund", "charge", "bill", "payment"),
    "tech": ("error", "crash", "login", "wifi", "outage", "slow"),
}
# Escalation priority (0 is the most urgent): legal threats, then churn, then frustration.
ESCALATE: tuple[tuple[str, int], ...] = (("lawyer", 0), ("cancel", 1), ("supervisor", 2))
GROUPS = {"classify": "classifier", "billing": "billing-agents", "tech": "tech-agents",
          "retention": "retention-agents", "evaluate": "human-desk"}


# --- rules ----------------------------------------------------------------------------------

def route(text: str) -> str:
    """The specialist queue for a conversation (first matching rule; default ``tech``)."""
    lowered = text.lower()
    for queue, words in ROUTES.items():
        if any(w in lowered for w in words):
            return queue
    return "tech"


def escalation_priority(text: str) -> int | None:
    """The escalation priority, or None when the specialist can resolve it alone."""
    lowered = text.lower()
    for word, priority in ESCALATE:
        if word in lowered:
            return priority
    return None


def evaluate(conversation: Mapping[str, Any], outcome: str, by: str,
             now: float | None = None) -> dict[str, Any]:
    """Score an outcome: the feedback message published on ``feedback``.

    Carries what the SLA report needs: when the conversation was sent, escalated (if it
    was) and finished (``now``, epoch seconds), and how many redeliveries it took.
    """
    score = 1.0 if outcome == "resolved" else 0.5 - 0.1 * (2 - int(conversation.get(
        "priority", 2)))
    return {"id": conversation["id"], "outcome": outcome, "by": by,
            "region": conversation.get("region"), "score": round(score, 2),
            "sent_at": conversation.get("sent_at"),
            "escalated_at": conversation.get("escalated_at"),
            "done_at": time.time() if now is None else now,
            "redeliveries": int(conversation.get("redeliveries", 0))}


def redelivered(conversation: Mapping[str, Any], msg: Message) -> dict[str, Any]:
    """``conversation`` with this stage's redeliveries (retries and reclaims) added."""
    extra = max(msg.deliveries - 1, 0) + msg.attempt
    return {**conversation, "redeliveries": int(conversation.get("redeliveries", 0)) + extra}


# --- credentials ----------------------------------------------------------------------------

def env_for(prefix: str, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The credentials Secret keys mounted under ``<PREFIX>_`` (e.g. ``INTAKE_REDIS_URL``)."""
    env = os.environ if environ is None else environ
    head = prefix.upper().rstrip("_") + "_"
    return {k[len(head):]: v for k, v in env.items() if k.startswith(head)}


def require_env(agent: str, environ: Mapping[str, str] | None = None) -> None:
    """Refuse to start (one clear line) when a credentials prefix the agent needs is unset.

    Without this the SDK would complain about ``REDIS_URL``, hiding which Secret is missing.
    """
    env = os.environ if environ is None else environ
    missing = [f"{prefix}_REDIS_URL (Secret {secret})"
               for prefix, secret in secrets_for(agent).items()
               if not env.get(f"{prefix}_REDIS_URL")]
    if missing:
        raise SystemExit(
            f"{agent}: missing credentials: {', '.join(missing)}. In a pod, mount each Secret "
            f"with envFrom and that prefix (manifests.yaml); on a shell, "
            f'eval "$(python agents.py creds {agent} -n <namespace>)" first.')


# --- agents ---------------------------------------------------------------------------------

async def _serve(consumer: Consumer, handler: Any, stop: asyncio.Event | None,
                 concurrency: int) -> None:
    """Run ``consumer`` until ``stop`` is set (or forever); ``run`` closes it."""
    stop = stop or asyncio.Event()
    task = asyncio.create_task(consumer.run(handler, concurrency=concurrency,
                                            install_signal_handlers=False))
    stopper = asyncio.create_task(stop.wait())
    await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    consumer.stop()
    stopper.cancel()
    await task


async def classify(intake: Mapping[str, str], specialists: Mapping[str, Mapping[str, str]],
                   *, stop: asyncio.Event | None = None, concurrency: int = 4) -> None:
    """Read ``intake``, route each conversation to a specialist queue by keyword."""
    producers = {q: Producer.from_env(env) for q, env in specialists.items()}

    async def handle(msg: Message) -> None:
        conv = redelivered(msg.payload, msg)
        queue = route(conv["text"])
        await producers[queue].send({**conv, "queue": queue}, key=conv.get("region"),
                                    idempotency_key=conv["id"])
        await msg.ack()
        log.info("classify %s -> %s (delivery %d)", conv["id"], queue, msg.deliveries)

    try:
        await _serve(Consumer.from_env(intake, group=GROUPS["classify"]), handle, stop,
                     concurrency)
    finally:
        for p in producers.values():
            await p.close()


async def specialist(queue: str, own: Mapping[str, str], escalation: Mapping[str, str],
                     feedback: Mapping[str, str], *, stop: asyncio.Event | None = None,
                     concurrency: int = 4) -> None:
    """Resolve conversations from one specialist queue, or escalate them with a priority."""
    esc, fb = Producer.from_env(escalation), Producer.from_env(feedback)

    async def handle(msg: Message) -> None:
        conv = redelivered(msg.payload, msg)
        priority = escalation_priority(conv["text"])
        if priority is None:
            await fb.send(evaluate(conv, "resolved", queue), idempotency_key=conv["id"])
            log.info("%s %s resolved (delivery %d)", queue, conv["id"], msg.deliveries)
        else:
            await esc.send({**conv, "priority": priority, "escalated_at": time.time()},
                           priority=priority, idempotency_key=conv["id"])
            log.info("%s %s escalated, priority %d (delivery %d)", queue, conv["id"],
                     priority, msg.deliveries)
        await msg.ack()

    try:
        await _serve(Consumer.from_env(own, group=GROUPS[queue]), handle, stop, concurrency)
    finally:
        await esc.close()
        await fb.close()


async def evaluate_agent(escalation: Mapping[str, str], feedback: Mapping[str, str], *,
                         stop: asyncio.Event | None = None, concurrency: int = 1) -> None:
    """Drain the escalation queue most urgent first (a stand-in for the human desk) and
    publish each escalated outcome on ``feedback``."""
    fb = Producer.from_env(feedback)

    async def handle(msg: Message) -> None:
        conv = redelivered(msg.payload, msg)
        await fb.send(evaluate(conv, "escalated", "human-desk"), idempotency_key=conv["id"])
        await msg.ack()
        log.info("human-desk %s handled, priority %s (delivery %d)", conv["id"],
                 conv.get("priority"), msg.deliveries)

    try:
        await _serve(Consumer.from_env(escalation, group=GROUPS["evaluate"]), handle, stop,
                     concurrency)
    finally:
        await fb.close()


def secrets_for(agent: str) -> dict[str, str]:
    """Env prefix -> credentials Secret, as the agent's Deployment mounts them."""
    if agent == "classify":
        return {"INTAKE": "intake.classifier",
                **{q.upper(): f"{q}.classifier" for q in SPECIALISTS}}
    if agent in SPECIALISTS:
        return {agent.upper(): f"{agent}.{agent}-agent",
                "ESCALATION": f"escalation.{agent}-agent", "FEEDBACK": f"feedback.{agent}-agent"}
    if agent == "evaluate":
        return {"ESCALATION": "escalation.evaluator", "FEEDBACK": "feedback.evaluator"}
    if agent == "loadgen":  # FEEDBACK: loadgen.py --report subscribes as the dashboard
        return {"INTAKE": "intake.loadgen", "FEEDBACK": "feedback.dashboard"}
    raise SystemExit(f"unknown agent {agent!r}")


def export_lines(agent: str, namespace: str | None = None) -> str:
    """``export PREFIX_KEY=value`` lines for ``eval``, read from the Secrets with kubectl."""
    lines = []
    for prefix, secret in secrets_for(agent).items():
        cmd = ["kubectl", "get", "secret", secret, "-o", "json"]
        if namespace:
            cmd += ["-n", namespace]
        try:
            got = subprocess.run(cmd, capture_output=True, text=True)
        except FileNotFoundError:
            raise SystemExit("creds: kubectl is not on PATH "
                             '(eval "$(.venv/bin/agentqueue dev env)" puts it there)') from None
        if got.returncode != 0:
            # kubectl's own reason (NotFound, Forbidden, no cluster), never a traceback.
            raise SystemExit(f"creds: cannot read Secret {secret}"
                             f"{' in namespace ' + namespace if namespace else ''}: "
                             f"{got.stderr.strip()}")
        data = json.loads(got.stdout)["data"]
        for key, value in sorted(data.items()):
            lines.append(f"export {prefix}_{key}="
                         f"{shlex.quote(base64.b64decode(value).decode())}")
    return "\n".join(lines)


# --- command line ---------------------------------------------------------------------------

async def _main(args: argparse.Namespace) -> None:
    # Handlers mostly wait on Redis (forwarding, publishing): many in flight per process
    # beat more processes on a small node. AQ_CONCURRENCY on the Deployment overrides it.
    concurrency = int(os.environ.get("AQ_CONCURRENCY") or 16)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    if args.agent == "classify":
        await classify(env_for("intake"), {q: env_for(q) for q in SPECIALISTS}, stop=stop,
                       concurrency=concurrency)
    elif args.agent == "specialist":
        await specialist(args.queue, env_for(args.queue), env_for("escalation"),
                         env_for("feedback"), stop=stop, concurrency=concurrency)
    else:
        await evaluate_agent(env_for("escalation"), env_for("feedback"), stop=stop,
                             concurrency=concurrency)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("agent", choices=("classify", "specialist", "evaluate", "creds"))
    parser.add_argument("target", nargs="?", default="classify",
                        help="creds only: classify, billing, tech, retention, evaluate, loadgen")
    parser.add_argument("--queue", choices=SPECIALISTS, default="billing",
                        help="specialist queue (specialist only)")
    parser.add_argument("-n", "--namespace", default=None, help="creds only: namespace")
    args = parser.parse_args(argv)
    if args.agent == "creds":
        print(export_lines(args.target, args.namespace))
        return
    require_env(args.queue if args.agent == "specialist" else args.agent)
    logging.basicConfig(level=logging.INFO, stream=sys.stdout,
                        format="%(asctime)s %(name)s %(message)s")
    log.info("%s agent starting (pid %d)", args.agent, os.getpid())
    asyncio.run(_main(args))


if __name__ == "__main__":
    main()
