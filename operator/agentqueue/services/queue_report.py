"""An AgentQueue's reconcile and its report: run services.queues.reconcile_queue (for an
event, or a drift check of the keeper), then Events and status from its outcome. Used by
the handlers and the queue keeper alike; status goes through the one status writer
path (`write_merged`)."""

from __future__ import annotations

import logging
import time
from typing import Any

from .. import events, reasons
from ..conditions import get_condition, now_iso, set_condition
from ..planning.risk_condition import risk_condition
from ..runtime import Runtime
from . import queues as svc
from .report import ready_status, run_reconcile, write_status

PLURAL = "agentqueues"
KIND = "AgentQueue"
log = logging.getLogger("agentqueue.queues")


async def reconcile_and_report(rt: Runtime, body: dict[str, Any], logger: Any, *,
                               drift: bool, raise_errors: bool = True,
                               pre: svc.PreObserved | None = None,
                               failure: BaseException | None = None
                               ) -> svc.QueueOutcome | None:
    """Reconcile, then report. `failure`: the keeper's batched read failed (Redis down):
    report it as this queue's failure without another attempt."""
    meta = body["metadata"]

    async def reconcile() -> svc.QueueOutcome:
        if failure is not None:
            raise failure
        return await svc.reconcile_queue(rt, body, time.time(), drift=drift, pre=pre)

    async with rt.locked(KIND, meta["namespace"], meta["name"]):
        outcome = await run_reconcile(rt, KIND, PLURAL, body, reconcile,
                                      raise_errors=raise_errors)
        if outcome is None:
            return None
        extra = dict(outcome.status)
        was_ready = (body.get("status") or {}).get("observedGeneration") is not None
        if drift and outcome.repaired and was_ready:
            detail = ", ".join(outcome.repaired)[:1000]
            events.info(body, reason=reasons.DRIFT_REPAIRED, message=f"repaired: {detail}")
            logger.warning("drift repaired", extra={"repaired": outcome.repaired})
            extra["lastRepair"] = now_iso()
            extra["lastRepairDetail"] = detail
        if outcome.rotated:
            events.info(body, reason=reasons.CREDENTIALS_ROTATED,
                        message="new passwords in the Secrets; the previous ones work until "
                        f"{outcome.status['credentials'].get('previousExpires')}")
        if outcome.problem is not None:
            reason, message = outcome.problem
            current = get_condition((body.get("status") or {}).get("conditions"),
                                    reasons.READY)
            if not current or current.get("reason") != reason:
                events.warn(body, reason=reason, message=message)
            status = ready_status(body, False, reason, message, extra)
        else:
            status = ready_status(body, True, reasons.PROVISIONED,
                                  f"{extra['type']} queue with {len(extra['partitions'])} "
                                  f"partition(s) and {len(extra['users'])} user(s) in Redis",
                                  extra)
        risk = risk_condition(outcome.risks, get_condition(
            (body.get("status") or {}).get("conditions"), reasons.REDIS_CONFIG_RISK))
        if risk.warn is not None:
            events.warn(body, reason=risk.warn[0], message=risk.warn[1])
        status["conditions"] = set_condition(status["conditions"], reasons.REDIS_CONFIG_RISK,
                                             risk.status, risk.reason, risk.message,
                                             meta.get("generation"))
        await write_merged(rt, body, status)
        if drift and outcome.problem is None and (get_condition(
                (body.get("status") or {}).get("conditions"), reasons.READY) or {}
                ).get("status") != "True":
            # Ready again (Redis came back): its waiting ConsumerGroups retry now. The
            # event handlers do this in their own `finally`.
            rt.queue_changed(meta["namespace"], meta["name"])
        if not meta.get("deletionTimestamp"):  # a deleted queue's series stay deleted
            counters = outcome.slo_sample.counters if outcome.slo_sample else None
            retries = counters.retries if counters is not None else {}
            rt.metrics.observe_queue(meta["namespace"], meta["name"], {
                p["index"]: {"length": p["length"], "dead_letter_length": p["deadLetterLength"],
                             "scheduled_retries": p["scheduledRetries"],
                             "memory_bytes": p["memoryBytes"],
                             **({"retries_total": float(retries[p["index"]])}
                                if p["index"] in retries else {})}
                for p in extra["partitions"]})
        return outcome


async def write_merged(rt: Runtime, body: dict[str, Any], status: dict[str, Any]) -> None:
    """Write `status` (computed from `body`) through the status writer: only the
    conditions we changed replace the current ones. The caller holds the lock."""
    await write_status(rt, PLURAL, body, status)
