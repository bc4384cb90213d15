"""AgentQueue handlers: thin glue around services.queues."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import kopf

from .. import GROUP, VERSION, events, reasons
from ..metrics import QueueFigures
from ..runtime import Runtime
from ..services import queues as svc
from .report import ready_status, run_reconcile, write_status

PLURAL = "agentqueues"
KIND = "AgentQueue"


async def _reconcile(rt: Runtime, body: dict[str, Any], logger: kopf.Logger,
                     *, drift: bool, raise_errors: bool = True) -> svc.QueueOutcome | None:
    meta = body["metadata"]
    async with rt.locked(KIND, meta["namespace"], meta["name"]):
        outcome = await run_reconcile(
            rt, KIND, PLURAL, body, lambda: svc.reconcile_queue(rt, body, time.time()),
            raise_errors=raise_errors)
        if outcome is None:
            return None
        extra = dict(outcome.status)
        was_ready = (body.get("status") or {}).get("observedGeneration") is not None
        if drift and outcome.repaired and was_ready:
            detail = ", ".join(outcome.repaired)[:1000]
            events.info(body, reason=reasons.DRIFT_REPAIRED, message=f"repaired: {detail}")
            logger.warning("drift repaired", extra={"repaired": outcome.repaired})
            from ..conditions import now_iso
            extra["lastRepair"] = now_iso()
            extra["lastRepairDetail"] = detail
        if outcome.rotated:
            events.info(body, reason=reasons.CREDENTIALS_ROTATED,
                      message="new passwords in the Secrets; the previous ones work until "
                      f"{outcome.status['credentials'].get('previousExpires')}")
        status = ready_status(body, True, reasons.PROVISIONED,
                              f"{extra['type']} queue with {len(extra['partitions'])} "
                              f"partition(s) and {len(extra['users'])} user(s) in Redis", extra)
        await write_status(rt, PLURAL, body, status)
        rt.metrics.queues[(meta["namespace"], meta["name"])] = QueueFigures(
            partitions={p["index"]: {"length": p["length"],
                                     "dead_letter_length": p["deadLetterLength"],
                                     "scheduled_retries": p["scheduledRetries"],
                                     "memory_bytes": p["memoryBytes"]}
                        for p in extra["partitions"]})
        return outcome


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec")
@kopf.on.update(GROUP, VERSION, PLURAL, field=f"metadata.annotations.{svc.ROTATE_ANNOTATION}")
async def reconcile(body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger,
                    **_: Any) -> None:
    await _reconcile(memo.runtime, _plain(body), logger, drift=False)


@kopf.daemon(GROUP, VERSION, PLURAL, cancellation_timeout=2.0, initial_delay=1.0)
async def keeper(stopped: kopf.DaemonStopped, body: kopf.Body, memo: kopf.Memo,
                 logger: kopf.Logger, **_: Any) -> None:
    """Drift repair: re-check Redis every drift interval, and at once after Redis
    restarted or failed over (a new run_id), so nobody has to touch the manifest."""
    rt: Runtime = memo.runtime
    restart: asyncio.Event | None = None
    while not stopped:
        timeout = rt.config.drift_interval
        try:
            if restart is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(restart.wait(), timeout)
            else:
                await asyncio.sleep(min(timeout, 5.0))
        except asyncio.CancelledError:
            return
        if stopped:
            return
        outcome = await _reconcile(rt, _plain(body), logger, drift=True, raise_errors=False)
        if outcome is not None and outcome.target is not None:
            restart = rt.watcher.watch(outcome.target)


@kopf.on.delete(GROUP, VERSION, PLURAL)
async def delete(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    rt: Runtime = memo.runtime
    plain = _plain(body)

    async def _delete() -> None:
        await svc.delete_queue(rt, plain)

    status = ready_status(plain, False, reasons.DELETING, "removing ACL users"
                          + (" and keys" if plain.get("spec", {}).get("deletionPolicy") == "Delete"
                             else "; keys are retained"))
    await write_status(rt, PLURAL, plain, status)
    await run_reconcile(rt, KIND, PLURAL, plain, _delete)


def _plain(body: kopf.Body) -> dict[str, Any]:
    """A plain-dict snapshot of the body (kopf's views are live)."""
    import copy
    return copy.deepcopy(dict(body))
