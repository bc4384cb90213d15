"""The queue keeper: every AgentQueue's drift check and SLO, in one loop per Redis
server, with no task per queue.

Each drift interval the server's loop reads every due queue of that server in a few
batched round trips (provision.observe_queues: keys, lengths, metadata, memory;
backlog: retry counters and waiting ages; the streams' last ids; users.acl_digests: one
ACL LIST per primary instead of an ACL GETUSER per user), then reconciles each queue from
that observation (services.queues.reconcile_queue with `pre`): a queue whose
observation is unchanged since a clean check, with no time-based duty due (rotation, a
Secret re-read), is not reconciled again. A new run_id (restart, failover) makes every
queue of the server due at once (users are re-created on the new primary).

The SLO is evaluated after each observation of its queue and whenever one of the
queue's ConsumerGroups got new figures from the shared poll (no Redis access)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from agentqueue_client import keys

from .. import events, reasons
from ..conditions import get_condition, remove_condition, set_condition
from ..kube import KubeError
from ..planning import slo
from ..planning.slo_announce import REMOVE, Announced, announce, observe_counters
from ..redisgw import backlog, provision, users
from ..redisgw.connection import RedisTarget
from ..redisgw.errors import RedisError
from ..services import queue_report
from ..services import queues as svc
from ..services.errors import SpecProblem
from ..services.report import write_status
from .groups import ObjectLog

if TYPE_CHECKING:
    from ..runtime import Runtime

log = logging.getLogger("agentqueue.keeper")
KIND = "AgentQueue"
PLURAL = "agentqueues"
FIRST_CHECK_MAX_S = 5.0
"""A queue's first drift check after its handler ran: at most this late."""
SLO_MIN_GAP_S = 0.25
"""Group figures of several groups arrive together: evaluate the SLO once for them."""
SLO_HEAL_AFTER_S = 5.0
"""Our watched body should show what we wrote by then; if not, another writer dropped it."""
CONCURRENCY = 16
"""Queues reconciled at once by one server's loop (only those the batched read flags)."""
SECRET_READS_PER_ROUND = 200
"""Credentials Secrets re-read per server per drift round at most (the rest wait for the
next round): 10,000 queues must not turn one round into 10,000 API reads."""
FULL_CHECK_EVERY = 20
"""Rounds after which a queue is reconciled even if its observation did not change (at
most: each queue starts counting at a random 0..FULL_CHECK_EVERY/2, so queues created
together spread their full checks over rounds instead of all reconciling in one). A
safety net only: what the observation cannot see has its own schedule (credentials
Secrets are re-read by `svc.time_due`); every 10 rounds made 10,000 idle queues cost
~15% of a core in reconciles that found nothing."""
PAUSED_RECHECK_S = 1.0


@dataclass
class SLOState:
    """The keeper's memory of a queue's SLO (status is the record; this avoids
    rewriting it, and Events, on every evaluation)."""

    sample: slo.QueueSample | None = None
    """The queue's last observation (None: the last attempt failed)."""
    observed: bool = False
    """The keeper observed the queue once: from then on the SLO is evaluated."""
    announced: Announced = field(default_factory=Announced)
    counters: slo.RetryCounters | None = None
    """The retry and delivery counters as last read (the start of the next window)."""
    retry: slo.RetryWindow | None = None
    """Retries and deliveries between the last two observations (maxRetryRate)."""

    def observe(self, sample: slo.QueueSample | None) -> None:
        self.sample = sample
        self.counters, self.retry = observe_counters(self.counters, sample)


@dataclass
class _Queue:
    server: str
    next_due: float
    slo: SLOState = field(default_factory=SLOState)
    slo_dirty: bool = False
    fingerprint: int | None = None
    """Of the last observation after which a reconcile found nothing to do."""
    unchanged_rounds: int = 0
    verified: dict[str, users.UserDigest] = field(default_factory=dict)
    """Username -> its ACL LIST digests when last compared with GETUSER and found right."""
    streams_seen: tuple[Any, ...] | None = None
    """The stream lengths at the last exhaustion check, and what it found: a stream
    becomes exhausted by an XADD, which mostly changes its length (one trimmed to a
    constant length, or an entry deleted again, is caught by the check every
    FULL_CHECK_EVERY rounds)."""
    streams_rounds: int = 0


class _Server:
    def __init__(self, keeper: QueueKeeper, target: RedisTarget) -> None:
        self.keeper = keeper
        self.target = target
        self.keys: set[tuple[str, str]] = set()
        self.dirty: set[tuple[str, str]] = set()
        """Queues whose SLO may need evaluating (slo_dirty): the loop looks at these, not
        at every queue, when woken (a group's figures wake it many times a second)."""
        self.earliest = 0.0
        """No queue of this server is due before this (a lower bound)."""
        self.wake = asyncio.Event()
        self.task = asyncio.get_running_loop().create_task(
            self._run(), name=f"queue-keeper-{target.display}")

    async def _run(self) -> None:
        rt = self.keeper.rt
        clock = asyncio.get_running_loop()
        restart = rt.watcher.watch(self.target)
        while self.keys:
            restarted = restart.is_set()
            if restarted:
                restart = rt.watcher.watch(self.target)
            now = clock.time()
            queues = self.keeper.queues
            if rt.paused:  # another replica is active: nothing is due here
                await asyncio.sleep(PAUSED_RECHECK_S)
                continue
            if restarted or now >= self.earliest:
                due = sorted(k for k in self.keys if restarted or queues[k].next_due <= now)
                if due:
                    await self.keeper.drift(self, due, restarted)
                self.earliest = min((queues[k].next_due for k in self.keys if k in queues),
                                    default=math.inf)
            candidates, self.dirty = self.dirty, set()
            dirty = []
            for k in sorted(candidates):
                entry = queues.get(k)
                if entry is None or k not in self.keys or not entry.slo_dirty:
                    continue
                if entry.slo.observed:
                    dirty.append(k)
                else:
                    self.dirty.add(k)  # evaluated once it has an observation
            for key in dirty:
                queues[key].slo_dirty = False
                await self.keeper.evaluate_slo(key)
            if dirty:
                await asyncio.sleep(SLO_MIN_GAP_S)
            if not self.keys:
                break
            next_due = self.earliest
            self.wake.clear()
            waiters = [asyncio.ensure_future(self.wake.wait()),
                       asyncio.ensure_future(restart.wait())]
            try:
                await asyncio.wait(waiters, timeout=max(0.0, next_due - clock.time()),
                                   return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waiters:
                    w.cancel()
        self.keeper.servers.pop(self.target.key, None)


class QueueKeeper:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.queues: dict[tuple[str, str], _Queue] = {}
        self.servers: dict[str, _Server] = {}

    def __len__(self) -> int:
        return len(self.queues)

    def track(self, namespace: str, name: str, target: RedisTarget,
              sample: slo.QueueSample | None = None) -> None:
        """Keep this queue from now on, on `target`'s loop (idempotent; a queue whose
        Redis changed moves to the other loop). `sample`: the handler's observation,
        the SLO's first (its next comes with the next drift round)."""
        key = (namespace, name)
        clock = asyncio.get_running_loop().time()
        entry = self.queues.get(key)
        if entry is not None and entry.server != target.key:
            self._leave(key, entry)
            entry = None
        if entry is None:
            # The handler just observed and reconciled it: the next look is a drift
            # interval away (at most FIRST_CHECK_MAX_S without the handler's sample).
            first = self.rt.config.drift_interval
            if sample is None:
                first = min(first, FIRST_CHECK_MAX_S)
            entry = self.queues[key] = _Queue(target.key, clock + first)
        if sample is not None:
            entry.slo.observe(sample)
            entry.slo.observed = True
            entry.slo_dirty = True
        entry.fingerprint = None  # the handler changed something: reconcile next round
        server = self.servers.get(target.key)
        if server is None or server.task.done():
            server = self.servers[target.key] = _Server(self, target)
        server.target = target
        server.keys.add(key)
        server.earliest = min(server.earliest, entry.next_due)
        if entry.slo_dirty:
            server.dirty.add(key)
        server.wake.set()

    def untrack(self, namespace: str, name: str) -> None:
        key = (namespace, name)
        entry = self.queues.pop(key, None)
        if entry is not None:
            self._leave(key, entry)

    def _leave(self, key: tuple[str, str], entry: _Queue) -> None:
        server = self.servers.get(entry.server)
        if server is not None:
            server.keys.discard(key)
            server.wake.set()

    def dead_letter_length(self, namespace: str, queue: str) -> int | None:
        """The queue's dead-letter entries at its last observation (None: not observed,
        or the last attempt failed): the group keeper recounts a group's dead letters
        when this moves."""
        entry = self.queues.get((namespace, queue))
        sample = entry.slo.sample if entry is not None else None
        return sample.dead_letter_length if sample is not None else None

    def figures_updated(self, namespace: str, queue: str) -> None:
        """A ConsumerGroup of the queue has new figures: its SLO is evaluated again."""
        entry = self.queues.get((namespace, queue))
        if entry is None:
            return
        entry.slo_dirty = True
        server = self.servers.get(entry.server)
        if server is not None:
            server.dirty.add((namespace, queue))
            server.wake.set()

    async def close(self) -> None:
        servers = list(self.servers.values())
        self.servers.clear()
        self.queues.clear()
        for server in servers:
            server.task.cancel()
        for server in servers:
            with contextlib.suppress(asyncio.CancelledError):
                await server.task

    # --- the drift round -------------------------------------------------------------
    async def drift(self, server: _Server, due: list[tuple[str, str]], restarted: bool) -> None:
        rt = self.rt
        now = time.time()
        next_due = asyncio.get_running_loop().time() + rt.config.drift_interval
        items: list[tuple[tuple[str, str], dict[str, Any], Any]] = []
        for key in due:
            entry = self.queues.get(key)
            if entry is None:
                continue
            entry.next_due = next_due
            if restarted:
                entry.slo.counters = None  # a restarted Redis may have lost the counters
                entry.fingerprint = None
            body = rt.objects.get(KIND, *key)
            if body is None or body["metadata"].get("deletionTimestamp"):
                continue
            try:
                spec = rt.parsed_spec(KIND, body, lambda raw: svc.parse_spec(
                    raw, rt.config.max_schema_bytes))
            except SpecProblem:
                continue  # the handler reports it
            items.append((key, body, spec))
        if not items:
            return
        failure: BaseException | None = None
        pre: dict[tuple[str, str], svc.PreObserved] = {}
        digests: dict[str, users.UserDigest] = {}
        risks: Any = None
        try:
            client = await rt.redis.get(server.target)
            risks = await rt.server_risks(server.target, client)
            pre, digests = await self._observe(client, items)
        except RedisError as exc:
            failure = exc  # every queue of the server reports it, without its own attempt
        budget = [SECRET_READS_PER_ROUND]
        gate = asyncio.Semaphore(CONCURRENCY)

        async def one(key: tuple[str, str], body: dict[str, Any], spec: Any) -> None:
            entry = self.queues.get(key)
            if entry is None:
                return
            seen = pre.get(key)
            fingerprint = None
            if seen is not None:
                seen.secret_reads = budget
                names = [keys.acl_username(key[0], key[1], e.name)
                         for _, e in spec.access.entries()]
                fingerprint = hash(repr((seen.observed, seen.counters, seen.waiting_age,
                                         seen.jammed, risks, [digests.get(u) for u in names],
                                         body["metadata"].get("generation"),
                                         body["metadata"].get("annotations"))))
                if (fingerprint == entry.fingerprint and not restarted
                        and entry.unchanged_rounds < FULL_CHECK_EVERY
                        and all(seen.user_ok(u) for u in names)
                        and not svc.time_due(rt, body, spec, now)):
                    entry.unchanged_rounds += 1
                    entry.slo.observe(entry.slo.sample)  # the same observation again
                    entry.slo_dirty = entry.slo_dirty or _has_slo(spec, body)
                    if entry.slo_dirty:
                        server.dirty.add(key)
                    return
            async with gate:
                logger = ObjectLog(log, {"object": {"namespace": key[0], "name": key[1],
                                                    "kind": KIND}})
                try:
                    outcome = await queue_report.reconcile_and_report(
                        rt, body, logger, drift=True, raise_errors=False, pre=seen,
                        failure=failure if seen is None else None)
                except KubeError as exc:  # writing status failed: the next round
                    logger.warning("could not write status", extra={"error": str(exc)})
                    outcome = None
            entry.slo.observe(outcome.slo_sample if outcome is not None else None)
            entry.slo.observed = entry.slo.observed or outcome is not None
            entry.slo_dirty = entry.slo_dirty or _has_slo(spec, body)
            if entry.slo_dirty:
                server.dirty.add(key)
            entry.unchanged_rounds = random.randrange(FULL_CHECK_EVERY // 2 + 1)
            clean = (outcome is not None and not outcome.repaired and outcome.problem is None
                     and not outcome.rotated)
            entry.fingerprint = fingerprint if clean else None
            if outcome is not None:
                for username in outcome.verified_users:
                    if digests.get(username) is not None:
                        entry.verified[username] = digests[username]
                if outcome.target is not None and outcome.target.key != entry.server:
                    self.track(key[0], key[1], outcome.target)

        await asyncio.gather(*(one(*item) for item in items))

    async def _observe(self, client: Any, items: list[tuple[tuple[str, str], dict[str, Any], Any]]
                       ) -> tuple[dict[tuple[str, str], svc.PreObserved],
                                  dict[str, users.UserDigest]]:
        """The batched reads of one round: a handful of round trips for all `items`."""
        observed = await provision.observe_queues(
            client, [(key[0], key[1], spec) for key, _, spec in items])
        parts = [keys.partition_keys(key[0], key[1], spec.partitions) for key, _, spec in items]
        counters = await backlog.retry_counters_many(
            client, [(p, str(spec.type)) for p, (_, _, spec) in zip(parts, items, strict=True)])
        aged = [i for i, (_, _, spec) in enumerate(items)
                if spec.slo is not None and spec.slo.max_waiting_age is not None]
        ages = dict(zip(aged, await backlog.oldest_waiting_ages(
            client, [(parts[i], str(items[i][2].type), items[i][2].priority_levels)
                     for i in aged]), strict=True))
        jammed: dict[int, list[str]] = {}
        lengths = {}
        check = []
        for i, (key, _, spec) in enumerate(items):
            if spec.type != "Stream":
                continue
            lengths[i] = tuple((p.length, p.dead_letter_length, p.queue_key_type,
                                p.dead_letter_type) for p in observed[i].partitions)
            entry = self.queues.get(key)
            seen = entry.streams_seen if entry is not None else None
            if entry is not None:
                entry.streams_rounds += 1
            if (seen is not None and seen[0] == lengths[i] and entry is not None
                    and entry.streams_rounds < FULL_CHECK_EVERY):
                jammed[i] = list(seen[1])  # no stream changed: as found last time
            else:
                check.append(i)
        found = await provision.exhausted_streams_many(client, [observed[i] for i in check])
        for i, streams in zip(check, found, strict=True):
            jammed[i] = streams
            entry = self.queues.get(items[i][0])
            if entry is not None:
                entry.streams_seen, entry.streams_rounds = (lengths[i], tuple(streams)), 0
        digests = await users.acl_digests(client)
        out = {}
        for i, (key, _, _) in enumerate(items):
            entry = self.queues.get(key)
            verified = entry.verified if entry is not None else {}

            def user_ok(username: str, verified: dict[str, users.UserDigest] = verified
                        ) -> bool:
                found = digests.get(username)
                return found is not None and verified.get(username) == found

            out[key] = svc.PreObserved(observed[i], counters[i], ages.get(i),
                                       jammed.get(i, []), user_ok)
        return out, digests

    # --- the SLO ---------------------------------------------------------------------
    async def evaluate_slo(self, key: tuple[str, str]) -> None:
        entry = self.queues.get(key)
        body = self.rt.objects.get(KIND, *key)
        if entry is None or body is None:
            return
        groups = self.rt.objects.groups_of(*key)
        if any((key[0], g) in self.rt.groups.entries and (key[0], g) not in self.rt.groups.reports
               for g in groups):
            return  # a new group's first figures are coming: its report wakes us then
        try:
            await update_slo(self.rt, body, entry.slo, groups)
        except KubeError as exc:  # the next evaluation tries again
            log.warning("could not write the SLO condition",
                        extra={"error": str(exc), "queue": f"{key[0]}/{key[1]}"})


def _has_slo(spec: Any, body: dict[str, Any]) -> bool:
    """The SLO is evaluated: it is set, or its condition is still there (to remove)."""
    return spec.slo is not None or get_condition(
        (body.get("status") or {}).get("conditions"), reasons.SLO_BREACHED) is not None


async def update_slo(rt: Runtime, body: dict[str, Any], state: SLOState,
                     groups: list[str]) -> None:
    """Evaluate the SLO from what was observed; set the gauges every time, and the
    SLOBreached condition and Events as planning/slo_announce decides."""
    meta = body["metadata"]
    if meta.get("deletionTimestamp"):
        return
    ns, name = meta["namespace"], meta["name"]
    try:
        spec = rt.parsed_spec(KIND, body, lambda raw: svc.parse_spec(
            raw, rt.config.max_schema_bytes))
    except SpecProblem:
        return  # the handler reports it
    load = svc.slo_load(rt.groups.reports, ns, name, spec, state.sample, groups, time.time(),
                        state.retry)
    result = slo.assess(spec.slo, load)
    rt.metrics.set_slo(ns, name, result.gauges if result else {})
    current = get_condition((body.get("status") or {}).get("conditions"), reasons.SLO_BREACHED)
    seen = ((current.get("status", ""), current.get("reason", ""), current.get("message", ""))
            if current else None)
    decision = announce(state.announced, result, seen, time.monotonic(),
                        rt.config.status_min_interval, SLO_HEAL_AFTER_S)
    state.announced = decision.adopted
    if decision.write is None:
        state.announced = decision.memory
        return
    await _write_slo_condition(rt, body, None if decision.write is REMOVE else decision.write)
    state.announced = decision.memory
    if decision.event is not None:
        kind, reason, message = decision.event
        (events.warn if kind == "Warning" else events.info)(body, reason=reason,
                                                            message=message)


async def _write_slo_condition(rt: Runtime, body: dict[str, Any],
                               condition: tuple[str, str, str] | None) -> None:
    """Set (or, for None, remove) SLOBreached, through the status writer."""
    conditions = (body.get("status") or {}).get("conditions")
    if condition is None:
        conditions = remove_condition(conditions, reasons.SLO_BREACHED)
    else:
        conditions = set_condition(conditions, reasons.SLO_BREACHED, *condition,
                                   body["metadata"].get("generation"))
    await write_status(rt, PLURAL, body, {"conditions": conditions})
