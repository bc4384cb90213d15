"""What the handlers share: the gateways, the Redis restart watcher, per-object locks."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import functools
import logging
import os
import socket
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast
from urllib.parse import urlsplit

from . import memory, tracing
from .config import OperatorConfig
from .keepers.objects import Objects
from .kube import KubeGateway
from .metrics import Metrics
from .planning import address_policy
from .planning.server_risks import Risk, assess
from .pollhub import PollHub
from .redisgw.connection import (
    RedisAddressRefused,
    RedisPool,
    RedisTarget,
    sentinel_primary,
    server_ids,
)
from .redisgw.errors import RedisError
from .redisgw.list_work import poll_all
from .redisgw.server_info import server_facts

if TYPE_CHECKING:
    from .keepers.groups import GroupKeeper
    from .keepers.queues import QueueKeeper
    from .keepers.retention import RetentionKeeper
    from .status import StatusWriter

log = logging.getLogger("agentqueue.runtime")
T = TypeVar("T")
K = TypeVar("K")


class PeeringPause(logging.Handler):
    """Whether kopf has paused this replica: with peering, kopf pauses a replica while a
    live peer has a higher priority (and resumes it when that peer is gone); its
    handlers stop then, and so must the keepers (they act on their own timers). kopf
    says so only in its log (its pause toggles are internal), so this handler listens
    to the peering module's lines; tests/test_keepers_pause.py runs kopf's own peering
    code to keep the two in step."""

    LOGGER = "kopf._core.engines.peering"
    PAUSE = ("Pausing operations in favour of", "Pausing all operators")
    RESUME = "Resuming operations after the pause"

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.paused = False

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith(self.PAUSE):
            self.paused = True
        elif message.startswith(self.RESUME):
            self.paused = False

    def install(self) -> None:
        logger = logging.getLogger(self.LOGGER)
        logger.addHandler(self)
        if logger.getEffectiveLevel() > logging.INFO:  # its pause lines are INFO
            logger.setLevel(logging.INFO)

    def remove(self) -> None:
        logging.getLogger(self.LOGGER).removeHandler(self)


class UserIndex:
    """Our ACL users per Redis server, by queue (``aq.<ns>.<queue>.<entry>``: the entry
    is after the last dot), from one ACL USERS per server at most every TTL seconds and
    kept current with the operator's own creations and deletions: a reconcile asks
    which entries of its queue have users without listing 10,000 users each time (that
    made creating queue number n cost O(n))."""

    TTL_S = 5.0

    def __init__(self) -> None:
        self._servers: dict[str, tuple[float, dict[str, set[str]]]] = {}

    async def entries(self, target_key: str, client: Any, prefix: str) -> set[str]:
        """Entry names that have a user named `prefix` + entry on this server."""
        from .redisgw import users

        cached = self._servers.get(target_key)
        if cached is None or time.monotonic() - cached[0] >= self.TTL_S:
            index: dict[str, set[str]] = {}
            for name in await users.list_usernames(client, "aq."):
                head, _, entry = name.rpartition(".")
                index.setdefault(head + ".", set()).add(entry)
            cached = self._servers[target_key] = (time.monotonic(), index)
        return set(cached[1].get(prefix, ()))

    def added(self, target_key: str, username: str) -> None:
        cached = self._servers.get(target_key)
        if cached is not None:
            head, _, entry = username.rpartition(".")
            cached[1].setdefault(head + ".", set()).add(entry)

    def removed(self, target_key: str, username: str) -> None:
        cached = self._servers.get(target_key)
        if cached is not None:
            head, _, entry = username.rpartition(".")
            cached[1].get(head + ".", set()).discard(entry)


class Waits(Generic[K]):
    """Any number of waiters per key, all woken by `fire(key)`; a key nobody waits for
    any more holds nothing (a tenant naming queues that never come leaves no entries)."""

    def __init__(self) -> None:
        self._events: dict[K, asyncio.Event] = {}
        self._waiting: collections.Counter[K] = collections.Counter()

    def fire(self, key: K) -> None:
        event = self._events.pop(key, None)
        if event is not None:
            event.set()

    async def wait(self, key: K, timeout: float) -> bool:
        """True when `key` was fired within `timeout` seconds."""
        event = self._events.setdefault(key, asyncio.Event())
        self._waiting[key] += 1
        try:
            await asyncio.wait_for(event.wait(), timeout)
            return True
        except TimeoutError:
            return False
        finally:
            self._waiting[key] -= 1
            if not self._waiting[key]:
                del self._waiting[key]
                self._events.pop(key, None)

    def __len__(self) -> int:
        return len(self._events)


@dataclass
class RestartWatcher:
    """Notices a Redis restart or failover (a new run_id on any node) so the queues on
    that server are re-asserted at once rather than at the next drift check."""

    pool: RedisPool
    interval: float
    _known: dict[str, dict[str, str]] = field(default_factory=dict)
    _events: dict[str, asyncio.Event] = field(default_factory=lambda: defaultdict(asyncio.Event))
    _targets: dict[str, RedisTarget] = field(default_factory=dict)
    _task: asyncio.Task[None] | None = None

    def watch(self, target: RedisTarget) -> asyncio.Event:
        """The event set when `target` restarts; call again after waking for a fresh one."""
        key = target.key
        self._targets[key] = target
        event = self._events[key]
        if event.is_set():
            self._events[key] = event = asyncio.Event()
        return event

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="redis-restart-watcher")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            for key, target in list(self._targets.items()):
                try:
                    client = await self.pool.get(target)
                    ids = await server_ids(client)
                except RedisError:
                    continue  # unreachable: the reconcilers report it
                before = self._known.get(key)
                self._known[key] = ids
                if before is not None and before != ids:
                    log.warning("redis restarted or failed over; re-asserting its queues",
                                extra={"redis": target.display})
                    self._events[key].set()


def _timed(poll: Any, metrics: Metrics) -> Any:
    """The hub's poll, timed (agentqueue_redis_command_duration_seconds{operation="poll"})
    and counted when Redis cannot be reached (agentqueue_redis_unavailable_total)."""
    async def timed(client: Any, requests: list[Any]) -> list[Any]:
        started = time.monotonic()
        try:
            return list(await poll(client, requests))
        except RedisError:
            metrics.redis_up.inc()
            raise
        finally:
            metrics.redis_latency.labels("poll").observe(time.monotonic() - started)
    return timed


def _api_endpoints(server: str) -> list[address_policy.Endpoint]:
    """The cluster's API server as the operator reaches it (its kubeconfig or in-cluster
    host, and the `kubernetes` Service), by every address: tenants may not name it."""
    found: set[tuple[str, int]] = set()
    hosts: list[tuple[str, int]] = []
    url = urlsplit(server)
    if url.hostname:
        hosts.append((url.hostname, url.port or (443 if url.scheme == "https" else 80)))
    env_host, env_port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get(
        "KUBERNETES_SERVICE_PORT", "443")
    if env_host and env_port.isdigit():
        hosts.append((env_host, int(env_port)))
    for host, port in hosts:
        found.add((host.lower(), port))
        try:  # local resolution at start-up (no connection)
            for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM):
                found.add((str(info[4][0]), port))
        except OSError:
            pass
    return [address_policy.Endpoint(h, p) for h, p in sorted(found)]


async def policy_refusal(policy: address_policy.AddressPolicy, host: str,
                         port: int) -> str | None:
    """Why the policy refuses `host`:`port`, decided before any connection: on the host
    and every address it resolves to."""
    addresses: list[str] = []
    if address_policy.needs_resolution(policy, host):
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                host, port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError):
            infos = []  # unresolvable: the policy decides on the name alone
        addresses = sorted({str(info[4][0]) for info in infos})
    return address_policy.refusal(policy, host, port, addresses)


@dataclass
class Runtime:
    config: OperatorConfig
    kube: KubeGateway
    redis: RedisPool
    watcher: RestartWatcher
    metrics: Metrics
    hub: PollHub[tuple[str, str]]
    locks: dict[tuple[str, str, str], asyncio.Lock] = field(
        default_factory=lambda: defaultdict(asyncio.Lock))
    secrets_seen: dict[tuple[str, str], tuple[float, str]] = field(default_factory=dict)
    """Per credentials Secret: when it was last read or written, and the SHA-256 of its
    password (what Redis' ACL stores anyway; never the password)."""
    specs: dict[tuple[str, str, str], tuple[tuple[Any, Any], Any]] = field(
        default_factory=dict)
    queue_versions: dict[tuple[str, str], int] = field(default_factory=dict)
    """Per AgentQueue: bumped when its handlers reconcile a change or a deletion, so the
    ConsumerGroups that cache what they resolved from it re-resolve at once."""
    risks: dict[str, tuple[float, list[Risk]]] = field(default_factory=dict)
    """Per Redis target: when its settings were last judged, and the data-loss risks."""
    queue_waits: Waits[tuple[str, str]] = field(default_factory=lambda: Waits())
    """Per AgentQueue ConsumerGroups wait for (to appear or become Ready): fired when the
    queue's handlers have run, so the groups retry at once instead of after a delay."""
    objects: Objects = field(default_factory=Objects)
    _startup_list: asyncio.Task[None] | None = None
    _trimmer: asyncio.Task[None] | None = None
    """The latest (trimmed) body of every object of our kinds, from the watch, and the
    ConsumerGroups' claim indexes (the conflict checks)."""
    user_index: UserIndex = field(default_factory=UserIndex)
    peering: PeeringPause = field(default_factory=PeeringPause)
    """kopf paused this replica (a peer with a higher priority is active): the keepers
    wait."""
    groups: GroupKeeper = field(init=False)
    queues: QueueKeeper = field(init=False)
    retention: RetentionKeeper = field(init=False)
    status: StatusWriter = field(init=False)
    """The one writer of every object's status (status.py)."""

    def __post_init__(self) -> None:
        # The keepers call the services, which use this module.
        from .keepers.groups import GroupKeeper
        from .keepers.queues import QueueKeeper
        from .keepers.retention import RetentionKeeper
        from .status import StatusWriter

        self.status = StatusWriter(
            self.kube, self.objects,
            lambda kind: self.metrics.status_patches.labels(kind).inc())
        self.groups = GroupKeeper(self)
        self.metrics.group_reports = self.groups.reports
        self.queues = QueueKeeper(self)
        self.retention = RetentionKeeper(self)

    def parsed_spec(self, kind: str, body: dict[str, Any], parse: Callable[[Any], T]) -> T:
        """`parse(body.spec)`, cached per object and generation (the API server bumps the
        generation on every spec change): drift checks re-read the same spec every
        interval, and strict pydantic parsing was a tenth of an idle operator's CPU."""
        meta = body["metadata"]
        key = (kind, meta["namespace"], meta["name"])
        gen, uid = meta.get("generation"), meta.get("uid")
        cached = self.specs.get(key)
        if cached is not None and gen is not None and cached[0] == (gen, uid):
            return cast(T, cached[1])
        spec = parse(body.get("spec") or {})
        self.specs[key] = ((gen, uid), spec)
        return spec

    def forget_spec(self, kind: str, namespace: str, name: str) -> None:
        self.specs.pop((kind, namespace, name), None)

    def queue_changed(self, namespace: str, queue: str) -> None:
        key = (namespace, queue)
        self.queue_versions[key] = self.queue_versions.get(key, 0) + 1
        self.queue_waits.fire(key)
        self.retention.queue_changed(namespace)
        self.groups.queue_changed(namespace, self.objects.groups_of(namespace, queue))

    def queue_seen(self, namespace: str, queue: str) -> tuple[tuple[str, str], int]:
        """The queue's version now (see `wait_queue_changed`)."""
        key = (namespace, queue)
        return key, self.queue_versions.get(key, 0)

    async def wait_queue_changed(self, seen: tuple[tuple[str, str], int],
                                 timeout: float) -> bool:
        """Wait until the queue's handlers run after `seen` was taken (at once if they
        did since), at most `timeout` seconds; True when they did."""
        key, version = seen
        if self.queue_versions.get(key, 0) != version:
            return True
        return await self.queue_waits.wait(key, timeout)

    def group_figures_updated(self, namespace: str, queue: str) -> None:
        """A ConsumerGroup of `queue` has fresh figures (`groups.reports`): the queue
        keeper re-evaluates the queue's SLO from them without touching Redis."""
        self.queues.figures_updated(namespace, queue)

    @classmethod
    def create(cls, config: OperatorConfig, kube: KubeGateway) -> Runtime:
        config = dataclasses.replace(config, address_policy=dataclasses.replace(
            config.address_policy,
            api_endpoints=(*config.address_policy.api_endpoints,
                           *_api_endpoints(kube.server))))
        # Only tenants' Secrets name sentinels (the default Redis is a URL): every primary
        # a sentinel names is vetted, at each failover too.
        pool = RedisPool(address_check=functools.partial(policy_refusal,
                                                         config.address_policy))
        metrics = Metrics()
        return cls(
            config=config,
            kube=kube,
            redis=pool,
            watcher=RestartWatcher(pool, config.run_id_check_interval),
            metrics=metrics,
            hub=PollHub(_timed(poll_all, metrics)),
        )

    @property
    def paused(self) -> bool:
        return self.peering.paused

    async def start(self) -> None:
        self.peering.install()
        self.watcher.start()
        self.objects.begin_settling("ConsumerGroup")
        self._startup_list = asyncio.get_running_loop().create_task(self._expect_groups())
        self._trimmer = asyncio.get_running_loop().create_task(memory.trim_periodically(),
                                                               name="malloc-trim")
        if self.config.metrics_port:
            self.metrics.serve(self.config.metrics_host, self.config.metrics_port)

    async def _expect_groups(self) -> None:
        """The ConsumerGroups that exist at startup: their conflict checks wait for all
        of them to arrive from the watch (keepers/objects.py `settled`)."""
        try:
            keys = await self.kube.object_keys("consumergroups", self.config.namespaces)
        except Exception as exc:  # noqa: BLE001 - then the checks do not wait
            log.warning("could not list the ConsumerGroups at startup",
                        extra={"error": str(exc)})
            keys = None
        self.objects.expect("ConsumerGroup", keys)

    async def close(self) -> None:
        self.peering.remove()
        for task in (self._startup_list, self._trimmer):
            if task is not None:
                task.cancel()
        await self.groups.close()
        await self.queues.close()
        await self.retention.close()
        await self.watcher.stop()
        await self.hub.close()
        await self.redis.close_all()
        await self.kube.close()

    @contextlib.asynccontextmanager
    async def locked(self, kind: str, namespace: str, name: str) -> AsyncIterator[None]:
        """One reconcile at a time per object (handlers, timers and daemons share it)."""
        async with self.locks[(kind, namespace, name)]:
            with tracing.reconcile_span(kind, namespace, name):
                yield

    async def server_risks(self, target: RedisTarget, client: Any) -> list[Risk]:
        """The target's data-loss risks (planning/server_risks), re-read at most once per
        drift interval per server however many queues live there."""
        now = time.monotonic()
        cached = self.risks.get(target.key)
        if cached is not None and now - cached[0] < self.config.drift_interval:
            return cached[1]
        risks = [r for facts in await server_facts(client) for r in assess(facts)]
        self.risks[target.key] = (now, risks)
        return risks

    def default_target(self) -> RedisTarget | None:
        default = self.config.default_redis
        return RedisTarget.from_secret_data(default.secret_data()) if default else None

    async def target_for(self, namespace: str, secret_name: str | None) -> RedisTarget:
        from . import reasons
        from .services.errors import SpecProblem

        if secret_name is None:
            target = self.default_target()
            if target is None:
                raise SpecProblem(reasons.REDIS_SECRET_MISSING,
                                  "spec.redis is not set and the operator has no default "
                                  "Redis connection (--redis-url)")
            return target
        data = await self.kube.read_secret(namespace, secret_name)
        if data is None:
            raise SpecProblem(reasons.REDIS_SECRET_MISSING,
                              f"Secret {secret_name!r} named in spec.redis.secretRef "
                              "does not exist")
        try:
            target = RedisTarget.from_secret_data(data)
        except KeyError as exc:
            raise SpecProblem(reasons.REDIS_SECRET_INVALID,
                              f"Secret {secret_name!r} has no key {exc.args[0]!r} "
                              "(expected url, or sentinels and sentinelMaster; optionally "
                              "username, password, ca.crt)"
                              ) from None
        except ValueError as exc:
            raise SpecProblem(reasons.REDIS_SECRET_INVALID,
                              f"Secret {secret_name!r}: {exc}") from None
        why = await self.address_refusal(target)
        if why is not None:
            raise SpecProblem(reasons.REDIS_ADDRESS_REFUSED,
                              f"Secret {secret_name!r}: {why}", retry_after=60.0)
        return target

    async def address_refusal(self, target: RedisTarget) -> str | None:
        """Why a tenant-named Redis may not be used (planning/address_policy), decided
        before any connection: on the host and every address it resolves to. With
        Sentinel: every sentinel, then the primary they name (asked of the sentinels,
        not connected to; the pool vets the primary again at every failover)."""
        policy = self.config.address_policy
        if not target.sentinels:
            return await policy_refusal(policy, target.host, target.port)
        for host, port in target.sentinels:
            why = await policy_refusal(policy, host, port)
            if why is not None:
                return f"sentinel {host}:{port}: {why}"
        try:
            await sentinel_primary(await self.redis.get(target))
        except RedisAddressRefused as exc:
            return str(exc)
        except RedisError:
            return None  # sentinels unreachable: the reconcile reports RedisUnavailable
        return None
