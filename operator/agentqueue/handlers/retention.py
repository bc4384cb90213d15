"""RetentionPolicy handlers: validate, then one daemon per policy applies it on its
interval to every queue it governs."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import kopf

from .. import GROUP, VERSION, reasons
from ..conditions import set_condition
from ..runtime import Runtime
from ..services import retention as svc
from .report import ready_status, run_reconcile, write_status

PLURAL = "retentionpolicies"
KIND = "RetentionPolicy"


def _plain(body: kopf.Body) -> dict[str, Any]:
    return copy.deepcopy(dict(body))


async def _run_once(rt: Runtime, plain: dict[str, Any], raise_errors: bool) -> None:
    meta = plain["metadata"]
    async with rt.locked(KIND, meta["namespace"], meta["name"]):
        outcome = await run_reconcile(rt, KIND, PLURAL, plain,
                                      lambda: svc.apply_policy(rt, plain),
                                      raise_errors=raise_errors)
        if outcome is None:
            return
        msg = (f"applies to {len(outcome.status['matchedQueues'])} queue(s)"
               + (f"; {len(outcome.status['conflicts'])} conflict(s)"
                  if outcome.status["conflicts"] else ""))
        status = ready_status(plain, True, reasons.ACTIVE, msg, outcome.status)
        conflicts = outcome.status["conflicts"]
        status["conditions"] = set_condition(
            status["conditions"], reasons.POLICY_CONFLICT, bool(conflicts),
            reasons.POLICY_CONFLICT if conflicts else reasons.NO_CONFLICT, "; ".join(conflicts),
            meta.get("generation"))
        await write_status(rt, PLURAL, plain, status)


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec")
async def reconcile(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    await _run_once(memo.runtime, _plain(body), raise_errors=True)


@kopf.daemon(GROUP, VERSION, PLURAL, cancellation_timeout=2.0, initial_delay=2.0)
async def trimmer(stopped: kopf.DaemonStopped, body: kopf.Body, memo: kopf.Memo,
                  logger: kopf.Logger, **_: Any) -> None:
    rt: Runtime = memo.runtime
    while not stopped:
        plain = _plain(body)
        await _run_once(rt, plain, raise_errors=False)
        try:
            await asyncio.sleep(svc.interval_of(plain))
        except asyncio.CancelledError:
            return
