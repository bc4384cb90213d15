"""Pytest fixtures for a real redis-server (a plugin module: `pytest_plugins` or `-p`).

- `redis_server` (session): standalone, ACL on (admin user; `default` disabled).
- `redis_admin_url` (session): its URL with the admin credentials.
- `redis_target` (session): a `RedisTarget` for the admin.
- `redis_client` (function): async admin client; FLUSHALL and non-admin ACL users
  removed before each test. Functions stay loaded (tests that need a clean slate
  call FUNCTION FLUSH themselves).
- `redis_server_factory` (function): start extra servers (restart, freeze, AOF tests)
  that are stopped after the test. Never restart the session server.
- `redis_tls_server` (session, lazy): TLS only; plain TCP refused.
- `redis_cluster` (session, lazy): 3 primaries; `redis_cluster_client` (function)
  cleans every primary like `redis_client`.
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
import pytest_asyncio

from agentqueue.redisgw import connection
from agentqueue.redisgw.connection import RedisClient, RedisTarget
from agentqueue_devtools.redisserver import RedisCluster, RedisServer

from .required import missing


def need_redis_server() -> None:
    """Skip (a failure when CI=true) where redis-server is not installed."""
    if shutil.which("redis-server") is None:
        missing("redis-server is not installed")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    need_redis_server()
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_admin_url(redis_server: RedisServer) -> str:
    return redis_server.admin_url


@pytest.fixture(scope="session")
def redis_target(redis_server: RedisServer) -> RedisTarget:
    return RedisTarget.from_secret_data(redis_server.secret_data())


async def _clean(client: RedisClient, admin: str) -> None:
    """Empty every primary: data and every ACL user but the admin and `default`."""
    for node in await connection.primaries(client):
        await node.flushall()
        extra = [u for u in await node.acl_users() if u not in (admin, "default")]
        if extra:
            await node.acl_deluser(*extra)


@pytest_asyncio.fixture
async def redis_client(redis_server: RedisServer,
                       redis_target: RedisTarget) -> AsyncIterator[RedisClient]:
    if not redis_server.running:  # a test stopped it by mistake: bring it back
        redis_server.start()
    client = await connection.connect(redis_target)
    await _clean(client, redis_server.admin_username)
    yield client
    await connection.close_client(client)


@pytest.fixture
def redis_server_factory(tmp_path_factory: pytest.TempPathFactory
                         ) -> Iterator[Callable[..., RedisServer]]:
    """`make(**RedisServer kwargs) -> started RedisServer`, stopped after the test."""
    need_redis_server()
    made: list[RedisServer] = []

    def make(**kwargs: Any) -> RedisServer:
        server = RedisServer(tmp_path_factory.mktemp("redis-extra"), **kwargs)
        made.append(server)
        return server.start()

    yield make
    for server in made:
        server.stop()


@pytest.fixture(scope="session")
def redis_tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    need_redis_server()
    server = RedisServer(tmp_path_factory.mktemp("redis-tls"), tls=True)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    """Started on first use (~2 s: Redis waits 2 s before a new cluster is writable)."""
    need_redis_server()
    cluster = RedisCluster(tmp_path_factory.mktemp("redis-cluster"))
    cluster.start()
    yield cluster
    cluster.stop()


@pytest_asyncio.fixture
async def redis_cluster_client(redis_cluster: RedisCluster) -> AsyncIterator[RedisClient]:
    client = await connection.connect(RedisTarget.from_secret_data(redis_cluster.secret_data()))
    await _clean(client, redis_cluster.admin_username)
    yield client
    await connection.close_client(client)
