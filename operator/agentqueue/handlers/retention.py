"""RetentionPolicy handlers: validate and apply, then hand the policy to the retention
keeper (keepers/retention.py), which applies it on its interval."""

from __future__ import annotations

import copy
from typing import Any

import kopf

from .. import GROUP, VERSION
from ..runtime import Runtime
from ..services import retention as svc

PLURAL = "retentionpolicies"


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec")
async def reconcile(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    rt: Runtime = memo.runtime
    plain = copy.deepcopy(dict(body))
    meta = plain["metadata"]
    try:
        await svc.apply_and_report(rt, plain, raise_errors=True)
    finally:
        rt.retention.track(meta["namespace"], meta["name"], svc.interval_of(plain))
