"""`agentqueue send | peek | dlq` through the real CLI against a real redis-server."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "operator"), str(ROOT / "clients" / "python"), str(ROOT / "devtools"), env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-m", "agentqueue.cli", *args], env=env,
                          capture_output=True, text=True, timeout=60, input=stdin)


async def test_send_peek_and_dlq_cycle(redis_server: Any, redis_client: Any) -> None:
    from agentqueue.redisgw import functions
    from agentqueue_client import keys

    await functions.ensure_library(redis_client)
    part = keys.PartitionKeys("ns1", "cliq", 0)
    await redis_client.hset(part.meta, mapping={"type": "Stream", "partitions": "1",
                                                "idempotency": "1",
                                                "idempotencyTtlMs": "60000"})
    await redis_client.xgroup_create(part.queue_key, "g", id="0", mkstream=True)
    url = redis_server.admin_url
    sent = cli("send", "cliq", "-n", "ns1", "--redis-url", url, '{"ticket": 1}',
               "--idempotency-key", "t1")
    assert sent.returncode == 0, sent.stderr
    again = cli("send", "cliq", "-n", "ns1", "--redis-url", url, '{"ticket": 1}',
                "--idempotency-key", "t1")
    assert again.stdout == sent.stdout  # a duplicate returns the first id
    peeked = cli("peek", "cliq", "-n", "ns1", "--redis-url", url)
    assert peeked.returncode == 0 and '{"ticket":1}' in peeked.stdout

    entry_id = sent.stdout.strip()
    got = await redis_client.xreadgroup("g", "c1", {part.queue_key: ">"})
    assert got
    assert await functions.deadletter(redis_client, part, "g", entry_id, "c1", "boom", 5,
                                      1_700_000_000_000)
    listed = cli("dlq", "ls", "cliq", "-n", "ns1", "--redis-url", url)
    assert "boom" in listed.stdout
    refused = cli("dlq", "purge", "cliq", "-n", "ns1", "--redis-url", url)
    assert refused.returncode == 2  # no --yes and no terminal: nothing purged
    replayed = cli("dlq", "replay", "cliq", "-n", "ns1", "--redis-url", url, "--all")
    assert replayed.returncode == 0 and "replayed" in replayed.stdout
    assert await redis_client.xlen(part.dead_letter) == 0
    assert await redis_client.xlen(part.queue_key) == 2


def test_via_address_replaces_only_host_and_port() -> None:
    from agentqueue.tools_cli import via_address

    assert via_address("redis://redis.ns.svc.cluster.local:6379/0", "10.0.0.5:6379") == \
        "redis://10.0.0.5:6379/0"
    assert via_address("rediss://u:p@name:6380/2?x=1", "127.0.0.1:16380") == \
        "rediss://u:p@127.0.0.1:16380/2?x=1"


async def test_empty_results_say_so(redis_server: Any, redis_client: Any) -> None:
    from agentqueue_client import keys

    part = keys.PartitionKeys("ns1", "emptyq", 0)
    await redis_client.hset(part.meta, mapping={"type": "Stream", "partitions": "1"})
    await redis_client.xgroup_create(part.queue_key, "g", id="0", mkstream=True)
    url = redis_server.admin_url
    peeked = cli("peek", "emptyq", "-n", "ns1", "--redis-url", url)
    assert (peeked.returncode, peeked.stdout) == (0, "")
    assert peeked.stderr.strip() == "no messages in ns1/emptyq"
    listed = cli("dlq", "ls", "emptyq", "-n", "ns1", "--redis-url", url)
    assert (listed.returncode, listed.stdout) == (0, "")
    assert listed.stderr.strip() == "the dead-letter queue of ns1/emptyq is empty"


def test_an_unreachable_redis_is_one_line_without_the_password() -> None:
    out = cli("peek", "q", "-n", "ns1", "--redis-url", "redis://u:s3cretpw@127.0.0.1:1/0")
    assert out.returncode == 1
    assert out.stderr.startswith("agentqueue peek: cannot reach Redis (")
    assert "--redis-address" in out.stderr and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and "s3cretpw" not in out.stderr


async def test_a_role_without_the_right_is_told_to_use_another(redis_server: Any,
                                                                 redis_client: Any) -> None:
    await redis_client.execute_command("ACL", "SETUSER", "cli-nobody", "on", ">pw-cli-1",
                                       "~*", "+ping")
    url = redis_server.admin_url.replace(redis_server.admin_url.split("//", 1)[1].split(
        "@", 1)[0], "cli-nobody:pw-cli-1")
    out = cli("dlq", "ls", "q", "-n", "ns1", "--redis-url", url, "--role", "consumer")
    assert out.returncode == 1, out.stderr
    line = out.stderr.strip()
    assert line.startswith("agentqueue dlq ls: the consumer credentials of queue 'q' may not "
                           "do this (")
    assert "--role" in line and "Traceback" not in line and "pw-cli-1" not in line


def test_describe_failure_words_each_kind_once() -> None:
    import argparse

    from kubernetes.client.exceptions import ApiException
    from redis import exceptions as rexc

    from agentqueue.tools_cli import describe_failure

    args = argparse.Namespace(queue="billing", role="observer", namespace="team-a")
    assert describe_failure(ApiException(status=404, reason="Not Found"), args) == \
        "AgentQueue 'billing' not found in namespace 'team-a'"
    assert "refused: Forbidden" in (describe_failure(
        ApiException(status=403, reason="Forbidden"), args) or "")
    assert describe_failure(rexc.AuthenticationError("WRONGPASS invalid"), args) == (
        "Redis refused the observer credentials of queue 'billing' (WRONGPASS invalid); "
        "they may have been rotated: try again, or pass --redis-url")
    text = describe_failure(rexc.ConnectionError("Error connecting to redis://u:pw@h:1"), args)
    assert text is not None and "u:pw" not in text and "***@h:1" in text
    assert describe_failure(ValueError("a bug"), args) is None  # bugs keep their traceback
    purge = argparse.Namespace(queue="billing", role="consumer", namespace="team-a",
                               command="dlq", dlq_command="purge")
    text = describe_failure(rexc.NoPermissionError("no permissions to run 'xtrim'"), purge)
    assert text is not None and text.startswith("purge removes dead letters, which only the "
                                                "Redis admin may do")
    assert "--redis-url" in text


# --- `agentqueue status`: live figures (issue 16, item 8) -----------------------------------

def _observer_env(redis_server: Any, name: str) -> dict[str, str]:
    return {"REDIS_URL": f"redis://{redis_server.host}:{redis_server.port}/0",
            "REDIS_USERNAME": name, "REDIS_PASSWORD": "pw-observer-1"}


async def _observer(redis_server: Any, redis_client: Any, ns: str, queue: str,
                    qtype: str) -> Any:
    """A client with exactly the observer role's rights (planning/acl.py)."""
    from agentqueue.planning.acl import acl_rules
    from agentqueue.tools.cli_entry import client_for

    name = f"obs-{queue}"
    await redis_client.execute_command("ACL", "SETUSER", name,
                                       *acl_rules("observer", ns, queue, qtype, 2),
                                       ">pw-observer-1")
    return client_for(_observer_env(redis_server, name), timeout=5)


async def test_live_stream_figures_as_the_observer(redis_server: Any, redis_client: Any) -> None:
    """Waiting work and its age, pending and its age, DLQ, retries and present
    consumers, read with the observer's rights only."""
    import asyncio
    import time as _time

    from agentqueue.tools import live
    from agentqueue_client import keys

    p0, p1 = keys.partition_keys("ns1", "liveq", 2)
    for part in (p0, p1):
        await redis_client.xgroup_create(part.queue_key, "g", id="0", mkstream=True)
    born = int(_time.time() * 1000) - 24_000  # a backlog that has waited 24 s
    for i in range(13):
        await redis_client.xadd(p0.queue_key, {"d": "x"}, id=f"{born}-{i}")
    await redis_client.xadd(p1.queue_key, {"d": "y"})
    await redis_client.xreadgroup("g", "left", {p0.queue_key: ">"}, count=1)
    await redis_client.xack(p0.queue_key, "g", f"{born}-0")
    await asyncio.sleep(0.6)  # "left" is now idle beyond the 500 ms visibility timeout
    await redis_client.xreadgroup("g", "here", {p0.queue_key: ">"}, count=2)
    await redis_client.xgroup_create(p0.queue_key, "late", id="$")  # read nothing yet
    await redis_client.xadd(p0.queue_key, {"d": "z"}, id=f"{born + 20_000}-0")
    await redis_client.xadd(p1.dead_letter, {"d": "dead"})
    await redis_client.xadd(p0.dead_letter, {"d": "dead"})
    await redis_client.zadd(p0.retry, {"r1": 1})
    client = await _observer(redis_server, redis_client, "ns1", "liveq", "Stream")
    try:
        fig = await live.read_queue(client, "ns1", "liveq", "Stream", 2,
                                    {"g": 500, "other": 500, "late": 500})
    finally:
        await client.aclose()
    assert (fig.length, fig.dead_letters, fig.scheduled_retries) == (15, 2, 1)
    g = fig.groups["g"]
    assert (g.lag, g.lag_exact, g.pending, g.found) == (10 + 1 + 1, True, 2, True)
    late = fig.groups["late"]  # a second group of the partition, read in the same trip
    assert (late.lag, late.pending, late.found, late.present) == (1, 0, True, set())
    assert late.oldest_waiting_s is not None and 3.5 < late.oldest_waiting_s < 10
    # Documented: ages against the server's clock; the 24 s backlog shows as such.
    assert g.oldest_waiting_s is not None and 23.5 < g.oldest_waiting_s < 30
    assert g.oldest_pending_s is not None and g.oldest_pending_s < 5
    assert (g.present, g.gone) == ({"here"}, {"left"})
    assert not fig.groups["other"].found
    assert g.to_dict()["consumersGone"] == 1


async def test_live_lag_is_counted_when_redis_cannot_tell(redis_server: Any,
                                                          redis_client: Any) -> None:
    """After an XDEL of an unread entry Redis 7.0 reports no lag: the entries after the
    group's position are counted instead (planning/lag.py)."""
    from agentqueue.tools import live
    from agentqueue_client import keys

    part = keys.PartitionKeys("ns1", "delq", 0)
    await redis_client.xgroup_create(part.queue_key, "g", id="0", mkstream=True)
    ids = [await redis_client.xadd(part.queue_key, {"d": str(i)}) for i in range(6)]
    await redis_client.xreadgroup("g", "c", {part.queue_key: ">"}, count=1)
    await redis_client.xdel(part.queue_key, ids[3])
    client = await _observer(redis_server, redis_client, "ns1", "delq", "Stream")
    try:
        fig = await live.read_queue(client, "ns1", "delq", "Stream", 1, {"g": 30_000})
    finally:
        await client.aclose()
    assert (fig.length, fig.groups["g"].lag, fig.groups["g"].lag_exact) == (5, 4, True)


async def test_live_list_figures_as_the_observer(redis_server: Any, redis_client: Any) -> None:
    import time as _time

    from agentqueue.tools import live
    from agentqueue_client import keys

    part = keys.PartitionKeys("ns1", "listq", 0)
    now = int(_time.time() * 1000)
    await redis_client.lpush(part.priority_key(0), f'{{"i":"{now - 9_000}-a","p":1}}')
    await redis_client.lpush(part.priority_key(1), f'{{"i":"{now - 2_000}-b","p":1}}',
                             "not sdk")
    await redis_client.zadd(part.processing("#consumers"), {"alive": now, "dead": now - 90_000})
    await redis_client.lpush(part.processing("alive"), "m1", "m2")
    await redis_client.lpush(part.processing("dead"), "m3")
    client = await _observer(redis_server, redis_client, "ns1", "listq", "List")
    try:
        fig = await live.read_queue(client, "ns1", "listq", "List", 1, {}, priority_levels=2)
    finally:
        await client.aclose()
    assert (fig.length, fig.in_flight) == (3, 3)
    assert fig.oldest_waiting_s is not None and 8.5 < fig.oldest_waiting_s < 15
    assert (fig.present, fig.gone) == ({"alive"}, {"dead"})


def test_status_rows_live_and_from_status_with_its_age() -> None:
    from datetime import UTC, datetime

    from agentqueue.tools.live import GroupFigures, QueueFigures
    from agentqueue.tools_cli import HEADER, status_rows

    meta = {"namespace": "ns1", "name": "q", "managedFields": [
        {"manager": "kopf", "subresource": "status", "time": "2026-12-07T10:00:00Z"}]}
    queue = {"metadata": meta, "spec": {"type": "Stream", "partitions": 2},
             "status": {"length": 0, "deadLetterLength": 0, "conditions": [
                 {"type": "Ready", "status": "True"}]}}
    group = {"metadata": {"namespace": "ns1", "name": "workers", "managedFields": []},
             "spec": {"queueRef": {"name": "q"}, "groupName": "g"},
             "status": {"lag": 0, "pending": 0, "consumers": 3, "currentReplicas": 1,
                        "desiredReplicas": 2}}
    now = datetime(2026, 12, 7, 10, 0, 45, tzinfo=UTC)
    fig = QueueFigures("Stream", length=13, dead_letters=1, scheduled_retries=2)
    fig.groups["g"] = GroupFigures("g", lag=13, pending=0, oldest_waiting_s=24.0, found=True,
                                   present={"a"}, gone={"b", "c"})
    rows = [dict(zip(HEADER, r, strict=True)) for r in
            status_rows([queue], [group], {("ns1", "q"): fig}, now)]
    assert rows[0]["LENGTH"] == "13" and rows[0]["DLQ"] == "1" and rows[0]["FIGURES"] == "live"
    assert (rows[1]["WAITING"], rows[1]["OLDEST-WAITING"], rows[1]["CONSUMERS"]) == \
        ("13", "24.0s", "1 (+2 gone)")
    assert rows[1]["REPLICAS"] == "1/2"
    stale = [dict(zip(HEADER, r, strict=True)) for r in
             status_rows([queue], [group], {("ns1", "q"): "Redis: Connection refused"}, now)]
    assert stale[0]["LENGTH"] == "0" and stale[0]["FIGURES"] == "status 45.0s old"
    assert stale[1]["WAITING"] == "0" and stale[1]["CONSUMERS"] == "3"


def test_live_credentials_prefer_the_observer_and_say_why_not() -> None:
    from kubernetes.client.exceptions import ApiException

    from agentqueue.tools_cli import live_credentials

    users = [{"role": "producer", "secretName": "q.in"}, {"role": "consumer",
                                                          "secretName": "q.worker"},
             {"role": "observer", "secretName": "q.dash"}]
    asked: list[str] = []

    def read(name: str) -> dict[str, str]:
        asked.append(name)
        return {"REDIS_URL": "redis://redis.ns.svc:6379/0", "REDIS_USERNAME": "u"}

    env = live_credentials({"status": {"users": users}}, read, "127.0.0.1:16379")
    assert asked == ["q.dash"] and isinstance(env, dict)
    assert env["REDIS_URL"] == "redis://127.0.0.1:16379/0"
    assert live_credentials({"status": {"users": users[:1]}}, read, None) == \
        "no observer or consumer access entry (add an observer to spec.access)"

    def forbidden(name: str) -> dict[str, str]:
        raise ApiException(status=403, reason="Forbidden")

    assert live_credentials({"status": {"users": users}}, forbidden, None) == \
        "may not read Secret 'q.dash'"
