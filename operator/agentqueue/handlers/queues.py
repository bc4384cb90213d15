"""AgentQueue handlers: thin glue around services.queues, and the keeper daemon (drift
repair, and the queue's SLO)."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from dataclasses import dataclass
from typing import Any

import kopf

from agentqueue_client import keys

from .. import GROUP, VERSION, events, reasons
from ..conditions import get_condition, merge_changed, remove_condition, set_condition
from ..kube import KubeError
from ..planning import deletion, server_risks, slo
from ..planning.server_risks import Risk
from ..runtime import Runtime
from ..services import queues as svc
from ..services.errors import SpecProblem
from .report import changes_status, ready_status, run_reconcile, snapshot, write_status

PLURAL = "agentqueues"
KIND = "AgentQueue"
SLO_MIN_GAP_S = 0.25
"""Group figures of several groups arrive together: evaluate the SLO once for them."""
SLO_HEAL_AFTER_S = 5.0
"""Our watched body should show what we wrote by then; if not, another writer dropped it."""


async def _reconcile(rt: Runtime, body: dict[str, Any], logger: kopf.Logger,
                     *, drift: bool, raise_errors: bool = True) -> svc.QueueOutcome | None:
    meta = body["metadata"]
    async with rt.locked(KIND, meta["namespace"], meta["name"]):
        outcome = await run_reconcile(
            rt, KIND, PLURAL, body, lambda: svc.reconcile_queue(rt, body, time.time(), drift=drift),
            raise_errors=raise_errors)
        if outcome is None:
            return None
        extra = dict(outcome.status)
        was_ready = (body.get("status") or {}).get("observedGeneration") is not None
        if drift and outcome.repaired and was_ready:
            detail = ", ".join(outcome.repaired)[:1000]
            events.info(body, reason=reasons.DRIFT_REPAIRED, message=f"repaired: {detail}")
            logger.warning("drift repaired", extra={"repaired": outcome.repaired})
            from ..conditions import now_iso
            extra["lastRepair"] = now_iso()
            extra["lastRepairDetail"] = detail
        if outcome.rotated:
            events.info(body, reason=reasons.CREDENTIALS_ROTATED,
                      message="new passwords in the Secrets; the previous ones work until "
                      f"{outcome.status['credentials'].get('previousExpires')}")
        if outcome.problem is not None:
            reason, message = outcome.problem
            current = get_condition((body.get("status") or {}).get("conditions"),
                                    reasons.READY)
            if not current or current.get("reason") != reason:
                events.warn(body, reason=reason, message=message)
            status = ready_status(body, False, reason, message, extra)
        else:
            status = ready_status(body, True, reasons.PROVISIONED,
                                  f"{extra['type']} queue with {len(extra['partitions'])} "
                                  f"partition(s) and {len(extra['users'])} user(s) in Redis",
                                  extra)
        status["conditions"] = _risk_condition(body, status["conditions"], outcome.risks)
        await _write_merged(rt, body, status)
        if drift and outcome.problem is None and (get_condition(
                (body.get("status") or {}).get("conditions"), reasons.READY) or {}
                ).get("status") != "True":
            # Ready again (Redis came back): its waiting ConsumerGroups retry now. The
            # event handlers do this in their own `finally`.
            rt.queue_changed(meta["namespace"], meta["name"])
        if not meta.get("deletionTimestamp"):  # a deleted queue's series stay deleted
            counters = outcome.slo_sample.counters if outcome.slo_sample else None
            retries = counters.retries if counters is not None else {}
            rt.metrics.observe_queue(meta["namespace"], meta["name"], {
                p["index"]: {"length": p["length"], "dead_letter_length": p["deadLetterLength"],
                             "scheduled_retries": p["scheduledRetries"],
                             "memory_bytes": p["memoryBytes"],
                             **({"retries_total": float(retries[p["index"]])}
                                if p["index"] in retries else {})}
                for p in extra["partitions"]})
        return outcome


def _risk_condition(body: dict[str, Any], conditions: list[dict[str, Any]],
                    risks: list[Risk]) -> list[dict[str, Any]]:
    """`RedisConfigRisk`: True while a server of the queue is configured to lose data
    (planning/server_risks), with a Warning Event when that starts or changes."""
    gen = body["metadata"].get("generation")
    if not risks:
        return set_condition(conditions, reasons.REDIS_CONFIG_RISK, False,
                             reasons.NO_KNOWN_RISK, "", gen)
    reason = risks[0].reason if len({r.reason for r in risks}) == 1 else reasons.SEVERAL_RISKS
    message = server_risks.summary(risks)[:1000]
    before = get_condition((body.get("status") or {}).get("conditions"),
                           reasons.REDIS_CONFIG_RISK)
    if not before or before.get("status") != "True" or before.get("message") != message:
        events.warn(body, reason=reason, message=message)
    return set_condition(conditions, reasons.REDIS_CONFIG_RISK, True, reason, message, gen)


async def _write_merged(rt: Runtime, body: dict[str, Any], status: dict[str, Any]) -> None:
    """Write `status` over the object as it is now: our body may be older than a
    condition another writer (the SLO, retention) set meanwhile, so only the conditions
    we changed replace theirs. Nothing changed from what our body shows: no API call at
    all (the keeper's drift checks mostly find nothing). The caller holds the lock."""
    if not changes_status(body, status):
        return
    meta = body["metadata"]
    fresh = await rt.kube.get_object(PLURAL, meta["namespace"], meta["name"])
    if fresh is None:
        return  # deleted meanwhile
    status = dict(status)
    status["conditions"] = merge_changed((fresh.get("status") or {}).get("conditions"),
                                         status.get("conditions"),
                                         (body.get("status") or {}).get("conditions"))
    await write_status(rt, PLURAL, fresh, status)  # skipped if fresh already says so


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec")
@kopf.on.update(GROUP, VERSION, PLURAL, field=f"metadata.annotations.{svc.ROTATE_ANNOTATION}")
async def reconcile(body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger,
                    **_: Any) -> None:
    rt: Runtime = memo.runtime
    try:
        await _reconcile(rt, _plain(body), logger, drift=False)
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
        await _reconcile(rt, _plain(body), logger, drift=False, raise_errors=False)
    finally:
        rt.queue_changed(body["metadata"]["namespace"], body["metadata"]["name"])


@kopf.index(GROUP, VERSION, "consumergroups")
def consumer_groups_by_queue(namespace: str | None, name: str, spec: kopf.Spec,
                             **_: Any) -> dict[tuple[str, str], str] | None:
    """ConsumerGroup names by (namespace, queue): which groups' figures make a queue's
    depth (kept by kopf from the watch it runs anyway)."""
    ref = (spec.get("queueRef") or {}).get("name")
    if not namespace or not isinstance(ref, str):
        return None
    return {(namespace, ref): name}


@kopf.daemon(GROUP, VERSION, PLURAL, cancellation_timeout=2.0, initial_delay=1.0)
async def keeper(stopped: kopf.DaemonStopped, body: kopf.Body, memo: kopf.Memo,
                 logger: kopf.Logger, **kwargs: Any) -> None:
    """Drift repair: re-check Redis every drift interval, and at once after Redis
    restarted or failed over (a new run_id), so nobody has to touch the manifest.

    The SLO: evaluated after each observation of the queue, and whenever one of its
    ConsumerGroups got new figures from the shared poll (no Redis access of its own)."""
    rt: Runtime = memo.runtime
    group_index: kopf.Index[tuple[str, str], str] = kwargs["consumer_groups_by_queue"]
    meta = body["metadata"]
    ns, name = meta["namespace"], meta["name"]
    figures_event = rt.watch_group_figures(ns, name)
    state = SLOState()
    restart: asyncio.Event | None = None
    clock = asyncio.get_running_loop()
    next_drift = clock.time() + min(rt.config.drift_interval, 5.0)
    try:
        while not stopped:
            wants_slo = state.observed and bool((body.get("spec") or {}).get("slo"))
            wake = [e for e in (restart, figures_event if wants_slo else None) if e]
            await _wait_any(wake, next_drift - clock.time())
            if stopped:
                return
            if clock.time() >= next_drift or (restart is not None and restart.is_set()):
                if restart is not None and restart.is_set():
                    state.counters = None  # a restarted Redis may have lost the counters
                try:
                    outcome = await _reconcile(rt, _plain(body), logger, drift=True,
                                               raise_errors=False)
                except KubeError as exc:  # writing status failed: next drift check
                    logger.warning("could not write status", extra={"error": str(exc)})
                    outcome = None
                next_drift = clock.time() + rt.config.drift_interval
                # A failed observation leaves no sample: the SLO says what it cannot see.
                state.sample = outcome.slo_sample if outcome is not None else None
                state.observe_counters(state.sample)
                state.observed = state.observed or outcome is not None
                if outcome is not None and outcome.target is not None:
                    restart = rt.watcher.watch(outcome.target)
            figures_event.clear()
            if state.observed and not stopped:
                groups = list(group_index.get((ns, name), []))
                try:
                    await _update_slo(rt, _plain(body), state, groups)
                except KubeError as exc:  # the next evaluation tries again
                    logger.warning("could not write the SLO condition",
                                   extra={"error": str(exc)})
                await asyncio.sleep(SLO_MIN_GAP_S)
    except asyncio.CancelledError:
        return
    finally:
        rt.unwatch_group_figures(ns, name)


async def _wait_any(events_: list[asyncio.Event], timeout: float) -> None:
    """Until one of `events_` is set, or `timeout` seconds."""
    if timeout <= 0:
        return
    if not events_:
        await asyncio.sleep(timeout)
        return
    waiters = [asyncio.ensure_future(e.wait()) for e in events_]
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()


@dataclass
class SLOState:
    """The keeper's memory of its queue's SLO (status is the record; this avoids
    rewriting it, and Events, on every evaluation)."""

    sample: slo.QueueSample | None = None
    """The queue's last observation (None: the last attempt failed)."""
    observed: bool = False
    """The keeper observed the queue once: from then on the SLO is evaluated."""
    written: tuple[str, str, str] | None = None
    """(status, reason, message) of the SLOBreached condition we last wrote or found."""
    written_at: float = 0.0
    breached: frozenset[str] | None = None
    """Objectives already announced as breached (None: not known yet)."""
    counters: slo.RetryCounters | None = None
    """The retry and delivery counters as last read (the start of the next window)."""
    retry: slo.RetryWindow | None = None
    """Retries and deliveries between the last two observations (maxRetryRate)."""

    def observe_counters(self, sample: slo.QueueSample | None) -> None:
        """A new observation closes the retry window. A failed one leaves no figure but
        keeps the start: the next window spans the gap (a reset in between shows as
        counters going back, or as a Redis restart, which drops the start)."""
        if sample is None:
            self.retry = None
            return
        self.retry = slo.retry_window(self.counters, sample.counters)
        self.counters = sample.counters


async def _update_slo(rt: Runtime, body: dict[str, Any], state: SLOState,
                      groups: list[str]) -> None:
    """Evaluate the SLO from what was observed; set the gauges every time, and the
    SLOBreached condition and Events on transitions (message refreshes are throttled
    like other status figures)."""
    meta = body["metadata"]
    if meta.get("deletionTimestamp"):
        return
    ns, name = meta["namespace"], meta["name"]
    try:
        spec = svc.parse_spec(body.get("spec") or {}, rt.config.max_schema_bytes)
    except SpecProblem:
        return  # the handler reports it
    load = svc.slo_load(rt.metrics, ns, name, spec, state.sample, groups, time.time(),
                        state.retry)
    result = slo.assess(spec.slo, load)
    rt.metrics.set_slo(ns, name, result.gauges if result else {})
    current = get_condition((body.get("status") or {}).get("conditions"), reasons.SLO_BREACHED)
    seen = ((current.get("status", ""), current.get("reason", ""), current.get("message", ""))
            if current else None)
    now = time.monotonic()
    if state.breached is None:  # first look since start: what status says was announced
        state.written, state.written_at = seen, now
        state.breached = (result.breached if result and seen and seen[0] == "True"
                          else frozenset())
    if result is None:  # no objective (any more)
        if current is not None:
            await _write_slo_condition(rt, body, None)
        state.written, state.written_at, state.breached = None, now, frozenset()
        return
    desired = (result.status, result.reason, result.message)
    known = result.breached if result.status != "Unknown" else state.breached
    transition = (state.written is None or desired[:2] != state.written[:2]
                  or known != state.breached)
    refresh = (state.written is not None and desired[2] != state.written[2]
               and now - state.written_at >= rt.config.status_min_interval)
    healed = (state.written is not None and (seen is None or seen[:2] != state.written[:2])
              and now - state.written_at >= SLO_HEAL_AFTER_S)
    if not (transition or refresh or healed):
        return
    await _write_slo_condition(rt, body, result)  # KubeError: nothing recorded, retried
    state.written, state.written_at = desired, now
    newly = known - state.breached
    if newly:
        events.warn(body, reason=result.reason,
                    message=f"SLO breached: {result.message}")
    elif state.breached and result.status == "False":
        events.info(body, reason=reasons.SLO_MET, message=f"SLO recovered: {result.message}")
    state.breached = known


async def _write_slo_condition(rt: Runtime, body: dict[str, Any],
                               result: slo.SLOStatus | None) -> None:
    """Set (or, for None, remove) SLOBreached on the object as it is now."""
    meta = body["metadata"]
    ns, name = meta["namespace"], meta["name"]
    async with rt.locked(KIND, ns, name):
        fresh = await rt.kube.get_object(PLURAL, ns, name)
        if fresh is None or fresh["metadata"].get("deletionTimestamp"):
            return
        conditions = (fresh.get("status") or {}).get("conditions")
        if result is None:
            conditions = remove_condition(conditions, reasons.SLO_BREACHED)
        else:
            conditions = set_condition(conditions, reasons.SLO_BREACHED, result.status,
                                       result.reason, result.message,
                                       fresh["metadata"].get("generation"))
        await write_status(rt, PLURAL, fresh, {"conditions": conditions})


@kopf.on.delete(GROUP, VERSION, PLURAL)
async def delete(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    rt: Runtime = memo.runtime
    plain = _plain(body)

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
