"""Connections to Redis: standalone or Cluster, plain or TLS, cached per target.

Cluster mode is detected (INFO cluster), not configured, so one Secret format
(`url`, `username`, `password`, `ca.crt`) works for both. ACL users and the Functions
library live per node, so `primaries()` hands out one client per primary.
"""

from __future__ import annotations

import asyncio
import hashlib
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import redis.asyncio as aredis
from redis.asyncio.connection import BlockingConnectionPool, ConnectionPool
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import (
    AuthenticationError,
    AuthorizationError,
    BusyLoadingError,
    ConnectionError,
    NoPermissionError,
    ResponseError,
    TimeoutError,
)

from .errors import translate_errors

__all__ = [
    "RedisClient",
    "RedisPool",
    "RedisTarget",
    "close_client",
    "connect",
    "is_cluster",
    "node_name",
    "primaries",
    "server_ids",
]

RedisClient = aredis.Redis | aredis.RedisCluster

CONNECT_TIMEOUT = 5.0
SOCKET_TIMEOUT = 10.0
# Connections per standalone server and operator. redis-py's own pool fails a command at
# once ("Too many connections") past its limit of 100: a burst of reconciles (hundreds of
# objects resumed after a restart) then looked like an unreachable Redis. This pool makes
# a command wait for a free connection instead, up to the socket timeout.
MAX_CONNECTIONS = 100
# A few quick retries ride out a dropped connection or a short LOADING phase; longer
# outages surface as RedisUnavailable and the reconciler retries with its own delay.
RETRIES = 3
_TRANSIENT = (ConnectionError, TimeoutError, BusyLoadingError)


# redis-py's AuthenticationError is a ConnectionError: without this, a wrong password
# would be retried (and slept on) like a dropped connection.
_NEVER_RETRY = (AuthenticationError, AuthorizationError)


class _Fatal(Exception):
    def __init__(self, exc: Exception) -> None:
        super().__init__()
        self.exc = exc


class _Retry(Retry):
    """Retry transient errors with backoff, never authentication failures."""

    async def call_with_retry(self, do: Any, fail: Any, *args: Any, **kwargs: Any) -> Any:
        async def guarded() -> Any:
            try:
                return await do()
            except _NEVER_RETRY as exc:
                raise _Fatal(exc) from None

        try:
            return await super().call_with_retry(guarded, fail, *args, **kwargs)
        except _Fatal as fatal:
            raise fatal.exc from None


def _retry() -> Retry:
    return _Retry(ExponentialWithJitterBackoff(cap=1.0, base=0.05), RETRIES,
                  supported_errors=_TRANSIENT)


def _text(value: bytes | str | None) -> str | None:
    if value is None:
        return None
    text = value.decode() if isinstance(value, bytes) else value
    return text.strip() or None


@dataclass(frozen=True)
class RedisTarget:
    """Where and as whom to connect. Never shows its password (nor the CA) in a repr."""

    url: str
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ca_pem: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in ("redis", "rediss"):
            raise ValueError(f"url must start with redis:// or rediss://, got "
                             f"{parts.scheme or 'no scheme'}://")
        if not parts.hostname:
            raise ValueError("url has no host")
        # urlsplit checks the port only when asked (.port): ask here, once, so a bad one
        # is a clear error about the Secret, not a crash wherever .port is read later.
        # The URL itself is not quoted: it may carry a password.
        try:
            port = parts.port
        except ValueError:
            raise ValueError("url has an invalid port (expected a number from 1 to "
                             "65535)") from None
        if port == 0:
            raise ValueError("url has an invalid port (expected a number from 1 to 65535)")
        # Credentials embedded in the URL count when not given separately.
        if parts.username and self.username is None:
            object.__setattr__(self, "username", unquote(parts.username))
        if parts.password and self.password is None:
            object.__setattr__(self, "password", unquote(parts.password))

    def __repr__(self) -> str:
        # The URL itself may carry a password (redis://user:pw@host): show it scrubbed.
        return f"RedisTarget(url={self.display!r}, username={self.username!r})"

    @classmethod
    def from_secret_data(cls, data: Mapping[str, bytes | str]) -> RedisTarget:
        """From a Secret's data (keys `url`, `username`, `password`, `ca.crt`).

        Raises KeyError without `url` and ValueError for a malformed one."""
        url = _text(data["url"])
        if url is None:
            raise ValueError("url is empty")
        return cls(url=url, username=_text(data.get("username")),
                   password=_text(data.get("password")), ca_pem=_text(data.get("ca.crt")))

    @property
    def tls(self) -> bool:
        return urlsplit(self.url).scheme == "rediss"

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or "localhost"

    @property
    def port(self) -> int:
        return urlsplit(self.url).port or 6379

    @property
    def db(self) -> int:
        path = urlsplit(self.url).path.strip("/")
        return int(path) if path.isdigit() else 0

    def url_without_credentials(self) -> str:
        parts = urlsplit(self.url)
        netloc = parts.hostname or ""
        if ":" in netloc:  # IPv6 literal
            netloc = f"[{netloc}]"
        if parts.port:
            netloc = f"{netloc}:{parts.port}"
        return urlunsplit((parts.scheme, netloc, parts.path, "", ""))

    @property
    def display(self) -> str:
        """For logs and messages: the URL without credentials."""
        return self.url_without_credentials()

    @property
    def key(self) -> str:
        """Cache key: differs when anything that changes the connection differs, and
        reveals nothing (a hash)."""
        material = "\0".join([self.url, self.username or "", self.password or "",
                              self.ca_pem or ""])
        return f"{self.display}#{hashlib.sha256(material.encode()).hexdigest()[:16]}"

    def client_kwargs(self, *, decode_responses: bool = True,
                      timeout: float | None = None) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "username": self.username,
            "password": self.password,
            "decode_responses": decode_responses,
            "socket_connect_timeout": timeout or CONNECT_TIMEOUT,
            "socket_timeout": timeout or SOCKET_TIMEOUT,
            "retry": _retry(),
            "client_name": "agentqueue-operator",
        }
        if self.tls:
            kwargs["ssl"] = True
            kwargs["ssl_cert_reqs"] = "required"
            if self.ca_pem:
                kwargs["ssl_ca_data"] = self.ca_pem
        return kwargs


def is_cluster(client: RedisClient) -> bool:
    return isinstance(client, aredis.RedisCluster)


def node_name(client: aredis.Redis) -> str:
    """`host:port` of a standalone client (for server ids and messages)."""
    kw = client.connection_pool.connection_kwargs
    return f"{kw.get('host', 'localhost')}:{kw.get('port', 6379)}"


async def _cluster_enabled(client: aredis.Redis) -> bool:
    """INFO cluster; agents' ACL users lack INFO, so fall back to CLUSTER SLOTS, which
    every role may run and which fails on a standalone server."""
    try:
        info = await client.info("cluster")
        return bool(int(info.get("cluster_enabled", 0)))
    except NoPermissionError:
        pass
    try:
        await client.execute_command("CLUSTER", "SLOTS")
    except ResponseError as exc:
        if "cluster support disabled" in str(exc).lower():
            return False
        raise
    return True


async def connect(target: RedisTarget, *, decode_responses: bool = True,
                  timeout: float | None = None) -> RedisClient:
    """A client for `target`, after a PING-equivalent round trip (INFO cluster).

    `timeout` overrides the connect and socket timeouts (seconds).
    Raises RedisUnavailable / RedisAuthError (see errors.py)."""
    with translate_errors(f"connect to {target.display}"):
        kwargs = target.client_kwargs(decode_responses=decode_responses, timeout=timeout)
        # redis-py works out the connection class and its arguments (TLS and all);
        # the same go into a blocking pool the client owns (closed with it).
        plain = aredis.Redis(db=target.db, **kwargs).connection_pool
        client = aredis.Redis.from_pool(BlockingConnectionPool(
            max_connections=MAX_CONNECTIONS, timeout=kwargs["socket_timeout"],
            connection_class=plain.connection_class, **plain.connection_kwargs))
        try:
            clustered = await _cluster_enabled(client)
        except BaseException:
            await client.aclose()
            raise
        if not clustered:
            return client
        await client.aclose()
        cluster = aredis.RedisCluster(**kwargs)
        try:
            await cluster.initialize()
        except BaseException:
            await cluster.aclose()
            raise
        return cluster


# Per-node standalone clients of a cluster client, reused across calls.
_NODE_CLIENTS: weakref.WeakKeyDictionary[aredis.RedisCluster, dict[str, aredis.Redis]] = (
    weakref.WeakKeyDictionary())


async def primaries(client: RedisClient) -> list[aredis.Redis]:
    """One client per primary node: ACL users and Functions are per node in Redis."""
    if not isinstance(client, aredis.RedisCluster):
        return [client]
    with translate_errors("list cluster primaries"):
        if not client.get_primaries():
            await client.initialize()
        cache = _NODE_CLIENTS.setdefault(client, {})
        wanted = {node.name: node for node in client.get_primaries()}
        for name in [n for n in cache if n not in wanted]:  # demoted or gone
            await cache.pop(name).aclose()
        for name, node in wanted.items():
            if name not in cache:
                kwargs = dict(node.connection_kwargs)
                pool = ConnectionPool(connection_class=node.connection_class, **kwargs)
                cache[name] = aredis.Redis(connection_pool=pool)
        return [cache[name] for name in sorted(wanted)]


async def server_ids(client: RedisClient) -> dict[str, str]:
    """Node address → run_id. A changed run_id means a restart or failover: the
    operator then re-asserts users, the library and consumer groups."""
    if isinstance(client, aredis.RedisCluster):
        # A failover moves no key, so no MOVED reply makes the client re-read the slot
        # map: without this the promoted replica would never get its ACL users.
        with translate_errors("refresh the cluster's topology"):
            await client.nodes_manager.initialize()
    nodes = await primaries(client)
    with translate_errors("read server ids"):
        infos = await asyncio.gather(*(node.info("server") for node in nodes))
    return {node_name(node): str(info.get("run_id", "")) for node, info in
            zip(nodes, infos, strict=True)}


async def close_client(client: RedisClient) -> None:
    """Close a client and any per-node clients made for it."""
    if isinstance(client, aredis.RedisCluster):
        for node_client in (_NODE_CLIENTS.pop(client, None) or {}).values():
            await node_client.aclose()
    await client.aclose()


class RedisPool:
    """Clients cached by target, so reconciles reuse connections."""

    def __init__(self, *, decode_responses: bool = True) -> None:
        self._decode = decode_responses
        self._clients: dict[str, RedisClient] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def get(self, target: RedisTarget) -> RedisClient:
        key = target.key
        client = self._clients.get(key)
        if client is not None:
            return client
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            client = self._clients.get(key)
            if client is None:
                client = await connect(target, decode_responses=self._decode)
                self._clients[key] = client
            return client

    async def drop(self, target: RedisTarget) -> None:
        """Forget (and close) the client of `target`, e.g. after its topology changed."""
        client = self._clients.pop(target.key, None)
        if client is not None:
            await close_client(client)

    async def close_all(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await close_client(client)

    def __len__(self) -> int:
        return len(self._clients)
