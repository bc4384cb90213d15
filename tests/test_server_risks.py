"""Redis settings that silently lose queue data, read from real servers."""

from __future__ import annotations

from pathlib import Path

import pytest

from agentqueue.planning.server_risks import (
    AOF_DEFAULT_USER_OFF,
    EVICTION,
    ServerFacts,
    assess,
    summary,
)
from agentqueue.redisgw import connection
from agentqueue.redisgw.connection import RedisTarget
from agentqueue.redisgw.server_info import server_facts
from agentqueue_devtools.redisserver import RedisServer

pytest_plugins = ["tests.redis_fixtures"]


def test_assess_is_quiet_when_facts_are_unknown_or_safe() -> None:
    assert assess(ServerFacts("n")) == []
    assert assess(ServerFacts("n", maxmemory=0, maxmemory_policy="allkeys-lru")) == []
    assert assess(ServerFacts("n", maxmemory=1 << 30, maxmemory_policy="noeviction",
                              aof_enabled=True, default_user_off=False)) == []
    risks = assess(ServerFacts("n", maxmemory=1 << 30, maxmemory_policy="volatile-ttl",
                               aof_enabled=True, default_user_off=True))
    assert [r.reason for r in risks] == [EVICTION, AOF_DEFAULT_USER_OFF]
    assert "idempotency keys" in risks[0].message


def test_each_risk_names_its_node_and_what_is_lost() -> None:
    evicting, aof = assess(ServerFacts("redis-0", maxmemory=64 << 20,
                                       maxmemory_policy="allkeys-lru", aof_enabled=True,
                                       default_user_off=True))
    assert (evicting.reason, evicting.node) == (EVICTION, "redis-0")
    assert evicting.message == (
        f"redis-0: maxmemory-policy allkeys-lru with maxmemory {64 << 20}: at the limit Redis "
        "evicts streams, dead-letter queues and retry schedules; set maxmemory-policy "
        "noeviction")
    assert (aof.reason, aof.node) == (AOF_DEFAULT_USER_OFF, "redis-0")
    assert aof.message.startswith("redis-0: AOF is on and the default user is off: ")
    assert "redis/redis#14541" in aof.message and "random password" in aof.message
    assert summary([evicting, aof]) == f"{evicting.message}; {aof.message}"
    assert summary([]) == ""


async def _facts(server: RedisServer) -> list[ServerFacts]:
    client = await connection.connect(RedisTarget.from_secret_data(server.secret_data()))
    try:
        return await server_facts(client)
    finally:
        await connection.close_client(client)


@pytest.mark.parametrize(("kwargs", "reasons"), [
    ({}, []),
    ({"aof": True}, []),  # RedisServer locks `default` under AOF rather than disabling it
    ({"aof": True, "default_user": "off"}, [AOF_DEFAULT_USER_OFF]),
    ({"extra_args": ["--maxmemory", "64mb", "--maxmemory-policy", "allkeys-lru"]},
     [EVICTION]),
])
async def test_server_facts_from_real_servers(tmp_path: Path, kwargs: dict[str, object],
                                              reasons: list[str]) -> None:
    server = RedisServer(tmp_path / "r", **kwargs).start()  # type: ignore[arg-type]
    try:
        facts = await _facts(server)
    finally:
        server.stop()
    assert len(facts) == 1
    assert facts[0].default_user_off is (kwargs.get("default_user", "off" if not
                                                    kwargs.get("aof") else "locked") == "off")
    risks = assess(facts[0])
    assert [r.reason for r in risks] == reasons
    for r in risks:
        assert server.admin_password not in r.message
