"""Client configuration: where the queue is and who we are.

Built from the credentials Secret's env keys (``docs/design.md``), mounted into an
agent's pod with ``envFrom``, or from explicit arguments::

    config = ClientConfig.from_env()
    config = ClientConfig(url="redis://localhost:6379/0", namespace="team-a",
                          queue="jobs", username="aq.team-a.jobs.worker", password="...")

``cluster=True`` (``REDIS_CLUSTER=1`` in the Secret, written by the operator when the
queue's Redis is a Redis Cluster) connects with ``redis.asyncio.RedisCluster``: the URL
names any node, the others are discovered. Nothing is detected at connect time, so a
standalone client costs no extra round trip.

``sentinels`` and ``sentinel_master`` (``REDIS_SENTINELS``, ``REDIS_SENTINEL_MASTER``,
written when the queue's Redis is managed by Redis Sentinel) connect through redis-py's
``Sentinel.master_for``: the sentinels are asked for the primary before every new
connection, so after a failover the client reconnects to the promoted replica (the URL
then gives only the scheme, ``rediss`` for TLS, and the database).

The password and the CA certificate never appear in ``repr()`` or ``str()``.
"""

from __future__ import annotations

import os
import re
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool

from . import keys
from .errors import ConfigError

QUEUE_TYPES = ("Stream", "List", "PubSub")
_USERINFO = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)[^@/\s]*@", re.IGNORECASE)


def _flag(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes")


def _split(value: str | None) -> tuple[str, ...]:
    return tuple(v.strip() for v in (value or "").split(",") if v.strip())


def sentinel_address(item: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` → (host, port); ConfigError when malformed."""
    host, sep, port = item.strip().rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ConfigError(f"REDIS_SENTINELS: {item!r} is not host:port")
    return host, int(port)


class _SentinelPool(SentinelConnectionPool):
    """Closing the client's pool closes the Sentinel clients it asks, too."""

    async def aclose(self) -> None:
        try:
            await super().aclose()
        finally:
            await self.sentinel_manager.aclose()


def sentinel_client(sentinels: Sequence[str], master: str, url: str = "redis://",
                    **options: Any) -> aioredis.Redis:
    """A client of the primary that ``sentinels`` (``host:port`` each) name for
    ``master``. ``url`` gives the scheme (``rediss``: TLS to the sentinels and the
    primary) and the database; ``options`` go to the primary's connections (and the
    socket and TLS ones to the sentinels'). The caller closes it (``aclose()``)."""
    parts = urlsplit(url)
    options = dict(options)
    path = parts.path.strip("/")
    options.setdefault("db", int(path) if path.isdigit() else 0)
    if parts.scheme == "rediss":
        options.setdefault("ssl", True)
    to_sentinels = {k: v for k, v in options.items()
                    if k.startswith(("socket_", "ssl")) and k != "socket_timeout"}
    # a sentinel answers at once; only the primary's socket waits on blocking reads
    to_sentinels["socket_timeout"] = options.get("socket_connect_timeout") or 5.0
    manager = Sentinel([sentinel_address(s) for s in sentinels if s.strip()],
                       sentinel_kwargs=to_sentinels)
    return manager.master_for(master, redis_class=aioredis.Redis,  # type: ignore[no-any-return]
                              connection_pool_class=_SentinelPool, **options)


@dataclass(frozen=True, repr=False)
class ClientConfig:
    """Connection and queue identity for a Producer or Consumer.

    ``partitions`` and ``queue_type`` are the values at the time the Secret was written;
    the clients refresh both from the queue's metadata hash, which wins.
    """

    url: str
    namespace: str
    queue: str
    username: str | None = None
    password: str | None = field(default=None, compare=False)
    queue_type: str = "Stream"
    partitions: int = 1
    role: str | None = None
    ca_cert: str | None = field(default=None, compare=False)
    queue_keys: tuple[str, ...] = ()
    dead_letter_keys: tuple[str, ...] = ()
    key_pattern: str | None = None
    cluster: bool = False
    sentinels: tuple[str, ...] = ()
    sentinel_master: str | None = None

    def __post_init__(self) -> None:
        if not self.url:
            raise ConfigError("a Redis URL is required (REDIS_URL)")
        if urlsplit(self.url).scheme not in ("redis", "rediss", "unix"):
            raise ConfigError("REDIS_URL must start with redis://, rediss:// or unix://")
        if not self.namespace or not self.queue:
            raise ConfigError("namespace and queue are required (AQ_NAMESPACE, AQ_QUEUE)")
        if self.queue_type not in QUEUE_TYPES:
            raise ConfigError(f"queue type must be one of {', '.join(QUEUE_TYPES)}")
        if self.partitions < 1:
            raise ConfigError("partitions must be at least 1")
        if self.cluster and urlsplit(self.url).scheme == "unix":
            raise ConfigError("a Redis Cluster is reached over TCP: redis:// or rediss://")
        if bool(self.sentinels) != bool(self.sentinel_master):
            raise ConfigError("REDIS_SENTINELS and REDIS_SENTINEL_MASTER go together")
        if self.sentinels and (self.cluster or urlsplit(self.url).scheme == "unix"):
            raise ConfigError("Sentinel is reached over TCP and is no Redis Cluster")
        for item in self.sentinels:
            sentinel_address(item)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> ClientConfig:
        """Read ``REDIS_URL``, ``REDIS_USERNAME``, ``REDIS_PASSWORD``, ``AQ_NAMESPACE``,
        ``AQ_QUEUE``, ``AQ_QUEUE_TYPE``, ``AQ_PARTITIONS``, ``AQ_QUEUE_KEYS``,
        ``AQ_DEAD_LETTER_KEYS``, ``AQ_KEY_PATTERN``, ``AQ_ROLE``, ``REDIS_CA_CERT``,
        ``REDIS_CLUSTER`` (``1``: a Redis Cluster), ``REDIS_SENTINELS`` (``host:port``,
        comma-separated) and ``REDIS_SENTINEL_MASTER`` (Redis Sentinel).

        Keyword arguments override what the environment says.

        >>> ClientConfig.from_env({"REDIS_URL": "redis://r:6379", "AQ_NAMESPACE": "ns",
        ...                        "AQ_QUEUE": "q"}).queue
        'q'
        """
        env = os.environ if environ is None else environ
        try:
            partitions = int(env.get("AQ_PARTITIONS") or 1)
        except ValueError:
            raise ConfigError("AQ_PARTITIONS must be an integer") from None
        values: dict[str, Any] = {
            "url": env.get("REDIS_URL", ""),
            "namespace": env.get("AQ_NAMESPACE", ""),
            "queue": env.get("AQ_QUEUE", ""),
            "username": env.get("REDIS_USERNAME") or None,
            "password": env.get("REDIS_PASSWORD") or None,
            "queue_type": env.get("AQ_QUEUE_TYPE") or "Stream",
            "partitions": partitions,
            "role": env.get("AQ_ROLE") or None,
            "ca_cert": env.get("REDIS_CA_CERT") or None,
            "queue_keys": _split(env.get("AQ_QUEUE_KEYS")),
            "dead_letter_keys": _split(env.get("AQ_DEAD_LETTER_KEYS")),
            "key_pattern": env.get("AQ_KEY_PATTERN") or None,
            "cluster": _flag(env.get("REDIS_CLUSTER")),
            "sentinels": _split(env.get("REDIS_SENTINELS")),
            "sentinel_master": (env.get("REDIS_SENTINEL_MASTER") or "").strip() or None,
        }
        values.update(overrides)
        return cls(**values)

    def with_(self, **changes: Any) -> ClientConfig:
        """A copy with some fields changed."""
        return replace(self, **changes)

    def partition_keys(self, partitions: int | None = None) -> list[keys.PartitionKeys]:
        """The key sets of the first ``partitions`` partitions (default: the configured count)."""
        return keys.partition_keys(self.namespace, self.queue, partitions or self.partitions)

    def connect(self, **kwargs: Any) -> aioredis.Redis | aioredis.RedisCluster:
        """A new asyncio Redis client (binary responses). The caller closes it.

        A ``redis.asyncio.RedisCluster`` when ``cluster`` is set (it follows MOVED and ASK
        replies and re-reads the slot map after a failover), else a ``redis.asyncio.Redis``
        (with ``sentinels``: of the primary the sentinels name, re-asked after a
        connection error, so a failover is followed). Extra keyword arguments go to
        ``from_url`` of that class (``Sentinel.master_for`` with sentinels).
        """
        options: dict[str, Any] = {"decode_responses": False,
                                   "health_check_interval": 30,
                                   "socket_keepalive": True}
        if self.username:
            options["username"] = self.username
        if self.password:
            options["password"] = self.password
        if self.ca_cert and self.url.startswith("rediss://"):
            options["ssl_ca_data"] = self.ca_cert
            options["ssl_cert_reqs"] = ssl.CERT_REQUIRED
        options.update(kwargs)
        if self.cluster:
            # Blocking reads wait up to the consumer's block_ms: no socket timeout, as
            # for a standalone client (redis-py's cluster default is 5 s).
            options.setdefault("socket_timeout", None)
            return aioredis.RedisCluster.from_url(self.url, **options)
        if self.sentinels:
            return sentinel_client(self.sentinels, self.sentinel_master or "", self.url,
                                   **options)
        return aioredis.Redis.from_url(self.url, **options)

    def __repr__(self) -> str:
        shown = []
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("password", "ca_cert"):
                value = "***" if value else None
            elif f.name == "url":
                value = _USERINFO.sub(r"\g<scheme>***@", value)
            shown.append(f"{f.name}={value!r}")
        return f"ClientConfig({', '.join(shown)})"

    __str__ = __repr__
