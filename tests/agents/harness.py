"""Provision a queue the way the operator would (metadata hash, consumer groups, the
Functions library), so SDK tests need no operator. Also builds agents' env vars."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from agentqueue.redisgw import functions
from agentqueue_client import ClientConfig, keys

NS = "team"
ROOT = Path(__file__).resolve().parents[2]


def sdk_config(server: Any, queue: str, *, queue_type: str = "Stream",
               partitions: int = 1) -> ClientConfig:
    """The SDK config an agent would get from its Secret (admin credentials here)."""
    return ClientConfig(url=server.url, namespace=NS, queue=queue,
                        username=server.admin_username, password=server.admin_password,
                        queue_type=queue_type, partitions=partitions)


def agent_env(config: ClientConfig, **extra: str) -> dict[str, str]:
    """Environment of an agent subprocess: the Secret's keys plus PYTHONPATH."""
    env = dict(os.environ)
    env.update({
        "REDIS_URL": config.url, "REDIS_USERNAME": config.username or "",
        "REDIS_PASSWORD": config.password or "", "AQ_NAMESPACE": config.namespace,
        "AQ_QUEUE": config.queue, "AQ_QUEUE_TYPE": config.queue_type,
        "AQ_PARTITIONS": str(config.partitions), "AQ_ROLE": "consumer",
        "PYTHONPATH": os.pathsep.join([str(ROOT / "operator"), str(ROOT / "clients" / "python"), str(ROOT / "devtools"), str(ROOT)]),
    })
    env.update(extra)
    return env


async def provision(admin: Any, config: ClientConfig, *, group: str | None = "workers",
                    start: str = "0", visibility_ms: int = 30_000,
                    max_deliveries: int = 5, retry_initial_ms: int = 1000,
                    retry_max_ms: int = 300_000, retry_multiplier: float = 2.0,
                    jitter: bool = False, dead_letter: bool = True, idempotency: bool = True,
                    idempotency_ttl_ms: int = 3_600_000, priority_levels: int = 1,
                    schema: dict[str, Any] | None = None, **extra: str) -> None:
    """Write every partition's metadata hash, create the group, load the library."""
    await functions.ensure_library(admin)
    meta: dict[str, str] = {
        "type": config.queue_type, "partitions": str(config.partitions),
        "maxDeliveries": str(max_deliveries), "retryInitialMs": str(retry_initial_ms),
        "retryMaxMs": str(retry_max_ms), "retryMultiplier": str(retry_multiplier),
        "retryJitter": "1" if jitter else "0", "deadLetter": "1" if dead_letter else "0",
        "idempotency": "1" if idempotency else "0",
        "idempotencyTtlMs": str(idempotency_ttl_ms),
        "priorityLevels": str(priority_levels), "generation": "1",
    }
    if schema is not None:
        meta["schema"] = json.dumps(schema)
    if group is not None:
        meta[f"visibilityMs:{group}"] = str(visibility_ms)
    meta.update(extra)
    for part in keys.partition_keys(config.namespace, config.queue, config.partitions):
        await admin.hset(part.meta, mapping=meta)
        if group is not None and config.queue_type == "Stream":
            await admin.xgroup_create(part.queue_key, group, id=start, mkstream=True)


def part(config: ClientConfig, partition: int = 0) -> keys.PartitionKeys:
    return keys.PartitionKeys(config.namespace, config.queue, partition)
