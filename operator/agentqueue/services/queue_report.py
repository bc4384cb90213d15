"""An AgentQueue's reconcile and its report: run services.queues.reconcile_queue (for an
event, or a drift check of the keeper), then Events and status from its outcome. Used by
the handlers and the queue keeper alike; status goes through the one status writer
(status.py, by `report.write_status`)."""

from __future__ import annotations

import logging
import time
from typing import Any

import kopf

from agentqueue_client import keys

from .. import events, reasons
from ..conditions import get_condition, now_iso, parse_time, set_condition
from ..models import AgentQueueStatus
from ..planning import deletion
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
            extra.update(AgentQueueStatus(last_repair=now_iso(),
                                          last_repair_detail=detail).to_patch())
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
        await write_status(rt, PLURAL, body, status)  # only our changed conditions
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


async def delete_and_report(rt: Runtime, plain: dict[str, Any]) -> None:
    """The queue's clean-up (its users; its keys with deletionPolicy Delete), with
    `Ready=False (Deleting)` first; a failed clean-up retries until the operator's
    deletion timeout (planning/deletion.py), then the queue is released with an Event
    saying what stays in Redis."""

    async def _delete() -> None:
        await svc.delete_queue(rt, plain)

    rt.queue_changed(plain["metadata"]["namespace"], plain["metadata"]["name"])
    status = ready_status(plain, False, reasons.DELETING, "removing ACL users"
                          + (" and keys" if plain.get("spec", {}).get("deletionPolicy") == "Delete"
                             else "; keys are retained"))
    meta = plain["metadata"]
    try:
        await write_status(rt, PLURAL, plain, status)
        try:
            await run_reconcile(rt, KIND, PLURAL, plain, _delete)
        except (kopf.TemporaryError, kopf.PermanentError) as exc:
            step = deletion.after_failed_cleanup(
                _provisioned(plain), _since_deletion(meta), rt.config.deletion_timeout)
            if not step.release:
                raise kopf.TemporaryError(str(exc), delay=step.retry_in) from None
            _abandon_event(rt, plain, str(exc))
    finally:
        # Always (also when the spec never validated): the queue's series go with it.
        # Under the lock, so a reconcile still running cannot put them back after.
        async with rt.locked(KIND, meta["namespace"], meta["name"]):
            rt.metrics.forget_queue(meta["namespace"], meta["name"])


def _provisioned(body: dict[str, Any]) -> bool:
    """Whether the queue ever reached Redis (a reconcile succeeded once)."""
    status = body.get("status") or {}
    return bool(status.get("users") or status.get("partitions") or status.get("keyPattern"))


def _since_deletion(meta: dict[str, Any]) -> float:
    stamp = meta.get("deletionTimestamp")
    if not stamp:
        return 0.0
    try:
        return time.time() - (parse_time(stamp) or time.time())
    except ValueError:
        return 0.0


def _abandon_event(rt: Runtime, body: dict[str, Any], error: str) -> None:
    """The queue is released without its clean-up: say what stays in Redis."""
    meta = body["metadata"]
    ns, name = meta["namespace"], meta["name"]
    spec = body.get("spec") or {}
    access = spec.get("access") or {}
    entries = sorted({str(e["name"]) for role in ("producers", "consumers", "observers")
                      for e in (access.get(role) or []) if isinstance(e, dict)
                      and isinstance(e.get("name"), str)})
    if not _provisioned(body):
        events.info(body, reason=reasons.DELETION_ABANDONED,
                    message=f"released at once: the queue never reached Redis ({error[:300]})")
        return
    what = deletion.left_behind([keys.acl_username(ns, name, e) for e in entries],
                                spec.get("deletionPolicy") == "Delete",
                                keys.queue_key_pattern(ns, name))
    events.warn(body, reason=reasons.DELETION_ABANDONED,
                message=(f"released after {rt.config.deletion_timeout:.0f}s without reaching "
                         f"Redis ({error[:300]}); left behind: {what}")[:1000])
