"""ConsumerGroup handlers: ensure the group, then hand it to the group keeper
(keepers/groups.py), which polls (via the shared PollHub), decides (pure) and scales
the target's /scale subresource."""

from __future__ import annotations

from typing import Any

import kopf

from .. import GROUP, VERSION
from ..runtime import Runtime
from ..services import group_report
from ..services import groups as svc
from ..services.report import run_reconcile, snapshot

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
        await group_report.reconcile_and_report(rt, plain, logger)
    finally:
        # Whatever the outcome (Redis down: the keeper applies fallbackReplicas; a spec
        # problem: its ticks wait), the keeper sees the new spec at its next tick.
        rt.groups.track(meta["namespace"], meta["name"])


@kopf.on.delete(GROUP, VERSION, PLURAL)
async def delete(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    rt: Runtime = memo.runtime
    plain = _plain(body)
    meta = plain["metadata"]
    rt.groups.untrack(meta["namespace"], meta["name"])
    await run_reconcile(rt, KIND, PLURAL, plain, lambda: svc.delete_group(rt, plain))

