"""The group keeper: every ConsumerGroup's poll → decide → scale, driven by the shared
poll of its Redis server (pollhub), with no task per group.

A tracked group is an entry here and a subscription in its server's poll. When the
poll has figures worth a tick (they changed, or a time-based duty is due: see
services/scaling_loop `_quiet`), the hub calls back; the keeper then runs the group's
`settle` and `prepare` in a short task and re-subscribes. Errors retry after a delay
(timer handles, not sleeping tasks). The ConsumerGroup handlers track and untrack."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .. import reasons
from ..kube import KubeError
from ..metrics import GroupReport
from ..pollhub import PollResult
from ..redisgw.errors import RedisError
from ..services import scaling_loop
from ..services.errors import SpecProblem, Waiting

if TYPE_CHECKING:
    from ..runtime import Runtime

log = logging.getLogger("agentqueue.scaling")
KIND = "ConsumerGroup"
RETRY_SPEC_S = 2.0
"""A group whose spec or queue is not usable yet: its handler reports why; look again."""
RETRY_ERROR_S = 1.0
PAUSED_RECHECK_S = 1.0
RETRY_UNSEEN_S = 0.2
"""The handler reconciled the group but the watch has not brought its status yet."""


@dataclass
class _Entry:
    state: scaling_loop.LoopState = field(default_factory=scaling_loop.LoopState)
    busy: bool = False
    retry: asyncio.TimerHandle | None = None


class ObjectLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """Log lines about one object: its reference merged into each call's `extra`."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        kwargs["extra"] = {**(self.extra or {}), **(kwargs.get("extra") or {})}
        return msg, kwargs


class GroupKeeper:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.entries: dict[tuple[str, str], _Entry] = {}
        self.reports: dict[tuple[str, str], GroupReport] = {}
        """Per group, what its last tick observed and did: read by status, the queue's
        SLO and the metrics."""
        self._tasks: set[asyncio.Task[None]] = set()
        self._reconsidering: set[tuple[str, str]] = set()

    def __len__(self) -> int:
        return len(self.entries)

    def track(self, namespace: str, name: str) -> None:
        """Scale this group from now on (idempotent; a spec change re-resolves at the
        next tick by generation)."""
        key = (namespace, name)
        entry = self.entries.get(key)
        if entry is None:
            entry = self.entries[key] = _Entry()
            self._spawn(key, None)
        else:
            self.rt.hub.poke(key)
            if entry.retry is not None:  # waiting after an error: try now
                entry.retry.cancel()
                entry.retry = None
                self._spawn(key, None)

    def untrack(self, namespace: str, name: str, *, deleted: bool = True) -> None:
        key = (namespace, name)
        entry = self.entries.pop(key, None)
        if entry is not None and entry.retry is not None:
            entry.retry.cancel()
        self.rt.hub.forget(key)
        if deleted:
            self.forget_report(namespace, name)

    def reconsider(self, namespace: str, names: list[str]) -> None:
        """Reconcile these groups again, as their handler would: another group's arrival,
        change or departure changed which of them keeps a Redis group name (the watch
        brings objects in the order kopf's workers handle them, not strictly in creation
        order, so a check at create time can miss an older rival by a moment)."""
        for name in names:
            key = (namespace, name)
            if key in self._reconsidering:
                continue
            self._reconsidering.add(key)
            task = asyncio.get_running_loop().create_task(self._reconsider(key),
                                                          name=f"reconsider-{namespace}/{name}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _reconsider(self, key: tuple[str, str]) -> None:
        from ..services import group_report  # the report imports services that import us

        logger = ObjectLog(log, {"object": {"namespace": key[0], "name": key[1],
                                            "kind": KIND}})
        try:
            body = self.rt.objects.get(KIND, *key)
            if body is None or body["metadata"].get("deletionTimestamp"):
                return
            await group_report.reconcile_and_report(self.rt, body, logger, raise_errors=False)
        except Exception:
            log.exception("reconsidering a group failed", extra={"group": key})
        finally:
            self._reconsidering.discard(key)
        entry = self.entries.get(key)
        if entry is not None:
            entry.state.conflict_checked_at = -1e9  # a scale target's claim may have moved
            self.track(*key)

    def queue_changed(self, namespace: str, names: list[str]) -> None:
        """Their queue changed (spec, readiness, deletion): the groups tracked here tick
        at the next poll and resolve again (a quiet group may otherwise sleep for
        minutes)."""
        for name in names:
            if (namespace, name) in self.entries:
                self.rt.hub.poke((namespace, name))

    def forget_report(self, namespace: str, name: str) -> None:
        self.reports.pop((namespace, name), None)

    def _spawn(self, key: tuple[str, str], result: PollResult | None) -> None:
        entry = self.entries.get(key)
        if entry is None or entry.busy:
            return
        entry.busy = True
        entry.retry = None
        task = asyncio.get_running_loop().create_task(self._step(key, entry, result),
                                                      name=f"group-{key[0]}/{key[1]}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _deliver(self, key: tuple[str, str]) -> Any:
        def deliver(result: PollResult) -> None:
            self._spawn(key, result)
        return deliver

    async def _step(self, key: tuple[str, str], entry: _Entry,
                    result: PollResult | None) -> None:
        """Settle the last poll's figures (if any), then subscribe for the next."""
        delay: float | None = None
        logger = ObjectLog(log, {"object": {"namespace": key[0], "name": key[1],
                                            "kind": KIND}})
        try:
            body = self.rt.objects.get(KIND, *key)
            if body is None or self.entries.get(key) is not entry:
                return  # deleted or untracked meanwhile
            if self.rt.paused:  # another replica is active: look again later
                delay = PAUSED_RECHECK_S
            else:
                if result is not None:
                    await scaling_loop.settle(self.rt, body, entry.state, result, logger)
                    body = self.rt.objects.get(KIND, *key) or body
                ask = await scaling_loop.prepare(self.rt, body, entry.state)
                if self.entries.get(key) is entry:
                    self.rt.hub.subscribe(ask.server, ask.get_client, key, ask.request,
                                          ask.interval, ask.quiet, self._deliver(key))
        except Waiting as exc:
            delay = RETRY_UNSEEN_S if exc.reason == reasons.RECONCILING else RETRY_SPEC_S
        except SpecProblem:
            delay = RETRY_SPEC_S  # the create/update handler reports these
        except (RedisError, KubeError) as exc:
            logger.warning("scaling tick failed", extra={"error": str(exc)})
            delay = RETRY_ERROR_S
        except Exception:
            log.exception("scaling tick failed unexpectedly", extra={"group": key})
            delay = RETRY_ERROR_S
        finally:
            entry.busy = False
        if delay is not None and self.entries.get(key) is entry:
            entry.retry = asyncio.get_running_loop().call_later(
                delay, self._spawn, key, None)

    async def close(self) -> None:
        for entry in self.entries.values():
            if entry.retry is not None:
                entry.retry.cancel()
        self.entries.clear()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
