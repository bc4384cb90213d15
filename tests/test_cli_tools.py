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
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "operator"), env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-m", "agentqueue.cli", *args], env=env,
                          capture_output=True, text=True, timeout=60, input=stdin)


async def test_send_peek_and_dlq_cycle(redis_server: Any, redis_client: Any) -> None:
    from agentqueue import keys
    from agentqueue.redisgw import functions

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
    from agentqueue import keys

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
