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
