"""One lifecycle skeleton for every kind: run a reconcile, turn its outcome or failure
into conditions, an Event and the right kopf error. Status is written explicitly
(schema-declared fields), never returned from a handler."""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import kopf

from .. import events, reasons
from ..conditions import get_condition, set_condition
from ..kube import KubeError, KubeUnavailable
from ..redisgw.errors import RedisAuthError, RedisUnavailable
from ..runtime import Runtime
from ..services.errors import SpecProblem, Waiting

T = TypeVar("T")
RETRY_NOW_S = 0.1
"""kopf's retry delay after a wait that already took the time."""
log = logging.getLogger("agentqueue.report")


def snapshot(body: Mapping[str, Any]) -> dict[str, Any]:
    """A plain-dict copy of a kopf body (kopf's views are live), without
    metadata.managedFields: nothing here reads them, and they are most of the bytes a
    copy per daemon tick would duplicate."""
    out: dict[str, Any] = {}
    for key, value in body.items():
        if key == "metadata":
            value = {k: v for k, v in value.items() if k != "managedFields"}
        out[key] = copy.deepcopy(value)
    return out


def ready_status(body: dict[str, Any], ok: bool, reason: str, message: str,
                 extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """A status patch with Ready set; other conditions are kept."""
    status = body.get("status") or {}
    gen = body["metadata"].get("generation")
    conditions = set_condition(status.get("conditions"), reasons.READY, ok, reason, message, gen)
    out = {"observedGeneration": gen, "conditions": conditions}
    out.update(extra or {})
    return out


KINDS = {"agentqueues": "AgentQueue", "consumergroups": "ConsumerGroup",
         "retentionpolicies": "RetentionPolicy"}


async def write_status(rt: Runtime, plural: str, body: dict[str, Any],
                       status: dict[str, Any]) -> None:
    """Hand `status` (computed from `body`'s) to the status writer (status.py): only
    the conditions changed relative to `body` replace the current ones, and nothing is
    sent when nothing would change (drift checks and keepers recompute the same status
    every interval; each patch is an API write and an event to every watcher)."""
    meta = body["metadata"]
    await rt.status.write(KINDS[plural], meta["namespace"], meta["name"], status,
                          body.get("status"), fallback=body.get("status") or {})


def _event_worthy(body: dict[str, Any], reason: str) -> bool:
    """Post an Event when the Ready reason changes, not on every retry."""
    cond = get_condition((body.get("status") or {}).get("conditions"), reasons.READY)
    return not cond or cond.get("reason") != reason or cond.get("status") != "False"


async def run_reconcile(
    rt: Runtime,
    kind: str,
    plural: str,
    body: dict[str, Any],
    fn: Callable[[], Awaitable[T]],
    *,
    raise_errors: bool = True,
) -> T | None:
    """Run `fn`; on failure set Ready=False with a reason and raise the kopf error that
    makes kopf retry (transient) or stop (invalid spec). Returns fn's result."""
    started = time.monotonic()
    reason, message, delay, permanent = "", "", 0.0, False
    depends_on = None
    try:
        return await fn()
    except SpecProblem as exc:
        reason, message = exc.reason, exc.message
        permanent, delay = exc.retry_after is None, exc.retry_after or 0.0
        depends_on = exc.depends_on
    except Waiting as exc:
        reason, message, delay = exc.reason, exc.message, exc.delay
        depends_on = exc.depends_on
    except RedisUnavailable as exc:
        rt.metrics.redis_up.inc()
        reason, message, delay = reasons.REDIS_UNAVAILABLE, str(exc), 10.0
    except RedisAuthError as exc:
        reason, message, delay = reasons.REDIS_AUTH_FAILED, str(exc), 30.0
    except KubeUnavailable as exc:
        reason, message, delay = "KubernetesUnavailable", str(exc), 5.0
    except KubeError as exc:
        reason, message, delay = "KubernetesError", str(exc), 30.0
    finally:
        rt.metrics.reconcile_duration.labels(kind).observe(time.monotonic() - started)
    rt.metrics.reconcile_errors.labels(kind, reason).inc()
    if _event_worthy(body, reason):
        events.warn(body, reason=reason, message=message)
    try:
        await write_status(rt, plural, body, ready_status(body, False, reason, message))
    except KubeError as exc:
        log.warning("could not write status", extra={"error": str(exc)})
    if not raise_errors:
        return None
    if permanent:
        raise kopf.PermanentError(f"{reason}: {message}")
    if depends_on is not None:
        # Waiting for a queue (to appear, to be Ready): retry as soon as its handlers
        # have run, at the latest after `delay` (events, not timers).
        await rt.wait_queue_changed(depends_on, delay)
        delay = RETRY_NOW_S
    raise kopf.TemporaryError(f"{reason}: {message}", delay=delay)
