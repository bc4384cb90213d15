"""AgentQueue handlers: thin glue from kopf's events to services.queue_report (reconcile
and report) and the queue keeper (keepers/queues.py: drift checks and the SLO)."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

import kopf

from agentqueue_client import keys

from .. import GROUP, VERSION, events, reasons
from ..planning import deletion
from ..runtime import Runtime
from ..services import queues as svc
from ..services.queue_report import reconcile_and_report
from ..services.report import ready_status, run_reconcile, snapshot, write_status

PLURAL = "agentqueues"
KIND = "AgentQueue"


async def _reconcile(rt: Runtime, body: dict[str, Any], logger: kopf.Logger, *,
                     raise_errors: bool = True) -> None:
    outcome = await reconcile_and_report(rt, body, logger, drift=False,
                                         raise_errors=raise_errors)
    if outcome is not None and outcome.target is not None:
        meta = body["metadata"]
        rt.queues.track(meta["namespace"], meta["name"], outcome.target)


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
        return time.time() - dt.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
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


def _plain(body: kopf.Body) -> dict[str, Any]:
    """A plain-dict snapshot of the body (kopf's views are live)."""
    return snapshot(body)
