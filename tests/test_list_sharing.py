"""Runtime.list_including: the conflict checks of many new objects share LISTs, and
each gets a LIST that contains it (read after it was created)."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from agentqueue.config import OperatorConfig
from agentqueue.metrics import Metrics
from agentqueue.pollhub import PollHub
from agentqueue.redisgw.connection import RedisPool
from agentqueue.runtime import RestartWatcher, Runtime


class Kube:
    def __init__(self) -> None:
        self.names: list[str] = []
        self.lists = 0

    async def list_objects(self, plural: str, namespace: str) -> list[dict[str, Any]]:
        self.lists += 1
        seen = list(self.names)  # what exists when the LIST is read
        await asyncio.sleep(0.05)
        return [{"metadata": {"name": n}} for n in seen]


async def _no_poll(client: Any, requests: list[Any]) -> list[Any]:
    return []


async def test_a_burst_of_new_objects_shares_a_few_lists_each_containing_its_caller() -> None:
    kube = Kube()
    pool = RedisPool()
    rt = Runtime(config=OperatorConfig(), kube=cast(Any, kube), redis=pool,
                 watcher=RestartWatcher(pool, 1.0), metrics=Metrics(), hub=PollHub(_no_poll))

    async def new_object(i: int) -> None:
        kube.names.append(f"g{i}")  # created, then its handler asks
        items = await rt.list_including("consumergroups", "ns", f"g{i}")
        assert f"g{i}" in {o["metadata"]["name"] for o in items}

    async def burst() -> None:
        for i in range(200):
            asyncio.ensure_future(new_object(i))
            await asyncio.sleep(0.001)

    tasks: list[asyncio.Task[None]] = []
    await burst()
    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    await asyncio.gather(*tasks)
    # ~0.3 s of arrivals, 50 ms per LIST, one in flight and one queued at a time.
    assert kube.lists <= 12, kube.lists
