"""Connections and error classification: standalone, TLS, cluster, failures."""

from __future__ import annotations

import time
from typing import Any

import pytest
import redis.asyncio as aredis
from redis import exceptions as rex

from agentqueue.redisgw import connection
from agentqueue.redisgw.connection import RedisPool, RedisTarget
from agentqueue.redisgw.errors import (
    RedisAuthError,
    RedisError,
    RedisLibraryMissing,
    RedisSpecError,
    RedisUnavailable,
    classify,
    is_busygroup,
    scrub,
    translate_errors,
    translated,
)
from agentqueue_devtools.redisserver import RedisServer, free_port

SECRET = "s3cr3t-pa55"


# --- RedisTarget ---------------------------------------------------------------------

def test_target_from_secret_data() -> None:
    t = RedisTarget.from_secret_data({"url": b"rediss://redis.example:6380/2\n",
                                      "username": b"op", "password": SECRET.encode(),
                                      "ca.crt": "PEM"})
    assert (t.host, t.port, t.db, t.tls, t.username, t.password, t.ca_pem) == (
        "redis.example", 6380, 2, True, "op", SECRET, "PEM")
    assert SECRET not in repr(t) and "PEM" not in repr(t)
    assert SECRET not in t.key and SECRET not in t.display
    assert t.url_without_credentials() == "rediss://redis.example:6380/2"
    with pytest.raises(KeyError):
        RedisTarget.from_secret_data({"username": b"x"})
    with pytest.raises(ValueError, match="redis://"):
        RedisTarget.from_secret_data({"url": b"http://x"})
    with pytest.raises(ValueError):
        RedisTarget.from_secret_data({"url": b" "})


def test_target_credentials_in_url() -> None:
    t = RedisTarget(f"redis://me:{SECRET}@10.0.0.1:7000")
    assert (t.username, t.password) == ("me", SECRET)
    assert t.url_without_credentials() == "redis://10.0.0.1:7000"
    assert SECRET not in repr(t) and SECRET not in t.display and SECRET not in t.key
    other = RedisTarget("redis://me:other@10.0.0.1:7000")
    assert other.key != t.key  # a new password means a new connection


# --- errors --------------------------------------------------------------------------

@pytest.mark.parametrize("exc,kind", [
    (rex.ConnectionError("refused"), RedisUnavailable),
    (rex.TimeoutError("slow"), RedisUnavailable),
    (rex.BusyLoadingError("loading"), RedisUnavailable),
    (rex.ClusterDownError("CLUSTERDOWN"), RedisUnavailable),
    (rex.TryAgainError("TRYAGAIN"), RedisUnavailable),
    (rex.ReadOnlyError("READONLY"), RedisUnavailable),
    (rex.OutOfMemoryError("OOM"), RedisUnavailable),
    (rex.ResponseError("BUSY Redis is busy running a script"), RedisUnavailable),
    (rex.ResponseError("MISCONF cannot persist"), RedisUnavailable),
    (rex.RedisClusterException("cannot connect"), RedisUnavailable),
    (OSError("network unreachable"), RedisUnavailable),
    (TimeoutError(), RedisUnavailable),
    (rex.AuthenticationError("invalid username-password pair"), RedisAuthError),
    (rex.NoPermissionError("no permissions"), RedisAuthError),
    (rex.ResponseError("NOPERM this user has no permissions"), RedisAuthError),
    (rex.ResponseError("Function not found"), RedisLibraryMissing),
    (rex.NoScriptError("No matching script"), RedisLibraryMissing),
    (rex.ResponseError("WRONGTYPE Operation against a key"), RedisSpecError),
    (rex.ResponseError("BUSYGROUP Consumer Group name already exists"), RedisSpecError),
    (rex.DataError("Invalid input"), RedisSpecError),
])
def test_classify(exc: Exception, kind: type[RedisError]) -> None:
    assert type(classify(exc)) is kind


def test_busygroup_and_scrub() -> None:
    assert is_busygroup(rex.ResponseError("BUSYGROUP Consumer Group name already exists"))
    assert not is_busygroup(rex.ResponseError("BUSY script"))
    assert not is_busygroup(ValueError("BUSYGROUP"))
    text = f"Error connecting to redis://user:{SECRET}@host:6379 and rediss://:{SECRET}@h"
    assert SECRET not in scrub(text) and "redis://***@host:6379" in scrub(text)


async def test_translate_errors_hides_the_cause() -> None:
    with pytest.raises(RedisUnavailable, match="doing x: .*redis://\\*\\*\\*@") as info, \
            translate_errors("doing x"):
        raise rex.ConnectionError(f"cannot reach redis://u:{SECRET}@h")
    assert SECRET not in str(info.value)
    assert info.value.__cause__ is None and info.value.__suppress_context__

    @translated("decorated")
    async def fails() -> None:
        raise rex.NoPermissionError("NOPERM")

    with pytest.raises(RedisAuthError, match="decorated"):
        await fails()
    with pytest.raises(ValueError), translate_errors():  # not ours: untouched
        raise ValueError("x")


# --- standalone ----------------------------------------------------------------------

async def test_connect_and_pool(redis_server: RedisServer, redis_target: RedisTarget) -> None:
    pool = RedisPool()
    a = await pool.get(redis_target)
    b = await pool.get(RedisTarget.from_secret_data(redis_server.secret_data()))
    assert a is b and len(pool) == 1
    assert isinstance(a, aredis.Redis) and not connection.is_cluster(a)
    assert await connection.primaries(a) == [a]
    ids = await connection.server_ids(a)
    assert list(ids) == [f"127.0.0.1:{redis_server.port}"] and len(ids.popitem()[1]) == 40
    await pool.drop(redis_target)
    assert len(pool) == 0
    await pool.get(redis_target)
    await pool.close_all()
    assert len(pool) == 0


async def test_wrong_password_fails_fast_without_leaking(redis_server: RedisServer) -> None:
    target = RedisTarget(redis_server.url, redis_server.admin_username, SECRET)
    started = time.monotonic()
    with pytest.raises(RedisAuthError) as info:
        await connection.connect(target)
    assert time.monotonic() - started < 1.0  # not retried like a dropped connection
    assert SECRET not in str(info.value) and redis_server.url in str(info.value)


async def test_nothing_listening_is_unavailable() -> None:
    target = RedisTarget(f"redis://u:{SECRET}@127.0.0.1:{free_port()}")
    with pytest.raises(RedisUnavailable) as info:
        await connection.connect(target, timeout=0.5)
    assert SECRET not in str(info.value)


async def test_frozen_server_times_out(redis_server_factory: Any) -> None:
    server = redis_server_factory()
    client = await connection.connect(RedisTarget.from_secret_data(server.secret_data()),
                                      timeout=0.2)
    server.freeze()
    try:
        with pytest.raises(RedisUnavailable):
            await connection.server_ids(client)
    finally:
        server.thaw()
    assert await connection.server_ids(client)
    await connection.close_client(client)


async def test_aof_server_keeps_data_across_restart(redis_server_factory: Any) -> None:
    server = redis_server_factory(aof=True)
    target = RedisTarget.from_secret_data(server.secret_data())
    client = await connection.connect(target)
    await client.set("k", "v")
    await connection.close_client(client)
    server.restart()
    client = await connection.connect(target)
    assert await client.get("k") == "v"
    await connection.close_client(client)


# --- TLS -----------------------------------------------------------------------------

async def test_tls_with_ca(redis_tls_server: RedisServer) -> None:
    assert redis_tls_server.url.startswith("rediss://") and redis_tls_server.ca_file
    target = RedisTarget.from_secret_data(redis_tls_server.secret_data())
    assert target.ca_pem and target.tls
    client = await connection.connect(target)
    assert await client.ping()
    await connection.close_client(client)


async def test_tls_server_refuses_plain_and_untrusted(redis_tls_server: RedisServer) -> None:
    plain = RedisTarget(redis_tls_server.url.replace("rediss://", "redis://"),
                        redis_tls_server.admin_username, redis_tls_server.admin_password)
    with pytest.raises(RedisUnavailable):
        await connection.connect(plain, timeout=1.0)
    no_ca = RedisTarget(redis_tls_server.url, redis_tls_server.admin_username,
                        redis_tls_server.admin_password)
    with pytest.raises(RedisUnavailable):
        await connection.connect(no_ca, timeout=1.0)


# --- cluster -------------------------------------------------------------------------

async def test_cluster_detected(redis_cluster: Any) -> None:
    pool = RedisPool()
    client = await pool.get(RedisTarget.from_secret_data(redis_cluster.secret_data()))
    assert connection.is_cluster(client)
    nodes = await connection.primaries(client)
    assert sorted(connection.node_name(n) for n in nodes) == sorted(
        f"127.0.0.1:{n.port}" for n in redis_cluster.nodes)
    assert await connection.primaries(client) == nodes  # cached per client
    ids = await connection.server_ids(client)
    assert len(set(ids.values())) == 3
    await pool.close_all()
