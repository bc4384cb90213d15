"""The per-ConsumerGroup loop: poll (shared hub) → decide (pure) → scale → status.

Timestamps that must survive an operator restart (last scale, last time work was
waiting, for the cooldown) live in status, as KEDA does."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import kopf

from .. import events, reasons
from ..conditions import now_iso, set_condition
from ..kube import KubeError, KubeNotFound
from ..metrics import GroupFigures
from ..models import parse_duration
from ..planning import scaling
from ..redisgw import groups as redis_groups
from ..redisgw.errors import RedisError
from ..redisgw.poller import GroupTarget
from ..runtime import Runtime
from . import groups as svc
from .errors import SpecProblem, Waiting
from .queues import _iso, _parse_time

log = logging.getLogger("agentqueue.scaling")
CONFLICT_RECHECK_S = 10.0
SCALE_REFRESH_S = 5.0
CTX_TTL_S = 15.0


@dataclass
class LoopState:
    history: scaling.ScaleHistory = field(default_factory=scaling.ScaleHistory)
    current: int | None = None
    current_read_at: float = 0.0
    conflict: str | None = None
    conflict_checked_at: float = -1e9
    last_maintenance: float = 0.0
    last_status: dict[str, Any] = field(default_factory=dict)
    last_status_at: float = 0.0
    reclaimed: int = 0
    dead_lettered: int = 0
    loaded: bool = False
    last_active: float | None = None
    ctx: svc.GroupContext | None = None
    ctx_key: tuple[Any, ...] = ()
    ctx_at: float = 0.0


async def run(rt: Runtime, get_body: Callable[[], dict[str, Any]], stopped: kopf.DaemonStopped,
              logger: kopf.Logger) -> None:
    state = LoopState()
    while not stopped:
        body = get_body()
        try:
            await tick(rt, body, state, logger)
        except (SpecProblem, Waiting):
            await asyncio.sleep(2.0)  # the create/update handler reports these
        except (RedisError, KubeError) as exc:
            logger.warning("scaling tick failed", extra={"error": str(exc)})
            await asyncio.sleep(1.0)


async def tick(rt: Runtime, body: dict[str, Any], state: LoopState,
               logger: kopf.Logger) -> None:
    meta = body["metadata"]
    ns, name = meta["namespace"], meta["name"]
    status = body.get("status") or {}
    ready = next((c for c in status.get("conditions") or [] if c.get("type") == reasons.READY),
                 None)
    if not ready or ready.get("reason") not in (reasons.ACTIVE, reasons.REDIS_UNAVAILABLE,
                                                 reasons.FALLBACK):
        raise Waiting(reasons.RECONCILING, "group not reconciled yet", 1.0)
    if not state.loaded:
        state.dead_lettered = int(status.get("deadLettered") or 0)
        state.last_active = _parse_time(status.get("lastActiveTime"))
        state.loaded = True
    # Resolving reads the AgentQueue and maybe a Secret from the API: not every tick.
    key = (meta.get("generation"),)
    if state.ctx is None or state.ctx_key != key or time.monotonic() - state.ctx_at > CTX_TTL_S:
        state.ctx = await svc.resolve(rt, body)
        state.ctx_key, state.ctx_at = key, time.monotonic()
    ctx = state.ctx
    spec = ctx.spec
    interval = parse_duration(spec.scaling.poll_interval)
    request = GroupTarget(ns, spec.queue_ref.name, ctx.group, ctx.queue_spec.partitions)
    result = await rt.hub.next(ctx.target.key, lambda: rt.redis.get(ctx.target), (ns, name),
                               request, interval)
    now = time.time()
    gen = meta.get("generation")
    conditions = status.get("conditions")
    figures = result.figures
    redis_ok = result.error is None and figures is not None
    if result.error is not None and not isinstance(result.error, RedisError):
        raise result.error

    # Drift: the group vanished (Redis restarted without persistence) → recreate it.
    if redis_ok and figures.missing_partitions:
        state.ctx = None
        await svc.reconcile_group(rt, body)
        events.info(body, reason=reasons.DRIFT_REPAIRED,
                  message=f"recreated group {ctx.group!r} on partitions "
                  f"{sorted(figures.missing_partitions)}")

    # Poison messages to the DLQ, dead consumers removed: not every tick.
    if redis_ok and now - state.last_maintenance >= max(
            1.0, parse_duration(spec.visibility_timeout) / 2):
        state.last_maintenance = now
        client = await rt.redis.get(ctx.target)
        res = await redis_groups.reclaim(
            client, ctx.partitions, ctx.group,
            int(parse_duration(spec.visibility_timeout) * 1000), ctx.max_deliveries)
        # A gauge: entries past the timeout at this sweep, left for consumers to claim
        # (the operator cannot see a consumer's XAUTOCLAIM, so it cannot count claims).
        state.reclaimed = res.reclaimed
        state.dead_lettered += res.dead_lettered
        if res.dead_lettered:
            events.warn(body, reason=reasons.DEAD_LETTERED,
                      message=f"{res.dead_lettered} message(s) exceeded {ctx.max_deliveries} "
                      "deliveries and were moved to the dead-letter queue")
        await redis_groups.remove_dead_consumers(
            client, ctx.partitions, ctx.group,
            int(parse_duration(spec.dead_consumer_timeout) * 1000))

    # Scaling
    ref = spec.scale_target_ref
    desired: int | None = None
    scaled = False
    if ref is not None:
        if now - state.conflict_checked_at >= CONFLICT_RECHECK_S:
            state.conflict = await rt.kube.competing_autoscaler(ns, ref.api_version, ref.kind,
                                                                ref.name)
            state.conflict_checked_at = now
        if state.current is None or now - state.current_read_at >= SCALE_REFRESH_S:
            try:
                info = await rt.kube.get_scale(ref.api_version, ref.kind, ns, ref.name)
                state.current, state.current_read_at = info.replicas, now
            except KubeNotFound:
                raise SpecProblem(reasons.SCALE_TARGET_NOT_FOUND,
                                  f"{ref.kind}/{ref.name} not found") from None
        if redis_ok and figures.waiting > 0:
            state.last_active = now
        decision = scaling.decide(
            spec.scaling,
            scaling.ScaleObservation(
                current_replicas=state.current,
                waiting=figures.waiting if redis_ok else None,
                last_active=state.last_active,
            ),
            state.history, now, paused=spec.paused)
        desired = decision.desired
        if state.conflict:
            conditions = set_condition(conditions, reasons.SCALING_CONFLICT, True,
                                       reasons.HPA_CONFLICT,
                                       f"{state.conflict} already scales {ref.kind}/{ref.name};"
                                       " agentqueue does not scale it", gen)
        else:
            conditions = set_condition(conditions, reasons.SCALING_CONFLICT, False,
                                       reasons.NO_CONFLICT, "", gen)
            if decision.desired != state.current:
                await rt.kube.set_scale(ref.api_version, ref.kind, ns, ref.name,
                                        decision.desired)
                direction = "up" if decision.desired > (state.current or 0) else "down"
                rt.metrics.scale_events.labels(ns, name, direction).inc()
                events.info(body, reason=reasons.SCALED,
                          message=f"scaled {ref.kind}/{ref.name} from {state.current} to "
                          f"{decision.desired}: {decision.reason}")
                logger.info("scaled", extra={"from": state.current, "to": decision.desired,
                                             "why": decision.reason})
                state.current = decision.desired
                scaled = True
        conditions = set_condition(conditions, reasons.SCALING_ACTIVE, not state.conflict,
                                   reasons.SCALED if not state.conflict else reasons.HPA_CONFLICT,
                                   decision.reason, gen)

    # Status and metrics from what was observed
    new: dict[str, Any] = {
        "reclaimed": state.reclaimed,
        "deadLettered": state.dead_lettered,
        "currentReplicas": state.current,
        "desiredReplicas": desired,
    }
    if redis_ok:
        new.update({
            "lag": figures.lag, "pending": figures.pending, "dueRetries": figures.due_retries,
            "waiting": figures.waiting,
            "oldestPendingAgeSeconds": round(figures.oldest_pending_age_s, 3),
            "consumers": figures.consumers,
        })
        if figures.waiting > 0:
            state.last_active = now
        if ready.get("reason") != reasons.ACTIVE:
            conditions = set_condition(conditions, reasons.READY, True, reasons.ACTIVE,
                                       f"group {ctx.group!r} readable again", gen)
    else:
        msg = f"cannot read Redis: {result.error}"
        reason = reasons.FALLBACK if (ref and spec.scaling.fallback_replicas is not None) \
            else reasons.REDIS_UNAVAILABLE
        conditions = set_condition(conditions, reasons.READY, False, reason, msg, gen)
    if scaled:
        new["lastScaleTime"] = now_iso()
    rt.metrics.groups[(ns, name)] = GroupFigures(
        queue=spec.queue_ref.name,
        lag=figures.lag if redis_ok else 0, pending=figures.pending if redis_ok else 0,
        due_retries=figures.due_retries if redis_ok else 0,
        oldest_pending_age_seconds=figures.oldest_pending_age_s if redis_ok else 0,
        consumers=figures.consumers if redis_ok else 0,
        current_replicas=state.current, desired_replicas=desired,
        reclaimed_total=state.reclaimed, dead_lettered_total=state.dead_lettered)
    new["conditions"] = conditions
    comparable = dict(new)
    if state.last_active is not None:
        new["lastActiveTime"] = _iso(state.last_active)
    due = now - state.last_status_at >= rt.config.status_min_interval
    transition = comparable.get("conditions") != state.last_status.get("conditions") or (
        comparable.get("waiting") == 0) != (state.last_status.get("waiting") == 0)
    if comparable != state.last_status and (scaled or due or transition):
        try:
            if not await _write_status(rt, ns, name, new, status.get("conditions")):
                return
        except KubeNotFound:
            return
        state.last_status, state.last_status_at = comparable, now


async def _write_status(rt: Runtime, ns: str, name: str, new: dict[str, Any],
                        seen: list[dict[str, Any]] | None) -> bool:
    """Patch status without clobbering conditions another writer set meanwhile.

    The daemon's body can lag behind the create/update handler (which sets Paused and
    Ready); a merge patch replaces the whole conditions list, so merge into the fresh
    object, under the per-object lock, only the conditions this loop changed."""
    ours = {c["type"]: c for c in new["conditions"] or []}
    before = {c["type"]: c for c in seen or []}
    changed = {t for t, c in ours.items() if before.get(t) != c}
    async with rt.locked("ConsumerGroup", ns, name):
        fresh = await rt.kube.get_object("consumergroups", ns, name)
        if fresh is None:
            return False
        merged = [ours[c["type"]] if c.get("type") in changed else c
                  for c in (fresh.get("status") or {}).get("conditions") or []]
        present = {c.get("type") for c in merged}
        merged += [c for t, c in ours.items() if t in changed and t not in present]
        await rt.kube.patch_status("consumergroups", ns, name, {**new, "conditions": merged})
    return True
