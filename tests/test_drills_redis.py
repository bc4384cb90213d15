"""Drills on Redis under the session operator (docs/drills.md):

- Redis with AOF (appendfsync always) restarted twice during traffic, once cleanly
  (SIGTERM) and once crashing (SIGKILL): producers and consumers (the SDK, with the
  credentials the operator issued) keep going; no acknowledged message is lost.
- Redis frozen (SIGSTOP) past every timeout, then thawed: its queue and group go
  Ready=False RedisUnavailable, queues on another Redis keep working, and both recover
  by themselves.

Redis restarted *without* persistence: tests/test_operator_redis_topologies.py
(`test_redis_restart_without_persistence_is_repaired`). Consumers SIGKILLed while
holding messages: tests/test_client_chaos.py (`test_no_loss_under_sigkill`).
"""

from __future__ import annotations

import asyncio
import base64
import collections
import json
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from agentqueue_client import ClientConfig, Consumer, Outgoing, Producer
from agentqueue_devtools.redisserver import RedisServer

from .operator_fixtures import condition, get_obj, wait_for, wait_ready, wait_reason
from .test_drills_common import say
from .test_operator_queue import apply, queue, secret_values

pytestmark = pytest.mark.k8s


def admin_secret(kubectl: Any, namespace: str, name: str, server: RedisServer) -> None:
    manifest = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name},
                "data": {k: base64.b64encode(v).decode()
                         for k, v in server.secret_data().items()}}
    kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(manifest))


def group(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "agentqueue.io/v1alpha1", "kind": "ConsumerGroup",
            "metadata": {"name": name}, "spec": spec}


def aof_server(workdir: Path, default_user: str) -> RedisServer:
    """Redis with AOF, appendfsync always (RedisServer(aof=True) already sets it; stated
    again so the drill does not depend on that default: an acknowledged write is on
    disk).

    default_user "off": `user default off`, as a
    hardened production server has it. "locked": `default` enabled with all permissions
    but an unknown random password (clients still must AUTH), which sidesteps the Redis
    AOF-replay bug described in docs/drills.md.
    """
    server = RedisServer(workdir, aof=True, extra_args=["--appendfsync", "always"],
                         default_user="locked" if default_user == "locked" else "off")
    return server.start()


AOF_REPLAY_BUG = "AOF-loading-client: '-NOPERM ACLs rules changed"


# --- 2. Redis restarted during traffic (AOF) ----------------------------------------------------

class Traffic:
    """Producer and consumers with the operator's credentials, as agents run them: an
    agent retries a failed send (same idempotency keys) and a consumer process that
    dies is restarted (as kubelet would); both are counted."""

    def __init__(self, producer_cfg: ClientConfig, consumer_cfg: ClientConfig, group: str,
                 n: int, batch: int = 20, work_s: float = 0.003) -> None:
        self.producer_cfg = producer_cfg
        self.consumer_cfg = consumer_cfg
        self.group = group
        self.n = n
        self.batch = batch
        self.work_s = work_s
        self.acked_sends: set[int] = set()
        self.ids: dict[int, str] = {}
        self.send_errors: collections.Counter[str] = collections.Counter()
        self.processed: collections.Counter[int] = collections.Counter()
        self.consumer_errors: collections.Counter[str] = collections.Counter()
        self.consumer_restarts = 0
        self.done = asyncio.Event()

    async def produce(self, rate_per_s: float) -> None:
        async with Producer(self.producer_cfg, meta_ttl=1.0) as producer:
            for start in range(0, self.n, self.batch):
                items = list(range(start, min(self.n, start + self.batch)))
                out = [Outgoing({"i": i}, idempotency_key=f"m-{i}") for i in items]
                while True:
                    try:
                        ids = await producer.send_many(out)
                        break
                    except Exception as exc:  # an agent retries with the same keys
                        self.send_errors[type(exc).__name__] += 1
                        await asyncio.sleep(0.1)
                for i, mid in zip(items, ids, strict=True):
                    assert self.ids.setdefault(i, mid) == mid, f"message {i} got two ids"
                    self.acked_sends.add(i)
                await asyncio.sleep(len(items) / rate_per_s)

    async def consume(self, name: str) -> None:
        while not self.done.is_set():
            try:
                async with Consumer(self.consumer_cfg, group=self.group, consumer_name=name,
                                    block_ms=200, batch_size=20, meta_refresh=1.0) as c:
                    while not self.done.is_set():
                        try:
                            msg = await asyncio.wait_for(c.next_message(), 0.5)
                        except TimeoutError:
                            continue
                        if msg is None:
                            break
                        await asyncio.sleep(self.work_s)
                        self.processed[int(msg.payload["i"])] += 1
                        await msg.ack()
                    await c.flush_acks()
            except Exception as exc:  # the process would exit; kubelet restarts it
                self.consumer_errors[f"{type(exc).__name__}: {str(exc)[:60]}"] += 1
                self.consumer_restarts += 1
                await asyncio.sleep(0.5)


def _cfg(creds: dict[str, str]) -> ClientConfig:
    return ClientConfig.from_env(creds)


async def _settled(r: Any, ns: str, q: str, g: str, partitions: int) -> bool:
    for p in range(partitions):
        key = f"aq:{{{ns}/{q}/{p}}}:q"
        if (await asyncio.to_thread(r.xpending, key, g))["pending"]:
            return False
        info = {x["name"]: x for x in await asyncio.to_thread(r.xinfo_groups, key)}
        last = await asyncio.to_thread(r.xrevrange, key, "+", "-", 1)
        if last and info[g]["last-delivered-id"] != last[0][0]:
            return False
    return True


async def _aof_drill(kubectl: Any, namespace: str, server: RedisServer, n: int,
                     rate: float) -> dict[str, Any]:
    admin_secret(kubectl, namespace, "aof", server)
    access = {"producers": [{"name": "intake"}], "consumers": [{"name": "worker"}]}
    apply(kubectl, namespace, queue("orders", partitions=2, access=access,
                                    redis={"secretRef": {"name": "aof"}}))
    wait_ready(kubectl, "agentqueues", "orders", namespace)
    apply(kubectl, namespace, group("workers", queueRef={"name": "orders"},
                                    startFrom="Beginning", visibilityTimeout="2s"))
    wait_ready(kubectl, "consumergroups", "workers", namespace)
    t = Traffic(_cfg(secret_values(kubectl, namespace, "orders.intake")),
                _cfg(secret_values(kubectl, namespace, "orders.worker")), "workers", n)
    keys = [f"aq:{{{namespace}/orders/{p}}}:q" for p in range(2)]

    def stream_entries() -> int:
        r = server.client()
        try:
            return sum(int(r.xlen(k)) for k in keys)
        finally:
            r.close()

    producing = asyncio.create_task(t.produce(rate))
    consumers: list[asyncio.Task[None]] = []
    restarts: list[str] = []
    try:
        # Restart 1 (SIGTERM) with every message so far still waiting (no consumer yet);
        # restart 2 (SIGKILL) with consumers in the middle of the backlog.
        for how in ("SIGTERM", "SIGKILL"):
            target = len(t.acked_sends) + n // 3
            while len(t.acked_sends) < min(target, n - 1) and not producing.done():
                await asyncio.sleep(0.05)
            before, entries_before = len(t.acked_sends), stream_entries()
            unprocessed = before - len(t.processed)
            t0 = time.monotonic()
            await asyncio.to_thread(server.stop if how == "SIGTERM" else server.kill)
            await asyncio.sleep(1.0)  # an outage, not just a blip
            await asyncio.to_thread(server.start)
            up = time.monotonic() - t0
            entries_after = stream_entries()
            if not consumers:
                consumers = [asyncio.create_task(t.consume(f"c{i}")) for i in range(2)]
            while len(t.acked_sends) <= before + t.batch and not producing.done():
                assert time.monotonic() - t0 < 60, "the producer did not recover"
                await asyncio.sleep(0.05)
            restarts.append(
                f"{how} after {before} acknowledged sends ({unprocessed} not yet processed): stream "
                f"entries {entries_before} before, {entries_after} after reload; Redis back "
                f"after {up:.1f}s, sends acknowledged again after {time.monotonic() - t0:.1f}s")
        await asyncio.wait_for(producing, 120)

        # Drained: everything acknowledged was processed; or nothing moved for 10 s with
        # nothing pending (what is missing then is lost, and counted below).
        r = server.client()
        deadline = time.monotonic() + 90
        last, still_since = -1, time.monotonic()
        while time.monotonic() < deadline:
            settled = await _settled(r, namespace, "orders", "workers", 2)
            if settled and t.acked_sends <= set(t.processed):
                break
            if len(t.processed) != last:
                last, still_since = len(t.processed), time.monotonic()
            elif settled and time.monotonic() - still_since > 10:
                break
            await asyncio.sleep(0.2)
    finally:
        t.done.set()
        producing.cancel()
        await asyncio.gather(producing, *consumers, return_exceptions=True)

    r = server.client()
    entries = stream_entries()
    dead = sum(r.xlen(f"aq:{{{namespace}/orders/{p}}}:dlq") for p in range(2))
    lost = sorted(t.acked_sends - set(t.processed))
    duplicated = sum(c - 1 for c in t.processed.values() if c > 1)
    for line in restarts:
        say(f"redis restart {line}")
    figures = {"sent": n, "acked": len(t.acked_sends), "entries": entries,
               "processed": len(t.processed), "lost": len(lost), "duplicated": duplicated,
               "dead": dead, "send_retries": dict(t.send_errors),
               "consumer_restarts": t.consumer_restarts,
               "consumer_errors": dict(t.consumer_errors)}
    say("AOF drill: " + " ".join(f"{k}={v}" for k, v in figures.items()))
    return figures


def _check_no_loss(kubectl: Any, namespace: str, f: dict[str, Any]) -> None:
    assert f["acked"] == f["sent"]
    assert f["lost"] == 0
    assert f["processed"] == f["sent"]
    assert f["entries"] == f["sent"]  # idempotency keys: a retried send did not enqueue twice
    assert f["dead"] == 0
    # The operator's figures agree (the drift keeper refreshes status every 2 s).
    wait_for(lambda: ((get_obj(kubectl, "agentqueues", "orders", namespace) or {})
                      .get("status") or {}).get("length") == f["sent"], timeout=30,
             what="status.length == sent")


async def test_redis_restart_with_aof_during_traffic(operator: Any, kubectl: Any,
                                                     namespace: str, tmp_path: Path) -> None:
    """Redis restarted twice under traffic, `default` user locked (not disabled)."""
    server = aof_server(tmp_path / "aof", "locked")
    try:
        f = await _aof_drill(kubectl, namespace, server, n=3000, rate=300)
        _check_no_loss(kubectl, namespace, f)
    finally:
        server.stop()


async def test_redis_restart_with_aof_default_user_off(operator: Any, kubectl: Any,
                                                       namespace: str, tmp_path: Path) -> None:
    """The same with `user default off` (the hardened setup RedisServer uses): Redis 7.0
    replays a function's MULTI/EXEC from the AOF as the disabled default user and
    silently drops it, so every idempotent send (aq_enqueue writes XADD + SET) is lost."""
    server = aof_server(tmp_path / "aof", "off")
    try:
        f = await _aof_drill(kubectl, namespace, server, n=900, rate=300)
        replay_errors = server.log_file.read_text(errors="replace").count(AOF_REPLAY_BUG)
        say(f"AOF replay: {replay_errors} transactions refused while loading")
        if replay_errors:
            assert f["lost"] > 0 or f["entries"] < f["sent"]
            pytest.xfail(f"Redis AOF replay dropped {replay_errors} function transactions: "
                         f"{f['lost']} acknowledged messages lost, {f['entries']}/{f['sent']} "
                         "stream entries after the restarts (redis/redis#14541, valkey#3983)")
        _check_no_loss(kubectl, namespace, f)
    finally:
        server.stop()


async def test_consumer_rides_out_a_redis_restart(operator: Any, kubectl: Any, namespace: str,
                                                  tmp_path: Path) -> None:
    """A consumer blocked in a read when Redis restarts keeps consuming by itself once
    the operator has re-created its ACL user (~ the 2 s run_id check)."""
    server = RedisServer(tmp_path / "r").start()
    try:
        admin_secret(kubectl, namespace, "r", server)
        access = {"producers": [{"name": "intake"}], "consumers": [{"name": "worker"}]}
        apply(kubectl, namespace, queue("rq", access=access, redis={"secretRef": {"name": "r"}}))
        wait_ready(kubectl, "agentqueues", "rq", namespace)
        apply(kubectl, namespace, group("rg", queueRef={"name": "rq"}, startFrom="Beginning"))
        wait_ready(kubectl, "consumergroups", "rg", namespace)
        cfg = _cfg(secret_values(kubectl, namespace, "rq.worker"))
        pcfg = _cfg(secret_values(kubectl, namespace, "rq.intake"))
        async with Consumer(cfg, group="rg", consumer_name="c", block_ms=200) as c:
            reading = asyncio.ensure_future(c.next_message())
            await asyncio.sleep(0.5)
            t0 = time.monotonic()
            await asyncio.to_thread(server.restart)
            # The operator re-creates the stream, group, library and users by itself.
            while True:
                try:
                    async with Producer(pcfg) as p:
                        await p.send({"after": "restart"})
                    break
                except redis.exceptions.RedisError:
                    # The 2 s run_id check + the restart itself (~1 s) + 2 s margin.
                    assert time.monotonic() - t0 < 5.0, "not repaired"
                    await asyncio.sleep(0.2)
            msg = await asyncio.wait_for(reading, 5.0)  # the same bound, from now
            assert msg is not None and msg.payload == {"after": "restart"}
            say(f"consumer read again {time.monotonic() - t0:.1f}s after the restart")
    finally:
        server.stop()


# --- 4. Redis frozen -------------------------------------------------------------------------

def _ready_status(kubectl: Any, kind: str, name: str, ns: str) -> tuple[str, str]:
    cond = condition(get_obj(kubectl, kind, name, ns)) or {}
    return cond.get("status", "?"), cond.get("reason", "?")


def test_redis_frozen_then_thawed(operator: Any, kubectl: Any, namespace: str,
                                  tmp_path: Path) -> None:
    """SIGSTOP one Redis past every client timeout (operator: 10 s socket timeout, 3
    retries), then SIGCONT: its queue and group report RedisUnavailable, queues on the
    other Redis keep working (even a new one), and all recover without an operator
    restart."""
    frozen = RedisServer(tmp_path / "frozen").start()
    other = RedisServer(tmp_path / "other").start()
    pid = operator.proc.pid
    try:
        access = {"producers": [{"name": "intake"}], "consumers": [{"name": "worker"}]}
        for name, server in (("frozen", frozen), ("other", other)):
            admin_secret(kubectl, namespace, name, server)
            apply(kubectl, namespace, queue(f"{name}-q", access=access,
                                            redis={"secretRef": {"name": name}}))
            apply(kubectl, namespace, group(f"{name}-g", queueRef={"name": f"{name}-q"},
                                            startFrom="Beginning"))
        for name in ("frozen", "other"):
            wait_ready(kubectl, "agentqueues", f"{name}-q", namespace)
            wait_ready(kubectl, "consumergroups", f"{name}-g", namespace)
        r_other = other.client()
        other_key = f"aq:{{{namespace}/other-q/0}}:q"

        frozen.freeze()
        t0 = time.monotonic()
        obj = wait_reason(kubectl, "agentqueues", "frozen-q", namespace, "RedisUnavailable",
                          timeout=120)
        t_queue = time.monotonic() - t0
        assert (condition(obj) or {})["status"] == "False"
        wait_for(lambda: _ready_status(kubectl, "consumergroups", "frozen-g", namespace)[0]
                 == "False", timeout=120, what="group Ready=False")
        t_group = time.monotonic() - t0
        say(f"frozen: AgentQueue Ready=False RedisUnavailable after {t_queue:.1f}s, "
            f"ConsumerGroup Ready=False {_ready_status(kubectl, 'consumergroups', 'frozen-g', namespace)[1]} "
            f"after {t_group:.1f}s")

        # Meanwhile the other Redis is served: a new queue there becomes Ready, its group
        # keeps reporting figures.
        t1 = time.monotonic()
        apply(kubectl, namespace, queue("other-new", access=access,
                                        redis={"secretRef": {"name": "other"}}))
        wait_ready(kubectl, "agentqueues", "other-new", namespace, timeout=60)
        t_new = time.monotonic() - t1
        for i in range(25):
            r_other.xadd(other_key, {"d": str(i)})
        wait_for(lambda: (get_obj(kubectl, "consumergroups", "other-g", namespace) or {})
                 .get("status", {}).get("lag") == 25, timeout=30, what="other group lag 25")
        assert _ready_status(kubectl, "agentqueues", "other-q", namespace) == ("True",
                                                                                "Provisioned")
        say(f"while frozen: a new queue on the other Redis Ready in {t_new:.1f}s; the other "
            f"group's lag tracked (25)")

        frozen.thaw()
        frozen_for = time.monotonic() - t0
        t2 = time.monotonic()
        wait_ready(kubectl, "agentqueues", "frozen-q", namespace, timeout=120)
        t_q_back = time.monotonic() - t2
        wait_for(lambda: _ready_status(kubectl, "consumergroups", "frozen-g", namespace)
                 == ("True", "Active"), timeout=120, what="group Ready again")
        t_g_back = time.monotonic() - t2
        say(f"thawed after {frozen_for:.1f}s frozen: queue Ready again after {t_q_back:.1f}s, "
            f"group after {t_g_back:.1f}s; operator pid unchanged")
        assert operator.proc.pid == pid and operator.proc.poll() is None
        # And it works end to end again.
        r_frozen = frozen.client()
        r_frozen.xadd(f"aq:{{{namespace}/frozen-q/0}}:q", {"d": "x"})
        wait_for(lambda: (get_obj(kubectl, "consumergroups", "frozen-g", namespace) or {})
                 .get("status", {}).get("lag") == 1, timeout=30, what="frozen group lag 1")
    finally:
        frozen.stop()
        other.stop()
