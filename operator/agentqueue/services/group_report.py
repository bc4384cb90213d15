"""A ConsumerGroup's reconcile and its report: run services.groups.reconcile_group, then
its status (Ready, Paused, the Redis group name) and Events. Used by the handlers and
by the group keeper (a group whose claim on a Redis group name changed with another
group's arrival or departure is reconciled again: keepers/groups.py `reconsider`)."""

from __future__ import annotations

from typing import Any

from .. import events, reasons
from ..conditions import now_iso, set_condition
from ..models import ConsumerGroupStatus
from ..planning import group_status
from ..planning.pause import pause_status
from ..runtime import Runtime
from . import groups as svc
from .report import ready_status, run_reconcile, write_status

PLURAL = "consumergroups"
KIND = "ConsumerGroup"


async def reconcile_and_report(rt: Runtime, plain: dict[str, Any], logger: Any, *,
                               raise_errors: bool = True) -> svc.GroupContext | None:
    meta = plain["metadata"]
    async with rt.locked(KIND, meta["namespace"], meta["name"]):
        ctx = await run_reconcile(rt, KIND, PLURAL, plain,
                                  lambda: svc.reconcile_group(rt, plain),
                                  raise_errors=raise_errors)
        if ctx is None:
            return None
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
        ready = group_status.reconciled(ctx.group, len(ctx.partitions), ctx.is_list,
                                        ctx.spec.queue_ref.name)
        # Written over `plain` (what it was computed from): Paused and Ready are changes.
        await write_status(rt, PLURAL, plain, ready_status(paused, ready.status, ready.reason,
                                                           ready.message, extra))
        logger.info("consumer group reconciled", extra={"group": ctx.group})
        return ctx
