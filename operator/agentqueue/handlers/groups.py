"""ConsumerGroup handlers: ensure the group, then hand it to the group keeper
(keepers/groups.py), which polls (via the shared PollHub), decides (pure) and scales
the target's /scale subresource."""

from __future__ import annotations

from typing import Any

import kopf

from .. import GROUP, VERSION, events, reasons
from ..conditions import now_iso, set_condition
from ..models import ConsumerGroupStatus
from ..planning.pause import pause_status
from ..runtime import Runtime
from ..services import groups as svc
from ..services.report import ready_status, run_reconcile, snapshot, write_status

PLURAL = "consumergroups"
KIND = "ConsumerGroup"


def _plain(body: kopf.Body) -> dict[str, Any]:
    return snapshot(body)


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec")
async def reconcile(body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger, **_: Any) -> None:
    rt: Runtime = memo.runtime
    plain = _plain(body)
    meta = plain["metadata"]
    try:
        await _reconcile(rt, plain, logger)
    finally:
        # Whatever the outcome (Redis down: the keeper applies fallbackReplicas; a spec
        # problem: its ticks wait), the keeper sees the new spec at its next tick.
        rt.groups.track(meta["namespace"], meta["name"])


async def _reconcile(rt: Runtime, plain: dict[str, Any], logger: kopf.Logger) -> None:
    meta = plain["metadata"]
    async with rt.locked(KIND, meta["namespace"], meta["name"]):
        ctx = await run_reconcile(rt, KIND, PLURAL, plain, lambda: svc.reconcile_group(rt, plain))
        assert ctx is not None
        status = plain.get("status") or {}
        pause = pause_status(ctx.spec.paused, ctx.spec.pause_reason, status.get("pausedAt"),
                             now_iso())
        extra = ConsumerGroupStatus(group_name=ctx.group, paused_at=pause.paused_at,
                                    paused_reason=pause.paused_reason).to_patch()
        conditions = set_condition(status.get("conditions"), reasons.PAUSED, pause.paused,
                                   pause.reason, pause.message, meta.get("generation"))
        if pause.event is not None:
            events.info(plain, reason=pause.event[0], message=pause.event[1])
        paused = {**plain, "status": {**status, "conditions": conditions}}
        msg = (f"group {ctx.group!r} on {len(ctx.partitions)} partition(s)" if not ctx.is_list
               else f"settings of group {ctx.group!r} on List queue {ctx.spec.queue_ref.name!r}"
               f" ({len(ctx.partitions)} partition(s); no Redis group)")
        # Written over `plain` (what it was computed from): Paused and Ready are changes.
        await write_status(rt, PLURAL, plain, ready_status(paused, True, reasons.ACTIVE, msg,
                                                           extra))
        logger.info("consumer group reconciled", extra={"group": ctx.group})


@kopf.on.delete(GROUP, VERSION, PLURAL)
async def delete(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    rt: Runtime = memo.runtime
    plain = _plain(body)
    meta = plain["metadata"]
    rt.groups.untrack(meta["namespace"], meta["name"])
    await run_reconcile(rt, KIND, PLURAL, plain, lambda: svc.delete_group(rt, plain))

