"""Facts about the Redis servers a queue lives on, for planning.server_risks."""

from __future__ import annotations

from typing import Any

import redis.asyncio as aredis

from agentqueue_client.text import as_text

from ..planning.server_risks import ServerFacts
from .connection import RedisClient, node_name, primaries
from .errors import translate_errors


async def server_facts(client: RedisClient) -> list[ServerFacts]:
    """What each primary reports about eviction, AOF and its `default` user (for
    planning.server_risks). ACL GETUSER may be refused to a restricted admin: unknown."""
    nodes = await primaries(client)
    out = []
    for node in nodes:
        with translate_errors("read server settings"):
            memory = await node.info("memory")
            persistence = await node.info("persistence")
        default_off: bool | None = None
        try:
            user: dict[str, Any] = await node.acl_getuser("default") or {}
            flags = user.get("flags") or []
            default_off = "off" in [as_text(f, errors="strict") for f in flags]
        except aredis.ResponseError:
            default_off = None
        out.append(ServerFacts(
            node=node_name(node), maxmemory=int(memory.get("maxmemory") or 0),
            maxmemory_policy=str(memory.get("maxmemory_policy") or "") or None,
            aof_enabled=bool(int(persistence.get("aof_enabled") or 0)),
            default_user_off=default_off))
    return out
