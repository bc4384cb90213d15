"""AgentQueue handlers: thin glue from kopf's events to services.queue_report (reconcile
and report) and the queue keeper (keepers/queues.py: drift checks and the SLO)."""

from __future__ import annotations

from typing import Any

import kopf

from .. import GROUP, VERSION
from ..runtime import Runtime
from ..services import queues as svc
from ..services.queue_report import delete_and_report, reconcile_and_report
from ..services.report import snapshot

PLURAL = "agentqueues"
KIND = "AgentQueue"


async def _reconcile(rt: Runtime, body: dict[str, Any], logger: kopf.Logger, *,
                     raise_errors: bool = True) -> None:
    outcome = await reconcile_and_report(rt, body, logger, drift=False,
                                         raise_errors=raise_errors)
    if outcome is not None and outcome.target is not None:
        meta = body["metadata"]
        rt.queues.track(meta["namespace"], meta["name"], outcome.target, outcome.slo_sample)


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec")
@kopf.on.update(GROUP, VERSION, PLURAL, field=f"metadata.annotations.{svc.ROTATE_ANNOTATION}")
async def reconcile(body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger,
                    **_: Any) -> None:
    rt: Runtime = memo.runtime
    try:
        await _reconcile(rt, _plain(body), logger)
    finally:
        rt.queue_changed(body["metadata"]["namespace"], body["metadata"]["name"])


def _schema_only_change(body: kopf.Body, memo: kopf.Memo, type: str | None,
                        **_: Any) -> bool:
    """A new generation whose schema differs from the one last parsed: kopf's diff
    does not see it (the diff-base leaves spec.schema out, see lifecycle.startup)."""
    if type != "MODIFIED" or body["metadata"].get("deletionTimestamp"):
        return False
    rt: Runtime | None = getattr(memo, "runtime", None)
    if rt is None:
        return False
    meta = body["metadata"]
    cached = rt.specs.get((KIND, meta["namespace"], meta["name"]))
    if cached is None or cached[0][0] == meta.get("generation"):
        return False  # not reconciled yet (the create handler runs), or up to date
    return bool(getattr(cached[1], "schema_", None) != (body.get("spec") or {}).get("schema"))


@kopf.on.event(GROUP, VERSION, PLURAL, when=_schema_only_change)
async def schema_changed(body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger,
                         **_: Any) -> None:
    rt: Runtime = memo.runtime
    try:
        await _reconcile(rt, _plain(body), logger, raise_errors=False)
    finally:
        rt.queue_changed(body["metadata"]["namespace"], body["metadata"]["name"])


@kopf.on.delete(GROUP, VERSION, PLURAL)
async def delete(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    rt: Runtime = memo.runtime
    plain = _plain(body)
    rt.queues.untrack(plain["metadata"]["namespace"], plain["metadata"]["name"])
    await delete_and_report(rt, plain)


def _plain(body: kopf.Body) -> dict[str, Any]:
    """A plain-dict snapshot of the body (kopf's views are live)."""
    return snapshot(body)
