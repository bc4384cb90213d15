"""At least once, with no loss: consumer subprocesses SIGKILLed at random points and
restarted while messages flow; with idempotency keys and ``once()`` every side effect
happens exactly once."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from agentqueue_client import Outgoing, Producer

from .agents.harness import agent_env, part, provision, sdk_config

pytest_plugins = ["tests.redis_fixtures"]

GROUP = "drill"
WORKER = Path(__file__).parent / "agents" / "worker.py"


class Fleet:
    """Worker subprocesses we start, kill and restart (only our own PIDs)."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env = env
        self.log = log.open("ab")
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.kills = 0
        self.generation = 0

    def start(self, name: str) -> None:
        self.procs[name] = subprocess.Popen([sys.executable, str(WORKER), name], env=self.env,
                                            stdout=subprocess.DEVNULL, stderr=self.log)

    def kill_one(self, rng: random.Random) -> None:
        name = rng.choice(sorted(self.procs))
        proc = self.procs.pop(name)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        self.kills += 1
        # Half the time the replacement keeps the name (container restart), half the
        # time it is a new pod (new consumer name).
        self.generation += 1
        self.start(name if rng.random() < 0.5 else f"{name.split('.')[0]}.{self.generation}")

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.log.close()


async def _drill(redis_server: Any, admin: Any, tmp_path: Path, n: int, workers: int,
                 timeout: float) -> None:
    cfg = sdk_config(redis_server, f"drill{n}", partitions=2)
    await provision(admin, cfg, group=GROUP, visibility_ms=500, max_deliveries=50,
                    retry_initial_ms=50, retry_max_ms=200)
    env = agent_env(cfg, AQ_GROUP=GROUP, AQ_RESULTS_KEY="drill:results",
                    AQ_STATS_KEY="drill:stats", AQ_WORK_MS="3", AQ_FAIL_RATE="0.03",
                    AQ_CONCURRENCY="3")
    rng = random.Random(int(os.environ.get("AQ_DRILL_SEED", "7")))
    fleet = Fleet(env, tmp_path / "workers.log")
    for i in range(workers):
        fleet.start(f"w{i}")

    async def produce() -> None:
        async with Producer(cfg) as producer:
            for start in range(0, n, 500):
                await producer.send_many([Outgoing({"i": i}, idempotency_key=f"m-{i}")
                                          for i in range(start, min(n, start + 500))])
                await asyncio.sleep(0.05)
            # A producer retrying after a timeout: duplicates are dropped at the source.
            await producer.send_many([Outgoing({"i": i}, idempotency_key=f"m-{i}")
                                      for i in range(0, n, 10)])

    t0 = time.monotonic()
    producing = asyncio.create_task(produce())
    try:
        while True:
            await asyncio.sleep(rng.uniform(0.25, 0.6))
            done = await _settled(admin, cfg, n)
            if done and producing.done():
                break
            assert time.monotonic() - t0 < timeout, f"not done after {timeout}s"
            if not done:
                fleet.kill_one(rng)
    finally:
        await producing
        fleet.stop()
    elapsed = time.monotonic() - t0

    results = {k: int(v) for k, v in (await admin.hgetall("drill:results")).items()}
    stats = {k: int(v) for k, v in (await admin.hgetall("drill:stats")).items()}
    entries = sum([await admin.xlen(part(cfg, p).queue_key) for p in range(2)])
    pending = sum([(await admin.xpending(part(cfg, p).queue_key, GROUP))["pending"]
                   for p in range(2)])
    dead = sum([await admin.xlen(part(cfg, p).dead_letter) for p in range(2)])
    lost = n - len(results)
    duplicated_effects = sum(results.values()) - len(results)
    print(f"\nat-least-once drill: sent={n} processed={len(results)} "
          f"acked_entries={entries - pending} (incl. {entries - n} retries) lost={lost} "
          f"duplicated_effects={duplicated_effects} "
          f"redeliveries_caught_by_once={stats.get('skipped', 0)} "
          f"deliveries={stats.get('deliveries', 0)} nacked={stats.get('failed', 0)} "
          f"kills={fleet.kills} dead_lettered={dead} in {elapsed:.1f}s")
    assert lost == 0
    assert duplicated_effects == 0
    assert set(results) == {f"m-{i}" for i in range(n)}
    assert pending == 0 and dead == 0
    assert fleet.kills >= 3


async def _settled(admin: Any, cfg: Any, n: int) -> bool:
    """Every message processed, acked, and no retry waiting."""
    if await admin.hlen("drill:results") < n:
        return False
    for p in range(2):
        k = part(cfg, p)
        if (await admin.xpending(k.queue_key, GROUP))["pending"] or await admin.zcard(k.retry):
            return False
        info = {g["name"]: g for g in await admin.xinfo_groups(k.queue_key)}
        last = await admin.xrevrange(k.queue_key, "+", "-", count=1)
        if last and info[GROUP]["last-delivered-id"] != last[0][0]:
            return False
    return True


async def test_sigterm_finishes_in_flight_work(redis_server: Any, redis_client: Any,
                                               tmp_path: Path) -> None:
    cfg = sdk_config(redis_server, "graceful")
    await provision(redis_client, cfg, group=GROUP, visibility_ms=500)
    env = agent_env(cfg, AQ_GROUP=GROUP, AQ_RESULTS_KEY="g:results", AQ_STATS_KEY="g:stats",
                    AQ_WORK_MS="400", AQ_CONCURRENCY="3")
    async with Producer(cfg) as producer:
        await producer.send_many([Outgoing({"i": i}, idempotency_key=f"g-{i}")
                                  for i in range(6)])
    log = (tmp_path / "w.log").open("ab")
    worker = subprocess.Popen([sys.executable, str(WORKER), "first"], env=env,
                              stdout=subprocess.DEVNULL, stderr=log)
    try:
        deadline = time.monotonic() + 15
        while int(await redis_client.hget("g:stats", "deliveries") or 0) < 3:
            assert time.monotonic() < deadline and worker.poll() is None
            await asyncio.sleep(0.02)
        worker.send_signal(signal.SIGTERM)
        t0 = time.monotonic()
        assert await asyncio.to_thread(worker.wait, 5) == 0
        assert time.monotonic() - t0 < 2.5  # in-flight work (<= 0.6 s), not the backlog
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    assert await redis_client.hlen("g:results") == 3  # the in-flight three finished
    pending = (await redis_client.xpending(part(cfg).queue_key, GROUP))["pending"]
    assert pending == 3  # read but not started: left pending, not lost
    heir = subprocess.Popen([sys.executable, str(WORKER), "heir"], env=env,
                            stdout=subprocess.DEVNULL, stderr=log)
    try:
        deadline = time.monotonic() + 15
        while await redis_client.hlen("g:results") < 6:
            assert time.monotonic() < deadline, "the pending three were not reclaimed"
            await asyncio.sleep(0.05)
    finally:
        heir.send_signal(signal.SIGTERM)
        await asyncio.to_thread(heir.wait, 10)
        log.close()
    assert set((await redis_client.hgetall("g:results")).values()) == {"1"}


async def test_no_loss_under_sigkill(redis_server: Any, redis_client: Any,
                                     tmp_path: Path) -> None:
    await _drill(redis_server, redis_client, tmp_path, n=2000, workers=3, timeout=60)


@pytest.mark.slow
async def test_no_loss_under_sigkill_10k(redis_server: Any, redis_client: Any,
                                         tmp_path: Path) -> None:
    await _drill(redis_server, redis_client, tmp_path, n=10_000, workers=4, timeout=180)
