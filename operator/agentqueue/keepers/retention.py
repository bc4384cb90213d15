"""The retention keeper: every RetentionPolicy applied on its interval by one loop, with
no task per policy. A queue appearing or changing makes the policies of its namespace
due at once (a policy reacts to a queue it selects without waiting an interval)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from ..kube import KubeError
from ..services import retention as svc

if TYPE_CHECKING:
    from ..runtime import Runtime

log = logging.getLogger("agentqueue.retention")
KIND = "RetentionPolicy"
CONCURRENCY = 4
QUEUE_CHANGE_DELAY_S = 0.5
"""Queue changes within this time (a burst of creates) share one run."""
FIRST_RUN_S = 2.0
"""After the handler applied a policy, its next run comes at most this late... or its
interval, whichever is shorter."""


class RetentionKeeper:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.due: dict[tuple[str, str], float] = {}
        self.wake = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self.due)

    def track(self, namespace: str, name: str, interval: float) -> None:
        clock = asyncio.get_running_loop().time()
        self.due[(namespace, name)] = clock + min(interval, FIRST_RUN_S)
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self._run(),
                                                               name="retention-keeper")
        self.wake.set()

    def untrack(self, namespace: str, name: str) -> None:
        self.due.pop((namespace, name), None)

    def queue_changed(self, namespace: str) -> None:
        """A queue of `namespace` appeared or changed: its policies run now."""
        hit = False
        soon = asyncio.get_running_loop().time() + QUEUE_CHANGE_DELAY_S
        for key, at in self.due.items():
            if key[0] == namespace and at > soon:
                self.due[key] = soon
                hit = True
        if hit:
            self.wake.set()

    async def _run(self) -> None:
        clock = asyncio.get_running_loop()
        gate = asyncio.Semaphore(CONCURRENCY)
        while self.due:
            now = clock.time()
            if self.rt.paused:  # another replica is active
                await asyncio.sleep(1.0)
                continue
            ready = [k for k, at in self.due.items() if at <= now]
            if ready:
                await asyncio.gather(*(self._apply(k, gate) for k in ready))
                continue
            self.wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(),
                                       max(0.0, min(self.due.values()) - clock.time()))

    async def _apply(self, key: tuple[str, str], gate: asyncio.Semaphore) -> None:
        body = self.rt.objects.get(KIND, *key)
        if body is None or body["metadata"].get("deletionTimestamp"):
            self.due.pop(key, None)
            return
        self.due[key] = asyncio.get_running_loop().time() + svc.interval_of(body)
        async with gate:
            try:
                await svc.apply_and_report(self.rt, body, raise_errors=False)
            except KubeError as exc:
                log.warning("retention run failed", extra={"error": str(exc),
                                                           "policy": f"{key[0]}/{key[1]}"})

    async def close(self) -> None:
        self.due.clear()
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
