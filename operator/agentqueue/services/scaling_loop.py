"""A ConsumerGroup's tick: poll (shared hub) → decide (pure) → scale → status, in two
halves around the poll (`prepare`, `settle`) that the group keeper (keepers/groups.py)
calls from the poll's callbacks.

Stream and List groups share it; a List group has no Redis group to sweep or recreate
(its waiting work: redisgw/list_work.py).

Timestamps that must survive an operator restart (last scale, last time work was
waiting, for the cooldown) live in status, as KEDA does."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .. import events, reasons
from ..conditions import iso, now_iso, parse_time, set_condition
from ..kube import KubeNotFound
from ..metrics import GroupReport
from ..models import ConsumerGroupStatus, parse_duration
from ..planning import conflicts, group_status, scaling
from ..pollhub import PollResult, Quiet
from ..redisgw import deadletters, functions, list_sweep
from ..redisgw import groups as redis_groups
from ..redisgw.errors import RedisError
from ..redisgw.poller import GroupTarget
from ..runtime import Runtime
from . import groups as svc
from .errors import SpecProblem, Waiting

log = logging.getLogger("agentqueue.scaling")
CONFLICT_RECHECK_S = 10.0
SCALE_REFRESH_S = 5.0
IDLE_SWEEP_S = 60.0
QUIET_MAX_S = IDLE_SWEEP_S
"""An idle, settled group is woken at least this often without new figures (its idle
sweep is then due); 10,000 idle groups cost ~170 ticks a second, not 1,000. One with
nothing to sweep (no consumers, nothing pending or due) and an empty dead-letter queue
sleeps up to CTX_TTL_S: ~33 ticks a second for 10,000."""
CTX_TTL_S = 300.0
"""Re-resolve at least this often (the admin Secret may change); spec changes of the
group or its queue re-resolve at once (generation, Runtime.queue_versions)."""


@dataclass
class LoopState:
    history: scaling.ScaleHistory = field(default_factory=scaling.ScaleHistory)
    current: int | None = None
    current_read_at: float = 0.0
    conflict: tuple[str, str] | None = None
    """(reason, message) while something else scales the target (we then do not)."""
    conflict_checked_at: float = -1e9
    last_maintenance: float = 0.0
    last_status: dict[str, Any] = field(default_factory=dict)
    last_status_at: float = 0.0
    reclaimed: int = 0
    dead_lettered: int = 0
    dlq_cursor: dict[int, str] | None = None
    """Per partition, the last dead-letter entry counted (None: not set up yet)."""
    dlq_length_seen: float | None = None
    dlq_scan_due: bool = True
    loaded: bool = False
    last_active: float | None = None
    ctx: svc.GroupContext | None = None
    ctx_key: tuple[Any, ...] = ()
    ctx_at: float = 0.0
    quiet: Quiet | None = None
    request: GroupTarget | None = None
    """The last poll request, reused while equal: the poller keeps its layout and calls
    while the hub asks for the same objects (keepers/groups.py re-subscribes each tick)."""


@dataclass
class PollRequest:
    """What a group asks of its server's shared poll (pollhub) before its next tick."""

    server: str
    get_client: Callable[[], Any]
    request: GroupTarget
    interval: float
    quiet: Quiet | None


def _ready_condition(body: dict[str, Any]) -> dict[str, Any]:
    status = body.get("status") or {}
    ready = next((c for c in status.get("conditions") or [] if c.get("type") == reasons.READY),
                 None)
    if not ready or ready.get("reason") not in (reasons.ACTIVE, reasons.REDIS_UNAVAILABLE,
                                                 reasons.FALLBACK):
        raise Waiting(reasons.RECONCILING, "group not reconciled yet", 1.0)
    return ready


async def prepare(rt: Runtime, body: dict[str, Any], state: LoopState) -> PollRequest:
    """Before a tick: the group's context (cached), and what to ask of the poll."""
    meta = body["metadata"]
    ns = meta["namespace"]
    status = body.get("status") or {}
    _ready_condition(body)
    if not state.loaded:
        state.dead_lettered = int(status.get("deadLettered") or 0)
        cursor = status.get("deadLetterCursor")
        if cursor is not None or "deadLettered" not in status:
            state.dlq_cursor = {int(k): str(v) for k, v in (cursor or {}).items()}
        state.last_active = parse_time(status.get("lastActiveTime"))
        state.loaded = True
    # Resolving reads the AgentQueue and maybe a Secret from the API: not every tick.
    queue_ref = str(((body.get("spec") or {}).get("queueRef") or {}).get("name"))
    key = (meta.get("generation"), rt.queue_versions.get((ns, queue_ref), 0))
    if state.ctx is None or state.ctx_key != key or time.monotonic() - state.ctx_at > CTX_TTL_S:
        if state.ctx_key != key:
            # The spec changed since the last tick chose to stay quiet: decide again now.
            state.quiet = None
        state.ctx = await svc.resolve(rt, body, check_rivals=False)
        state.ctx_key, state.ctx_at = key, time.monotonic()
    ctx = state.ctx
    spec = ctx.spec
    # The operator's floor (an administrator's setting) wins over a faster spec.
    interval = max(parse_duration(spec.scaling.poll_interval), rt.config.min_poll_interval)
    request = GroupTarget(ns, spec.queue_ref.name, ctx.group, ctx.queue_spec.partitions,
                          ctx.queue_spec.type, ctx.queue_spec.priority_levels,
                          int(parse_duration(spec.visibility_timeout) * 1000))
    if request == state.request:
        request = state.request
    state.request = request
    target = ctx.target
    return PollRequest(target.key, lambda: rt.redis.get(target), request, interval,
                       state.quiet)


async def settle(rt: Runtime, body: dict[str, Any], state: LoopState, result: PollResult,
                 logger: Any) -> None:
    """After the poll: sweep, count dead letters, decide and scale, status and metrics."""
    meta = body["metadata"]
    ns, name = meta["namespace"], meta["name"]
    status = body.get("status") or {}
    ready = _ready_condition(body)
    ctx = state.ctx
    if ctx is None:
        raise Waiting(reasons.RECONCILING, "group not resolved yet", 1.0)
    spec = ctx.spec
    interval = max(parse_duration(spec.scaling.poll_interval), rt.config.min_poll_interval)
    state.quiet = None
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

    # Dead letters of the queue, as the queue keeper last read them (None: not yet).
    dlq_length = rt.queues.dead_letter_length(ns, spec.queue_ref.name)

    swept = 0
    if redis_ok and now - state.last_maintenance >= _sweep_interval(spec, figures):
        swept = await _sweep(rt, ctx, state, figures, dlq_length, now)

    # Dead letters: the sweep's and the consumers' own (nack on the last delivery,
    # malformed entries), counted from the dead-letter streams when they changed.
    if dlq_length != state.dlq_length_seen:
        state.dlq_scan_due = True
    if redis_ok and state.dlq_scan_due:
        await _recount_dead_letters(rt, body, ctx, state, swept, dlq_length, logger)

    # Scaling
    ref = spec.scale_target_ref
    if redis_ok and figures.waiting > 0:
        state.last_active = now
    desired, scaled, scaling_conds = await _scale(
        rt, body, ctx, state, figures.waiting if redis_ok else None, now, logger)
    for cond in scaling_conds:
        conditions = set_condition(conditions, *cond, gen)

    # Status and metrics from what was observed
    model = ConsumerGroupStatus(reclaimed=state.reclaimed, dead_lettered=state.dead_lettered,
                                current_replicas=state.current, desired_replicas=desired)
    if redis_ok:
        model.lag, model.pending = figures.lag, figures.pending
        model.due_retries, model.waiting = figures.due_retries, figures.waiting
        model.oldest_pending_age_seconds = round(figures.oldest_pending_age_s, 3)
        model.consumers = figures.consumers
    readiness = group_status.readiness(
        redis_ok, ready.get("reason"), ctx.group, str(result.error), ref is not None,
        spec.scaling.fallback_replicas is not None)
    if readiness is not None:
        conditions = set_condition(conditions, *readiness, gen)
    if state.dlq_cursor is not None:
        model.dead_letter_cursor = {str(k): v for k, v in sorted(state.dlq_cursor.items())}
    if scaled:
        model.last_scale_time = now_iso()
    new = model.to_patch()
    rt.groups.reports[(ns, name)] = _report(rt.groups.reports.get((ns, name)), spec,
                                            interval, state, desired,
                                            result if redis_ok else None)
    rt.group_figures_updated(ns, spec.queue_ref.name)  # the queue's SLO follows
    state.quiet = _quiet(rt, ns, name, state, figures if redis_ok else None, ctx, desired,
                         scaled, now)
    new["conditions"] = conditions
    comparable = dict(new)
    if state.last_active is not None:
        model.last_active_time = iso(state.last_active)  # not compared: moves while busy
        new = {**model.to_patch(), "conditions": conditions}
    if group_status.status_write_due(comparable, state.last_status, scaled,
                                     now - state.last_status_at,
                                     rt.config.status_min_interval):
        try:
            if not await _write_status(rt, ns, name, new, status.get("conditions")):
                return
        except KubeNotFound:
            return
        state.last_status, state.last_status_at = comparable, now


async def _scale(rt: Runtime, body: dict[str, Any], ctx: svc.GroupContext,
                 state: LoopState, waiting: int | None, now: float, logger: Any
                 ) -> tuple[int | None, bool, list[group_status.Cond]]:
    """Decide (planning/scaling) and write /scale unless something else scales the
    target. Returns (desired replicas, whether it scaled, the scaling conditions); no
    target: (None, False, [])."""
    meta = body["metadata"]
    ns, name = meta["namespace"], meta["name"]
    spec = ctx.spec
    ref = spec.scale_target_ref
    if ref is None:
        return None, False, []
    if now - state.conflict_checked_at >= CONFLICT_RECHECK_S:
        conflict = await scaling_conflict(rt, body, ref)
        if conflict is not None and conflict != state.conflict:
            events.warn(body, reason=conflict[0], message=conflict[1])
        state.conflict = conflict
        state.conflict_checked_at = now
    if state.current is None or now - state.current_read_at >= SCALE_REFRESH_S:
        try:
            info = await rt.kube.get_scale(ref.api_version, ref.kind, ns, ref.name)
            state.current, state.current_read_at = info.replicas, now
        except KubeNotFound:
            raise SpecProblem(reasons.SCALE_TARGET_NOT_FOUND,
                              f"{ref.kind}/{ref.name} not found") from None
    decision = scaling.decide(
        spec.scaling,
        scaling.ScaleObservation(current_replicas=state.current, waiting=waiting,
                                 last_active=state.last_active),
        state.history, now, paused=spec.paused)
    conds = group_status.scaling_conditions(state.conflict, decision.reason)
    if state.conflict or decision.desired == state.current:
        return decision.desired, False, conds
    await rt.kube.set_scale(ref.api_version, ref.kind, ns, ref.name, decision.desired)
    direction = "up" if decision.desired > (state.current or 0) else "down"
    rt.metrics.scale_events.labels(ns, name, direction).inc()
    events.info(body, reason=reasons.SCALED,
                message=f"scaled {ref.kind}/{ref.name} from {state.current} to "
                f"{decision.desired}: {decision.reason}")
    logger.info("scaled", extra={"from": state.current, "to": decision.desired,
                                 "why": decision.reason})
    state.current = decision.desired
    return decision.desired, True, conds


def _report(before: GroupReport | None, spec: Any, interval: float, state: LoopState,
            desired: int | None, result: PollResult | None) -> GroupReport:
    """The keeper's report of this tick: figures as last read (`result` None: Redis
    could not be read; the last figures stay, with their time, rather than drop to zero
    as if the work were done)."""
    report = GroupReport(queue=spec.queue_ref.name, poll_interval_s=interval,
                         current_replicas=state.current, desired_replicas=desired,
                         reclaimed_total=state.reclaimed,
                         dead_lettered_total=state.dead_lettered)
    if result is not None:
        report.figures, report.observed_at = result.figures, result.at
    elif before is not None and before.queue == report.queue:
        report.figures, report.observed_at = before.figures, before.observed_at
    return report


async def _sweep(rt: Runtime, ctx: svc.GroupContext, state: LoopState, figures: Any,
                 dlq_length: int | None, now: float) -> int:
    """What consumers do for each other, done whatever they are (docs/protocol.md 10):
    poison messages to the DLQ, due retries promoted; on a Stream dead consumers removed,
    on a List dead consumers' messages recovered. Returns how many it dead-lettered."""
    spec = ctx.spec
    state.last_maintenance = now
    swept = 0
    sweeping = ctx.is_list or _stream_sweep_has_work(figures)
    if sweeping:
        client = await rt.redis.get(ctx.target)
        visibility_ms = int(parse_duration(spec.visibility_timeout) * 1000)
        if ctx.is_list:
            listed = await list_sweep.sweep(client, list_sweep.ListQueue(
                ctx.partitions, ctx.group, ctx.queue_spec.priority_levels, visibility_ms,
                ctx.max_deliveries, ctx.queue_spec.dead_letter.enabled), int(now * 1000))
            state.reclaimed = listed.recovered
            swept = listed.dead_lettered
        else:
            res = await redis_groups.reclaim(client, ctx.partitions, ctx.group,
                                             visibility_ms, ctx.max_deliveries)
            # A gauge: entries past the timeout at this sweep, left for consumers to claim
            # (the operator cannot see a consumer's XAUTOCLAIM, so it cannot count claims).
            state.reclaimed = res.reclaimed
            swept = res.dead_lettered
            # Retries of consumers that never promote.
            await functions.promote_due(client, ctx.partitions, int(now * 1000))
            await redis_groups.remove_dead_consumers(
                client, ctx.partitions, ctx.group,
                int(parse_duration(spec.dead_consumer_timeout) * 1000))
    else:
        state.reclaimed = 0  # nothing pending: nothing past the timeout
    # Then a recount, whatever the sweep did (the queue keeper's dead-letter lengths are
    # up to a drift interval old; a dead-letter queue trimmed at its cap keeps its length
    # while entries arrive). Without a sweep, an empty one has nothing new to count.
    state.dlq_scan_due = state.dlq_scan_due or sweeping or dlq_length != 0
    return swept


def _sweep_interval(spec: Any, figures: Any) -> float:
    """Half the visibility timeout while entries are pending (they may expire) or retries
    are due (to promote); otherwise only dead consumers can need removing: once a minute
    is plenty."""
    half = max(1.0, parse_duration(spec.visibility_timeout) / 2)
    return half if figures.pending or figures.due_retries else max(half, IDLE_SWEEP_S)


def _stream_sweep_has_work(figures: Any) -> bool:
    """A Stream group's sweep can only act on pending entries (reclaim, dead-letter),
    due retries (promote) or consumers (remove the dead): an idle group with none of these
    (as the poll just read them) is not swept. 10,000 idle groups swept once a minute cost
    ~16% of a core in round trips that found nothing."""
    return bool(figures.pending or figures.due_retries or figures.consumers)


def _quiet(rt: Runtime, ns: str, name: str, state: LoopState, figures: Any,
           ctx: svc.GroupContext, desired: int | None, scaled: bool, now: float) -> Quiet | None:
    """Idle and settled (nothing waiting, pending or due; the target at its floor): the
    next ticks need not wake this loop while the poll shows the same figures, until
    the next time-based duty (sweep, /scale re-read) or QUIET_MAX_S. New work changes
    the figures and wakes it on the next poll, so reaction time is unchanged."""
    spec = ctx.spec
    if figures is None or scaled or figures.waiting or figures.pending or figures.due_retries:
        return None
    ref = spec.scale_target_ref
    floor = 0 if spec.paused else spec.scaling.min_replicas
    if ref is not None and (desired != state.current or (state.current or 0) != floor):
        return None  # a scale-down may become due with time (cooldown)
    mono = time.monotonic()
    sweep_at = (math.inf if ctx.is_list or not _stream_sweep_has_work(figures)
                else state.last_maintenance + _sweep_interval(spec, figures))
    # Nothing to sweep and no dead letters to recount: only the context's refresh is
    # due (changes of the group or its queue poke it: keepers/groups.queue_changed).
    longest = (CTX_TTL_S if not ctx.is_list and state.dlq_length_seen == 0
               and not state.dlq_scan_due else QUIET_MAX_S)
    until = mono + min(longest, max(0.0, sweep_at - now),
                       SCALE_REFRESH_S if ref is not None else longest)

    report = rt.groups.reports.get((ns, name))  # this tick's, just recorded
    return Quiet(figures, until, report.touch if report is not None else None)


async def _recount_dead_letters(rt: Runtime, body: dict[str, Any], ctx: svc.GroupContext,
                                state: LoopState, swept: int, dlq_length: int | None,
                                logger: Any) -> None:
    try:
        await _count_dead_letters(rt, body, ctx, state, swept)
    except RedisError as exc:  # the next tick tries again
        logger.warning("counting dead letters failed", extra={"error": str(exc)})
        return
    state.dlq_length_seen = dlq_length
    state.dlq_scan_due = False


async def _count_dead_letters(rt: Runtime, body: dict[str, Any], ctx: svc.GroupContext,
                              state: LoopState, swept: int) -> None:
    """Add the group's new dead-letter entries to `state.dead_lettered`; an Event says
    how many. A new group counts from its creation; one whose status predates the
    cursor (an upgrade) starts at the current end of the dead-letter queues."""
    client = await rt.redis.get(ctx.target)
    if state.dlq_cursor is None:
        state.dlq_cursor = await deadletters.last_id(client, ctx.partitions)
        return
    created = parse_time(body["metadata"].get("creationTimestamp")) or 0.0
    starts = {p.partition: (f"({state.dlq_cursor[p.partition]}"
                            if p.partition in state.dlq_cursor else f"{int(created * 1000)}-0")
              for p in ctx.partitions}
    count, last = await deadletters.count_dead_letters(client, ctx.partitions, ctx.group,
                                                       starts)
    state.dlq_cursor.update(last)
    if count:
        state.dead_lettered += count
        by_sweep = (f" ({min(swept, count)} by the operator's sweep: not acknowledged after "
                    f"{ctx.max_deliveries} deliveries)" if swept else "")
        events.warn(body, reason=reasons.DEAD_LETTERED,
                    message=f"{count} message(s) of group {ctx.group!r} moved to the "
                    f"dead-letter queue{by_sweep}")


async def _write_status(rt: Runtime, ns: str, name: str, new: dict[str, Any],
                        seen: list[dict[str, Any]] | None) -> bool:
    """Through the status writer: the conditions this tick changed (relative to `seen`,
    the body it started from) replace the current ones; the handler's (Paused) stay."""
    await rt.status.write("ConsumerGroup", ns, name, new, {"conditions": seen})
    return rt.objects.get("ConsumerGroup", ns, name) is not None


async def scaling_conflict(rt: Runtime, body: dict[str, Any],
                           ref: Any) -> tuple[str, str] | None:
    """(reason, message) when something else scales or controls the target: an HPA or
    KEDA ScaledObject, a ConsumerGroup created before this one, or a controller that owns
    the workload (it would undo or fight our /scale writes). None: ours to scale."""
    meta = body["metadata"]
    ns, name = meta["namespace"], meta["name"]
    target = f"{ref.kind}/{ref.name}"
    other = await rt.kube.competing_autoscaler(ns, ref.api_version, ref.kind, ref.name)
    if other:
        return (reasons.HPA_CONFLICT,
                f"{other} already scales {target}; agentqueue does not scale it")
    me = conflicts.Claim(str(meta.get("creationTimestamp") or ""), name)
    rival = conflicts.scale_target_rival(me, [
        c for c in rt.objects.target_claims(ns, ref.kind, ref.name) if c.name != name])
    if rival is not None:
        return (reasons.SCALER_CONFLICT,
                f"ConsumerGroup {rival.name!r} (created first) already scales {target}; "
                "this one does not scale it")
    controller = await rt.kube.workload_controller(ref.api_version, ref.kind, ns, ref.name)
    if controller:
        return (reasons.WORKLOAD_CONTROLLED,
                f"{target} is controlled by {controller}; agentqueue does not scale it")
    return None
