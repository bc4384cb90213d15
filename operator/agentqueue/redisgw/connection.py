"""Connections to Redis: standalone, Cluster or Sentinel-managed, plain or TLS, cached
per target.

Cluster mode is detected (INFO cluster), not configured, so one Secret format
(`url`, `username`, `password`, `ca.crt`) works for both. ACL users and the Functions
library live per node, so `primaries()` hands out one client per primary.

With `sentinels` and `sentinelMaster` in the Secret the primary is whatever the
sentinels name: redis-py's `Sentinel.master_for` asks them before every new connection
and after a connection error, so a failover is followed without a restart. Each answer
is checked by the operator's address policy before the primary is connected to
(`address_check`): a sentinel cannot send the operator somewhere the policy refuses.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import ipaddress
import re
import weakref
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import redis.asyncio as aredis
from redis.asyncio.connection import BlockingConnectionPool, ConnectionPool
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import MasterNotFoundError, Sentinel, SentinelConnectionPool
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

from agentqueue_client.text import as_text

from .errors import RedisUnavailable, translate_errors

__all__ = [
    "AddressCheck",
    "MAX_SENTINELS",
    "RedisAddressRefused",
    "RedisClient",
    "RedisPool",
    "RedisTarget",
    "close_client",
    "connect",
    "is_cluster",
    "node_name",
    "parse_sentinels",
    "primaries",
    "sentinel_primary",
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


MAX_SENTINELS = 16
"""Sentinel addresses one Secret may list (a tenant's input: bounded)."""
DEFAULT_SENTINEL_PORT = 26379

AddressCheck = Callable[[str, int], Awaitable[str | None]]
"""Why the operator may not connect to (host, port), or None (the address policy)."""


class _AddressRefused(MasterNotFoundError):
    """The sentinels named a primary the address policy refuses (redis-py level: a
    ConnectionError, so any caller's handling of an unreachable primary applies)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class RedisAddressRefused(RedisUnavailable):
    """The sentinels named a primary the operator's address policy refuses. Unavailable
    (the next failover may name another); `target_for` reports it as
    RedisAddressRefused."""


# redis-py's AuthenticationError is a ConnectionError: without this, a wrong password
# would be retried (and slept on) like a dropped connection; nor is a refused address.
_NEVER_RETRY = (AuthenticationError, AuthorizationError, _AddressRefused)


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
    text = as_text(value, errors="strict")
    return text.strip() or None


_MASTER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def _netloc(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_sentinels(text: str) -> tuple[tuple[str, int], ...]:
    """`host:port,host:port` (IPv6 as `[::1]:26379`) → ((host, port), ...), in order,
    without duplicates. Raises ValueError naming the first malformed entry."""
    out: list[tuple[str, int]] = []
    for raw in text.split(","):
        item = raw.strip()
        if not item:
            continue
        host, port = _host_port(item)
        if (host, port) not in out:
            out.append((host, port))
    if not out:
        raise ValueError("sentinels is empty (expected host:port[,host:port...])")
    if len(out) > MAX_SENTINELS:
        raise ValueError(f"sentinels lists {len(out)} addresses; at most {MAX_SENTINELS}")
    return tuple(out)


def _host_port(item: str) -> tuple[str, int]:
    shown = item if len(item) <= 80 else item[:79] + "…"
    bad = ValueError(f"sentinels: {shown!r} is not host:port (port 1 to 65535; IPv6 as "
                     f"[::1]:26379)")
    if any(c in item for c in "/@?#\\ \t") or item.count("[") > 1:
        raise bad
    if item.startswith("["):
        host, sep, rest = item[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise bad
        port_text = rest[1:]
        try:
            ipaddress.IPv6Address(host.partition("%")[0])
        except ValueError:
            raise bad from None
    else:
        host, sep, port_text = item.rpartition(":")
        if not sep or not host or ":" in host or "[" in host or "]" in host:
            raise bad
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise bad
    return host.lower(), int(port_text)


@dataclass(frozen=True)
class RedisTarget:
    """Where and as whom to connect. Never shows its password (nor the CA) in a repr.

    With `sentinels` (and `sentinel_master`, the name the sentinels monitor the primary
    under) the primary is asked of the sentinels; `url` then keeps only the scheme
    (`rediss`: TLS, to the sentinels and the primary) and the database, and names the
    first sentinel."""

    url: str
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ca_pem: str | None = field(default=None, repr=False)
    sentinels: tuple[tuple[str, int], ...] = ()
    sentinel_master: str | None = None
    sentinel_username: str | None = None
    sentinel_password: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.sentinels and not self.sentinel_master:
            raise ValueError("sentinels is set but sentinelMaster (the name the sentinels "
                             "monitor the primary under) is not")
        if self.sentinel_master and not self.sentinels:
            raise ValueError("sentinelMaster is set but sentinels (host:port[,...]) is not")
        if self.sentinel_master and not _MASTER_NAME.fullmatch(self.sentinel_master):
            raise ValueError("sentinelMaster must be 1 to 128 letters, digits, '.', '_' or "
                             "'-'")
        if (self.sentinel_username or self.sentinel_password) and not self.sentinels:
            raise ValueError("sentinelUsername/sentinelPassword are set but sentinels is not")
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
        """From a Secret's data (keys `url`, `username`, `password`, `ca.crt`; or
        `sentinels`, `sentinelMaster`, optionally `sentinelUsername`, `sentinelPassword`,
        and `url` for the scheme and database only).

        Raises KeyError without `url` (nor `sentinels`) and ValueError for a malformed
        one."""
        username, password = _text(data.get("username")), _text(data.get("password"))
        ca_pem = _text(data.get("ca.crt"))
        sentinels_text, master = _text(data.get("sentinels")), _text(data.get("sentinelMaster"))
        s_user, s_pass = _text(data.get("sentinelUsername")), _text(data.get("sentinelPassword"))
        if sentinels_text is None and master is None and s_user is None and s_pass is None:
            url = _text(data["url"])
            if url is None:
                raise ValueError("url is empty")
            return cls(url=url, username=username, password=password, ca_pem=ca_pem)
        sentinels = parse_sentinels(sentinels_text) if sentinels_text is not None else ()
        scheme, path = "redis", ""
        url = _text(data.get("url"))
        if url is not None:  # scheme (TLS) and database; its host is not used
            given = cls(url=url, username=username, password=password)
            username, password = given.username, given.password
            parts = urlsplit(url)
            scheme, path = parts.scheme, parts.path
        first = _netloc(*sentinels[0]) if sentinels else "sentinel"
        return cls(url=f"{scheme}://{first}{path}", username=username, password=password,
                   ca_pem=ca_pem, sentinels=sentinels, sentinel_master=master,
                   sentinel_username=s_user, sentinel_password=s_pass)

    def sentinel_list(self) -> str:
        """The sentinels as `host:port,host:port` (the agents' `REDIS_SENTINELS`)."""
        return ",".join(_netloc(h, p) for h, p in self.sentinels)

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
        """For logs and messages: the URL without credentials (with Sentinel:
        `sentinel://host:port,.../<master>`)."""
        if self.sentinels:
            return f"sentinel://{self.sentinel_list()}/{self.sentinel_master}"
        return self.url_without_credentials()

    @functools.cached_property
    def key(self) -> str:
        """Cache key: differs when anything that changes the connection differs, and
        reveals nothing (a hash). Computed once per target (keepers ask every tick)."""
        material = "\0".join([self.url, self.username or "", self.password or "",
                              self.ca_pem or "", self.sentinel_list(),
                              self.sentinel_master or "", self.sentinel_username or "",
                              self.sentinel_password or ""])
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
    """`host:port` of a standalone client (for server ids and messages); a
    Sentinel-managed one: `<master name>@host:port` of the primary last named."""
    pool = client.connection_pool
    if isinstance(pool, SentinelConnectionPool):
        address = pool.master_address
        where = _netloc(str(address[0]), int(address[1])) if address else "?"
        return f"{pool.service_name}@{where}"
    kw = pool.connection_kwargs
    return f"{kw.get('host', 'localhost')}:{kw.get('port', 6379)}"


class _PolicedSentinel(Sentinel):
    """redis-py's Sentinel whose every answer (the primary's address) is checked by
    `check` before it is used: at the first connection and after every failover."""

    def __init__(self, sentinels: list[tuple[str, int]], *, check: AddressCheck | None,
                 **kwargs: Any) -> None:
        super().__init__(sentinels, **kwargs)
        self._check = check

    async def discover_master(self, service_name: str) -> Any:
        address = await super().discover_master(service_name)
        if self._check is not None:
            host, port = str(address[0]), int(address[1])
            why = await self._check(host, port)
            if why is not None:
                raise _AddressRefused(f"the primary {_netloc(host, port)} the sentinels name "
                                      f"for {service_name!r}: {why}")
        return address


class _SentinelPool(SentinelConnectionPool, BlockingConnectionPool):
    """redis-py's Sentinel pool, waiting for a free connection as the standalone pool
    does (see MAX_CONNECTIONS); closing it closes its Sentinel clients too."""

    async def aclose(self) -> None:
        try:
            await super().aclose()
        finally:
            await self.sentinel_manager.aclose()


def _sentinel_client(target: RedisTarget, kwargs: dict[str, Any],
                     check: AddressCheck | None) -> aredis.Redis:
    """A client of the primary the sentinels name (no connection yet)."""
    sentinel_kwargs: dict[str, Any] = {
        "socket_connect_timeout": kwargs["socket_connect_timeout"],
        "socket_timeout": kwargs["socket_timeout"],
        "username": target.sentinel_username,
        "password": target.sentinel_password,
        "client_name": kwargs["client_name"],
    }
    for name in ("ssl", "ssl_cert_reqs", "ssl_ca_data"):
        if name in kwargs:
            sentinel_kwargs[name] = kwargs[name]
    manager = _PolicedSentinel(list(target.sentinels), check=check,
                               sentinel_kwargs=sentinel_kwargs)
    node_kwargs = {k: v for k, v in kwargs.items() if k not in ("host", "port")}
    return manager.master_for(  # type: ignore[no-any-return]
        target.sentinel_master or "", redis_class=aredis.Redis,
        connection_pool_class=_SentinelPool, db=target.db,
        max_connections=MAX_CONNECTIONS, timeout=kwargs["socket_timeout"], **node_kwargs)


async def sentinel_primary(client: RedisClient) -> tuple[str, int]:
    """The primary a Sentinel-managed client's sentinels name now, checked by its
    address policy (RedisAddressRefused) and without connecting to it."""
    pool = getattr(client, "connection_pool", None)
    if not isinstance(pool, SentinelConnectionPool):
        raise TypeError("not a Sentinel-managed client")
    with translate_errors(f"ask the sentinels for {pool.service_name!r}"):
        try:
            address = await pool.sentinel_manager.discover_master(pool.service_name)
        except _AddressRefused as exc:
            raise RedisAddressRefused(exc.reason) from None
    return str(address[0]), int(address[1])


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
                  timeout: float | None = None,
                  address_check: AddressCheck | None = None) -> RedisClient:
    """A client for `target`, after a PING-equivalent round trip (INFO cluster; PING
    through Sentinel).

    `timeout` overrides the connect and socket timeouts (seconds). `address_check`
    vets every primary the sentinels of a Sentinel target name, before connecting.
    Raises RedisUnavailable / RedisAuthError (see errors.py), RedisAddressRefused."""
    with translate_errors(f"connect to {target.display}"):
        kwargs = target.client_kwargs(decode_responses=decode_responses, timeout=timeout)
        if target.sentinels:
            sentinel_client = _sentinel_client(target, kwargs, address_check)
            try:
                await sentinel_client.ping()
            except _AddressRefused as exc:
                await sentinel_client.aclose()
                raise RedisAddressRefused(exc.reason) from None
            except BaseException:
                await sentinel_client.aclose()
                raise
            return sentinel_client
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
    """Clients cached by target, so reconciles reuse connections. `address_check` vets
    the primaries Sentinel targets' sentinels name (the operator's address policy)."""

    def __init__(self, *, decode_responses: bool = True,
                 address_check: AddressCheck | None = None) -> None:
        self._decode = decode_responses
        self.address_check = address_check
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
                client = await connect(target, decode_responses=self._decode,
                                       address_check=self.address_check)
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
