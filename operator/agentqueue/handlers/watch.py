"""Every watch event of our kinds updates the object store the keepers read
(keepers/objects.py): the latest body of each object, without a daemon holding it.
A ConsumerGroup whose arrival, change or departure moves another group's claim (on a
Redis group name or a scale target) makes the group keeper reconcile that one again."""

from __future__ import annotations

from typing import Any

import kopf

from .. import GROUP, VERSION
from ..runtime import Runtime


@kopf.on.event(GROUP, VERSION, "agentqueues")
@kopf.on.event(GROUP, VERSION, "consumergroups")
@kopf.on.event(GROUP, VERSION, "retentionpolicies")
async def remember(type: str | None, event: kopf.RawEvent, memo: kopf.Memo,
                   **_: Any) -> None:
    rt: Runtime | None = getattr(memo, "runtime", None)
    if rt is None:
        return
    raw = event["object"]  # the plain dict (kopf's Body is a live view)
    kind = str(raw.get("kind") or "")
    if type == "DELETED":
        meta = raw["metadata"]
        moved = rt.objects.drop(kind, meta["namespace"], meta["name"])
        rt.status.forget(kind, meta["namespace"], meta["name"])  # its lock, its last write
        rt.forget_spec(kind, meta["namespace"], meta["name"])
    else:
        moved = rt.objects.put(kind, raw)
    if moved:  # groups that won or lost a Redis group name or a scale target with it
        rt.groups.reconsider(raw["metadata"]["namespace"], moved)
